"""The reusable layers of the Longformer and the char LM: Dense, LayerNorm, Embed, activations,
remat policies, and the value-or-None helper for input checks.

Each layer has one plain form, differentiated by autodiff, and on a model built for the CPU
(`config.on_cpu`) the hand-written VJPs of `kernels.py` instead: XLA:CPU is the only platform
where they were measured to help. Parameters carry logical axis names for sharding.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from longformer import kernels
from longformer.config import LongformerConfig

# Rematerialisation policies per layer (`config.remat`); `minimal` keeps what is named with
# `checkpoint_name`: the large matmuls' outputs and the band attention's.
REMAT_POLICIES = {
    "full": None,
    # Recompute LayerNorms, the activation, the attention's layout copies and output projection
    # (one hidden x hidden matmul): less memory than no remat and, on CPU, less time too.
    "minimal": jax.checkpoint_policies.save_only_these_names(
        "projections", "attention", "ffn_in", "ffn_out"),
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def concrete(x) -> Optional[np.ndarray]:
    """The value of x when it is known now (not traced under jit), else None."""
    if x is None or isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def gelu(x, config: LongformerConfig):
    """The exact (erf) GELU, as torch computes it, evaluated in float32."""
    if config.on_cpu:
        return kernels.gelu(x)
    return jax.nn.gelu(x.astype(jnp.float32), approximate=False).astype(x.dtype)


def activation(name: str, config: LongformerConfig):
    """`config.hidden_act` by its Hugging Face name."""
    if name == "gelu":
        return lambda x: gelu(x, config)
    return {
        "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "relu": jax.nn.relu,
        "silu": jax.nn.silu,
        "swish": jax.nn.silu,
        "tanh": jnp.tanh,
    }[name]


def linear(x, kernel, bias, config: LongformerConfig):
    """x @ kernel + bias in the compute dtype, accumulated in float32.

    On CPU the product asks for a float32 result (XLA:CPU's fast bfloat16 path) and is biased in
    float32; elsewhere it is the plain matmul in the compute dtype, whose autodiff backward runs
    in that dtype too (float32 accumulation is the hardware's).
    """
    dtype = config.compute_dtype
    if config.on_cpu:
        y = kernels.matmul_f32(x.astype(dtype), kernel.astype(dtype))
        return (y + bias.astype(jnp.float32)).astype(dtype)
    y = jnp.dot(x.astype(dtype), kernel.astype(dtype))
    return y + bias.astype(dtype)


def _init(config: LongformerConfig, axes: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(config.initializer_range), axes)


def _linear_params(module: nn.Module, config: LongformerConfig, in_features: int,
                   features: int, axes: tuple[str, str]):
    kernel = module.param("kernel", _init(config, axes), (in_features, features),
                          config.params_dtype)
    bias = module.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)),
                        (features,), config.params_dtype)
    return kernel, bias


class Dense(nn.Module):
    """A linear layer with logical axes (`kernel` is [in, out], the transpose of torch's)."""
    features: int
    config: LongformerConfig
    axes: tuple[str, str] = ("embed", "mlp")

    @nn.compact
    def __call__(self, x):
        kernel, bias = _linear_params(self, self.config, x.shape[-1], self.features, self.axes)
        return linear(x, kernel, bias, self.config)


class DenseParams(nn.Module):
    """Only declares a linear layer's `kernel` and `bias`, so callers can fuse several layers."""
    features: int
    config: LongformerConfig
    axes: tuple[str, str] = ("embed", "mlp")

    @nn.compact
    def __call__(self, in_features: int):
        return _linear_params(self, self.config, in_features, self.features, self.axes)


def layer_norm(x, scale, bias, config: LongformerConfig):
    """LayerNorm of float32 x over its last axis with the config's epsilon."""
    if config.on_cpu:
        return kernels.layer_norm(x, scale, bias, config.layer_norm_eps)
    return kernels.normalise(x, config.layer_norm_eps)[0] * scale + bias


class LayerNorm(nn.Module):
    """LayerNorm with float32 statistics and the reference's epsilon (`scale` is torch's weight)."""
    config: LongformerConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        features = x.shape[-1]
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                           (features,), cfg.params_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
                          (features,), cfg.params_dtype)
        y = layer_norm(x.astype(jnp.float32), scale.astype(jnp.float32),
                       bias.astype(jnp.float32), cfg)
        return y.astype(cfg.compute_dtype)


class Embed(nn.Module):
    """A lookup table in the compute dtype; `zero_row` starts at zero (torch's padding_idx)."""
    num: int
    config: LongformerConfig
    axes: tuple[str, str] = ("vocab", "embed")
    zero_row: Optional[int] = None

    @nn.compact
    def __call__(self, ids):
        base = nn.initializers.normal(self.config.initializer_range)

        def init(key, shape, dtype):
            table = base(key, shape, dtype)
            return table if self.zero_row is None else table.at[self.zero_row].set(0)

        table = self.param("embedding", nn.with_logical_partitioning(init, self.axes),
                           (self.num, self.config.hidden_size), self.config.params_dtype)
        return jnp.take(table, ids, axis=0).astype(self.config.compute_dtype)


def rotary(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotates pairs of features of x (B, N, H, D) by position-dependent angles (RoPE);
    positions (N,), or (B, N) for packed rows (restarting at each sequence).

    q_i . k_j then depends on positions only through i - j: relative positions for free.
    """
    half = x.shape[-1] // 2
    freq = base ** (-np.arange(half, dtype=np.float32) / half)
    angle = positions.astype(jnp.float32)[..., None] * freq  # ([B,] N, D/2)
    angle = angle if angle.ndim == 3 else angle[None]
    sin, cos = jnp.sin(angle)[:, :, None, :], jnp.cos(angle)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., :half], x32[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)
