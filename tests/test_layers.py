"""The hand-written VJPs of `kernels.py` (XLA:CPU only) against autodiff of the plain forms in
`layers.py` that every other platform runs: values and gradients, float32 and bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from longformer import kernels, layers
from longformer.config import LongformerConfig

CPU = LongformerConfig(platform="cpu", layer_norm_eps=1e-5)
GPU = LongformerConfig(platform="gpu", layer_norm_eps=1e-5)


def _vjp(f, *args):
    """f's value and the gradient of sum(sin(f)) with respect to every argument (float32)."""
    value, pull = jax.vjp(f, *args)
    cotangent = jnp.cos(value.astype(jnp.float32)).astype(value.dtype)
    return value, pull(cotangent)


def _close(a, b, tol):
    """Every leaf equal to within tol of its largest magnitude."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
        np.testing.assert_allclose(x, y, atol=tol * max(np.abs(y).max(), 1.0), rtol=0)


def test_gelu_matches_torch_and_autodiff():
    """The erf GELU: torch's values; its VJP equals autodiff of jax.nn.gelu (the plain form)."""
    x = jnp.asarray(np.random.RandomState(0).randn(4096).astype(np.float32) * 4)
    np.testing.assert_allclose(kernels.gelu(x), torch.nn.functional.gelu(
        torch.from_numpy(np.array(x))).numpy(), atol=2e-6)
    _close(_vjp(kernels.gelu, x), _vjp(lambda v: layers.gelu(v, GPU), x), 2e-6)


@pytest.mark.parametrize("features", [(24, 56), (56, 24)])  # the wider operand either side
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("bfloat16", 2e-2)])
def test_matmul_f32_vjp_equals_autodiff(dtype, tol, features):
    rng = np.random.RandomState(1)
    x = jnp.asarray(rng.randn(3, 40, features[0]), dtype)
    w = jnp.asarray(rng.randn(*features) / 5, dtype)
    ours = _vjp(lambda a, b: kernels.matmul_f32(a, b).astype(dtype), x, w)
    plain = _vjp(lambda a, b: jnp.dot(a.astype(jnp.float32), b.astype(jnp.float32)).astype(dtype),
                 x, w)
    _close(ours, plain, tol)


def test_layer_norm_vjp_equals_autodiff():
    rng = np.random.RandomState(2)
    x = jnp.asarray(rng.randn(2, 30, 48) * 3 + 1, jnp.float32)
    scale = jnp.asarray(rng.rand(48) + 0.5, jnp.float32)
    bias = jnp.asarray(rng.randn(48), jnp.float32)
    ours = _vjp(lambda *a: layers.layer_norm(*a, CPU), x, scale, bias)
    plain = _vjp(lambda *a: layers.layer_norm(*a, GPU), x, scale, bias)
    _close(ours, plain, 2e-5)
    ref = torch.nn.functional.layer_norm(torch.from_numpy(np.array(x)), (48,),
                                         torch.from_numpy(np.array(scale)),
                                         torch.from_numpy(np.array(bias)), eps=1e-5)
    np.testing.assert_allclose(ours[0], ref.numpy(), atol=2e-5)


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("bfloat16", 3e-2)])
def test_linear_cpu_and_plain_forms_agree(dtype, tol):
    """`layers.linear` on CPU (float32-result matmul, hand-written VJP) and elsewhere (the plain
    matmul in the compute dtype, autodiff)."""
    rng = np.random.RandomState(3)
    x = jnp.asarray(rng.randn(2, 16, 32), dtype)
    kernel = jnp.asarray(rng.randn(32, 8) / 6, jnp.float32)
    bias = jnp.asarray(rng.randn(8), jnp.float32)
    cpu, gpu = (c.replace(dtype=dtype) for c in (CPU, GPU))
    _close(_vjp(lambda *a: layers.linear(*a, cpu), x, kernel, bias),
           _vjp(lambda *a: layers.linear(*a, gpu), x, kernel, bias), tol)


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-6), ("bfloat16", 1e-2)])
def test_scan_vjp_equals_autodiff(dtype, tol):
    """kernels.scan (a layer stack's scan, its residuals passed as bits) against autodiff of
    lax.scan: a remat'd step over a pytree of stacked float32 weights and per-step constants."""
    rng = np.random.RandomState(3)
    params = {"w": jnp.asarray(rng.randn(3, 16, 16) / 4, jnp.float32),
              "scale": jnp.asarray(rng.rand(3, 16) + 0.5, jnp.float32)}
    x = jnp.asarray(rng.randn(2, 5, 16), dtype)
    shifts = jnp.arange(3, dtype=jnp.float32)

    @jax.checkpoint
    def step(h, p, shift):
        y = kernels.matmul_f32(h, p["w"].astype(h.dtype))
        return (kernels.gelu(y + shift) * p["scale"]).astype(h.dtype)

    ours = _vjp(lambda h, p: kernels.scan(step, h, p, shifts), x, params)
    plain = _vjp(lambda h, p: jax.lax.scan(lambda c, xs: (step(c, *xs), None), h,
                                           (p, shifts))[0], x, params)
    _close(ours, plain, tol)


def test_bfloat16_residuals_stay_16_bit():
    """With bfloat16 compute a scanned model's train step keeps its activations in 16 bits: its
    compiled temporaries under 80% of the float32 model's (XLA:CPU widens autodiff's stacked
    bfloat16 residuals to float32)."""
    from longformer.modeling import LongformerModel
    temps = {}
    for dtype in ("float32", "bfloat16"):
        cfg = LongformerConfig(vocab_size=64, hidden_size=64, num_hidden_layers=3,
                               num_attention_heads=2, intermediate_size=256, attention_window=32,
                               max_position_embeddings=514, dtype=dtype, scan_layers=True,
                               platform="cpu")
        model = LongformerModel(cfg, add_pooling_layer=False)
        ids = jnp.ones((1, 512), jnp.int32)
        params = jax.eval_shape(lambda: model.init(jax.random.key(0), ids))

        def loss(p):
            out = model.apply(p, ids).last_hidden_state
            return jnp.mean(jnp.square(out.astype(jnp.float32)))
        compiled = jax.jit(jax.grad(loss)).lower(params).compile()
        temps[dtype] = compiled.memory_analysis().temp_size_in_bytes
    assert temps["bfloat16"] < 0.8 * temps["float32"], temps  # 0.70 measured; 0.97 before


def test_platform_picks_the_kernels():
    """Only a model built for the CPU runs the hand-written VJPs (they show in its jaxpr)."""
    x = jnp.ones((4, 8), jnp.float32)
    for cfg, expected in ((CPU, True), (GPU, False)):
        text = str(jax.make_jaxpr(jax.grad(lambda v: layers.gelu(v, cfg).sum()))(x))
        assert ("custom_vjp" in text) == expected, cfg.platform
