"""Longformer modules: RoBERTa embeddings, the encoder, the base model and the five heads.

Parameter names mirror the Hugging Face state dict (`embeddings/word_embeddings`,
`encoder/layer_3/attention/self/query_global`, `lm_head/decoder` is tied...), so checkpoint
conversion is a systematic renaming. Every parameter carries logical axis names for sharding.
The attention math lives in `attention.py`; modules here only hold parameters and project.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.ad_checkpoint import checkpoint_name

from longformer import attention as attn_op
from longformer.config import LongformerConfig

Array = jax.Array


# ----------------------------------------------------------------------------- outputs
@flax.struct.dataclass
class LongformerOutput:
    """Base model outputs (Hugging Face field names); cut back to the input length."""
    last_hidden_state: Array
    pooler_output: Optional[Array] = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None
    global_attentions: Optional[tuple] = None
    global_overflow: Optional[Array] = None  # (batch,) more global tokens than the budget


@flax.struct.dataclass
class LongformerHeadOutput:
    """Head outputs: `logits` (or `start_logits`/`end_logits` for QA) and `loss` with labels."""
    logits: Optional[Array] = None
    loss: Optional[Array] = None
    start_logits: Optional[Array] = None
    end_logits: Optional[Array] = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None
    global_attentions: Optional[tuple] = None
    global_overflow: Optional[Array] = None


# ----------------------------------------------------------------------------- building blocks
def _init(config: LongformerConfig, axes: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(config.initializer_range), axes)


_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@jax.custom_vjp
def gelu(x):
    """The exact (erf) GELU, x * Phi(x), as torch computes it, with a VJP that evaluates erf and
    exp once per element (autodiff of jax.nn.gelu's erfc form makes more passes over the FFN's
    largest activation)."""
    xf = x.astype(jnp.float32)
    return (xf * (0.5 + 0.5 * jax.lax.erf(xf * _SQRT_HALF))).astype(x.dtype)


def _gelu_fwd(x):
    return gelu(x), x


def _gelu_bwd(x, g):
    xf = x.astype(jnp.float32)
    cdf = 0.5 + 0.5 * jax.lax.erf(xf * _SQRT_HALF)
    pdf = jnp.exp(-0.5 * jnp.square(xf)) * _INV_SQRT_2PI
    return ((g.astype(jnp.float32) * (cdf + xf * pdf)).astype(x.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


def _activation(name: str):
    return {
        "gelu": gelu,
        "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "relu": jax.nn.relu,
        "silu": jax.nn.silu,
        "swish": jax.nn.silu,
        "tanh": jnp.tanh,
    }[name]


def _linear_params(module: nn.Module, config: LongformerConfig, in_features: int,
                   features: int, axes: tuple[str, str]):
    kernel = module.param("kernel", _init(config, axes), (in_features, features),
                          config.params_dtype)
    bias = module.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)),
                        (features,), config.params_dtype)
    return kernel, bias


@jax.custom_vjp
def _matmul_f32(x, w):
    """x (..., K) @ w (K, N) in their dtype with a float32 result, and a backward pass whose two
    matmuls ask for float32 results too (autodiff's would round bfloat16 products to bfloat16
    inside the kernel, which XLA:CPU runs at half speed). In float32 the written-out backward is
    faster too: about 10% on the base model's 4K train step on CPU (bench/README.md)."""
    return jnp.dot(x, w, preferred_element_type=jnp.float32)


def _matmul_f32_fwd(x, w):
    return _matmul_f32(x, w), (x, w)


def _matmul_f32_bwd(res, g):
    x, w = res
    g = g.astype(x.dtype)  # the output is rounded to x.dtype by its consumer: no loss
    gx = jnp.dot(g, w.T, preferred_element_type=jnp.float32).astype(x.dtype)
    gw = jnp.dot(x.reshape(-1, x.shape[-1]).T, g.reshape(-1, g.shape[-1]),
                 preferred_element_type=jnp.float32).astype(w.dtype)
    return gx, gw


_matmul_f32.defvjp(_matmul_f32_fwd, _matmul_f32_bwd)


def linear(x, kernel, bias, dtype):
    """x @ kernel + bias computed in `dtype`, accumulated and biased in float32, then cast once.

    Asking for a float32 result is also what makes XLA:CPU run bfloat16 matmuls fast (about
    1.8x float32 there, against 0.8x when the product is rounded to bfloat16 in the kernel).
    """
    y = _matmul_f32(x.astype(dtype), kernel.astype(dtype))
    return (y + bias.astype(jnp.float32)).astype(dtype)


class Dense(nn.Module):
    """A linear layer with logical axes (`kernel` is [in, out], the transpose of torch's)."""
    features: int
    config: LongformerConfig
    axes: tuple[str, str] = ("embed", "mlp")

    @nn.compact
    def __call__(self, x):
        kernel, bias = _linear_params(self, self.config, x.shape[-1], self.features, self.axes)
        dtype = self.config.compute_dtype
        return linear(x, kernel, bias, dtype)


class DenseParams(nn.Module):
    """Only declares a linear layer's `kernel` and `bias`, so callers can fuse several layers."""
    features: int
    config: LongformerConfig
    axes: tuple[str, str] = ("embed", "mlp")

    @nn.compact
    def __call__(self, in_features: int):
        return _linear_params(self, self.config, in_features, self.features, self.axes)


def _normalise(x, eps):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    rstd = jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True) + eps)
    return centred * rstd, rstd


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x, scale, bias, eps):
    """(x - mean) / std * scale + bias over the last axis, all float32.

    Written out with its VJP: the backward pass keeps only the normalised rows and 1 / std, and
    the scale and bias gradients (sums over every row) are matrix-vector products rather than
    column reductions. In the base model's 4K train step on CPU that saved about 5% of the time
    and 0.9 GB of peak memory against differentiating the forward (bench/README.md).
    """
    return _normalise(x, eps)[0] * scale + bias


def _layer_norm_fwd(x, scale, bias, eps):
    normed, rstd = _normalise(x, eps)
    return normed * scale + bias, (normed, rstd, scale)


def _layer_norm_bwd(eps, res, g):
    normed, rstd, scale = res
    rows = g.reshape(-1, g.shape[-1])
    ones = jnp.ones((1, rows.shape[0]), jnp.float32)
    d_bias = jnp.dot(ones, rows)[0]
    d_scale = jnp.dot(ones, rows * normed.reshape(rows.shape))[0]
    d_normed = g * scale
    d_x = rstd * (d_normed - jnp.mean(d_normed, axis=-1, keepdims=True)
                  - normed * jnp.mean(d_normed * normed, axis=-1, keepdims=True))
    return d_x, d_scale, d_bias


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


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
                       bias.astype(jnp.float32), cfg.layer_norm_eps)
        return y.astype(cfg.compute_dtype)


class Embed(nn.Module):
    num: int
    config: LongformerConfig
    axes: tuple[str, str] = ("vocab", "embed")
    zero_row: Optional[int] = None  # torch's padding_idx row starts at zero

    @nn.compact
    def __call__(self, ids):
        base = nn.initializers.normal(self.config.initializer_range)

        def init(key, shape, dtype):
            table = base(key, shape, dtype)
            return table if self.zero_row is None else table.at[self.zero_row].set(0)

        table = self.param("embedding", nn.with_logical_partitioning(init, self.axes),
                           (self.num, self.config.hidden_size), self.config.params_dtype)
        return jnp.take(table, ids, axis=0).astype(self.config.compute_dtype)


class LongformerEmbeddings(nn.Module):
    config: LongformerConfig

    @nn.compact
    def __call__(self, input_ids, token_type_ids, position_ids, inputs_embeds=None,
                 deterministic=True):
        cfg = self.config
        if inputs_embeds is None:
            inputs_embeds = Embed(cfg.vocab_size, cfg, zero_row=cfg.pad_token_id,
                                  name="word_embeddings")(input_ids)
        pos = Embed(cfg.max_position_embeddings, cfg, axes=("pos", "embed"),
                    zero_row=cfg.pad_token_id, name="position_embeddings")(position_ids)
        types = Embed(cfg.type_vocab_size, cfg, axes=("pos", "embed"),
                      name="token_type_embeddings")(token_type_ids)
        x = LayerNorm(cfg, name="LayerNorm")(inputs_embeds.astype(cfg.compute_dtype) + pos + types)
        return nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)


class LongformerSelfAttention(nn.Module):
    """The six projections of a layer; the math is `attention.longformer_attention`."""
    config: LongformerConfig
    layer_index: int

    @nn.compact
    def __call__(self, x, attention_mask, globals_, deterministic=True, output_attentions=False):
        cfg = self.config
        batch, length, hidden = x.shape
        heads, dim = cfg.num_attention_heads, cfg.head_dim
        left, right = cfg.layer_extents[self.layer_index]  # (w/2, w/2), or (w, 0) when causal
        use_global = globals_ is not None
        dtype = cfg.compute_dtype

        # The global rows need key_global / value_global of every token. With fewer global slots
        # than the head size they are cheaper left unprojected (`attention.GlobalProjection`);
        # otherwise they ride along with the local projections in one matmul.
        factored = use_global and globals_.index.shape[1] < dim
        global_names = ["key_global", "value_global"] if use_global else []
        params = {n: DenseParams(hidden, cfg, ("embed", "heads"), name=n)(hidden)
                  for n in ["query", "key", "value"] + global_names}
        names = ["query", "key", "value"] + ([] if factored else global_names)
        kernel = jnp.concatenate([params[n][0].astype(dtype) for n in names], axis=1)
        bias = jnp.concatenate([params[n][1] for n in names])
        fused = checkpoint_name(linear(x, kernel, bias, dtype), "projections")
        split = jnp.split(fused, len(names), axis=-1)
        proj = {n: s.reshape(batch, length, heads, dim) for n, s in zip(names, split)}
        scale = 1.0 / np.sqrt(dim)
        q = (proj["query"].astype(jnp.float32) * scale).astype(dtype)

        q_global = k_global = v_global = None
        if use_global:
            qg_kernel, qg_bias = DenseParams(hidden, cfg, ("embed", "heads"),
                                             name="query_global")(hidden)
            x_global = attn_op.gather_rows(x, globals_.index).astype(dtype)
            q_global = linear(x_global, qg_kernel, qg_bias, dtype)
            q_global = (q_global.astype(jnp.float32) * scale).astype(dtype)
            q_global = q_global.reshape(batch, -1, heads, dim)
            if factored:
                (k_kernel, k_bias), (v_kernel, v_bias) = params["key_global"], params["value_global"]
                k_global = attn_op.GlobalProjection(
                    x.astype(dtype), k_kernel.reshape(hidden, heads, dim),
                    k_bias.reshape(heads, dim), v_kernel.reshape(hidden, heads, dim),
                    v_bias.reshape(heads, dim))
            else:
                k_global, v_global = proj["key_global"], proj["value_global"]

        rate = cfg.attention_probs_dropout_prob
        rng = None if deterministic or rate == 0.0 else self.make_rng("dropout")
        op = (functools.partial(attn_op.longformer_attention,
                                dilation=cfg.layer_dilations[self.layer_index])
              if cfg.attention_impl == "banded" else attn_op.dense_longformer_attention)
        result = op(
            q, proj["key"], proj["value"], attention_mask, left=left, right=right,
            globals_=globals_, q_global=q_global, k_global=k_global, v_global=v_global,
            block=cfg.attention_block_size or None, dropout_rate=rate, dropout_rng=rng,
            return_probs=output_attentions)
        if not output_attentions:
            return result.reshape(batch, length, hidden), None, None
        out, probs, g_probs = result
        return out.reshape(batch, length, hidden), probs, g_probs


class LongformerLayer(nn.Module):
    config: LongformerConfig
    layer_index: int

    @nn.compact
    def __call__(self, x, attention_mask, globals_, deterministic=True, output_attentions=False):
        cfg = self.config
        x = nn.with_logical_constraint(x, ("batch", "length", None))  # hidden size replicated
        a, probs, g_probs = _AttentionBlock(cfg, self.layer_index, name="attention")(
            x, attention_mask, globals_, deterministic, output_attentions)
        h = _Intermediate(cfg, name="intermediate")(a)
        out = _Output(cfg, name="output")(h, a, deterministic)
        return out, probs, g_probs


class _AttentionBlock(nn.Module):
    config: LongformerConfig
    layer_index: int

    @nn.compact
    def __call__(self, x, attention_mask, globals_, deterministic, output_attentions):
        a, probs, g_probs = LongformerSelfAttention(self.config, self.layer_index, name="self")(
            x, attention_mask, globals_, deterministic, output_attentions)
        out = _Output(self.config, ("heads", "embed"), "attention_out", name="output")(
            a, x, deterministic)
        return out, probs, g_probs


class _Intermediate(nn.Module):
    config: LongformerConfig

    @nn.compact
    def __call__(self, x):
        h = Dense(self.config.intermediate_size, self.config, ("embed", "mlp"), name="dense")(x)
        h = checkpoint_name(h, "ffn_in")
        return _activation(self.config.hidden_act)(h)


class _Output(nn.Module):
    """dense -> dropout -> LayerNorm(residual + .), the reference's SelfOutput and Output."""
    config: LongformerConfig
    axes: tuple[str, str] = ("mlp", "embed")
    name_out: str = "ffn_out"  # its checkpoint name (remat="minimal")

    @nn.compact
    def __call__(self, h, residual, deterministic):
        cfg = self.config
        h = checkpoint_name(Dense(cfg.hidden_size, cfg, self.axes, name="dense")(h), self.name_out)
        h = nn.Dropout(cfg.hidden_dropout_prob)(h, deterministic=deterministic)
        return LayerNorm(cfg, name="LayerNorm")(h + residual.astype(h.dtype))


_REMAT_POLICIES = {
    "full": None,
    # Keep the outputs of the large matmuls and of the band attention; recompute LayerNorms, the
    # activation, the attention's layout copies and output projection (one 768 x 768 matmul):
    # less memory than no remat and, on CPU, less time too (bench/README.md).
    "minimal": jax.checkpoint_policies.save_only_these_names(
        "projections", "attention", "ffn_in", "ffn_out"),
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def layer_runs(config: LongformerConfig) -> list[tuple[int, int]]:
    """(first layer, count) of each run of consecutive layers sharing a window and a dilation:
    the layers one `lax.scan` covers (a layer reads both from its index)."""
    kinds = tuple(zip(config.layer_windows, config.layer_dilations))
    runs = []
    for i, kind in enumerate(kinds):
        if runs and kinds[runs[-1][0]] == kind:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


def _run_name(first: int, count: int) -> str:
    return f"layers_{first}_{first + count - 1}"


def _is_box(x) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)


def _stack_leaves(*leaves):
    if _is_box(leaves[0]):  # logical names gain a leading `layers` axis (never sharded)
        return leaves[0].replace(value=jnp.stack([b.value for b in leaves]),
                                 names=("layers",) + tuple(leaves[0].names))
    if hasattr(leaves[0], "shape"):
        return jnp.stack(leaves)
    return leaves[0]  # e.g. optax.MaskedNode


def _take_leaf(x, i: int):
    if _is_box(x):
        return x.replace(value=x.value[i], names=tuple(x.names)[1:])
    return x[i] if hasattr(x, "shape") else x


def _map_encoders(tree, fn):
    """fn applied to every `encoder` dict in a tree of dicts, (named) tuples and lists: a model's
    parameters, their boxed or abstract forms, or an optimizer state that mirrors them."""
    if isinstance(tree, (dict, flax.core.FrozenDict)):
        return {k: fn(v) if k == "encoder" and isinstance(v, (dict, flax.core.FrozenDict))
                else _map_encoders(v, fn) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*[_map_encoders(v, fn) for v in tree])
    if isinstance(tree, (tuple, list)):
        return type(tree)(_map_encoders(v, fn) for v in tree)
    return tree


def stack_layers(tree, config: LongformerConfig):
    """Per-layer parameters (`encoder/layer_3/...`, the checkpoint layout) -> one array per run
    of layers sharing a window (`encoder/layers_0_11/...`, leading axis = layer), the layout a
    `scan_layers` model trains in: the layer scan then reads its parameters in place instead of
    stacking them (and slicing their gradients apart) at every step. `unstack_layers` inverts it
    exactly; the model applies either layout."""
    def fn(enc):
        if "layer_0" not in enc:
            return dict(enc)
        out = {k: v for k, v in enc.items() if not k.startswith("layer_")}
        for first, count in layer_runs(config):
            out[_run_name(first, count)] = jax.tree.map(
                _stack_leaves, *[enc[f"layer_{i}"] for i in range(first, first + count)],
                is_leaf=_is_box)
        return out
    return _map_encoders(tree, fn)


def unstack_layers(tree, config: LongformerConfig):
    """The inverse of `stack_layers` (a tree already per layer comes back as it is)."""
    def fn(enc):
        out = {k: v for k, v in enc.items() if not k.startswith("layers_")}
        for first, count in layer_runs(config):
            run = enc.get(_run_name(first, count))
            if run is None:
                return dict(enc)
            for j in range(count):
                out[f"layer_{first + j}"] = jax.tree.map(lambda x: _take_leaf(x, j), run,
                                                         is_leaf=_is_box)
        return out
    return _map_encoders(tree, fn)


class LongformerEncoder(nn.Module):
    """The layers, unrolled, or with `scan_layers` a `lax.scan` over each run of layers sharing a
    window: XLA then compiles one layer per run instead of every layer.

    The parameters are per layer (`layer_3/...`, as in the checkpoints; scanning stacks each run
    when the step runs) or already stacked by `stack_layers` (`layers_0_11/...`, how train.py
    holds them). The unrolled path is used at init and when attentions or hidden states are asked
    for.
    """
    config: LongformerConfig

    @nn.compact
    def __call__(self, x, attention_mask, globals_, deterministic=True, output_attentions=False,
                 output_hidden_states=False):
        cfg = self.config
        stacked = (not self.is_initializing()
                   and _run_name(*layer_runs(cfg)[0]) in self.variables.get("params", {}))
        if stacked or (cfg.scan_layers and not self.is_initializing()
                       and not output_attentions and not output_hidden_states):
            return self._explicit(x, attention_mask, globals_, deterministic, output_attentions,
                                  output_hidden_states)
        layer_cls = LongformerLayer
        if cfg.remat != "none":
            # Arguments count `self` as 0: deterministic and output_attentions are static.
            layer_cls = nn.remat(LongformerLayer, policy=_REMAT_POLICIES[cfg.remat],
                                 static_argnums=(4, 5))
        hidden, attentions, global_attentions = [], [], []
        for i in range(cfg.num_hidden_layers):
            if output_hidden_states:
                hidden.append(x)
            x, probs, g_probs = layer_cls(cfg, i, name=f"layer_{i}")(
                x, attention_mask, globals_, deterministic, output_attentions)
            attentions.append(probs)
            global_attentions.append(g_probs)
        if output_hidden_states:
            hidden.append(x)
        return x, tuple(hidden), tuple(attentions), tuple(global_attentions)

    def _explicit(self, x, attention_mask, globals_, deterministic, output_attentions,
                  output_hidden_states):
        """The layers applied to parameters read from the tree (either layout): a `lax.scan`
        per run, or, when attentions or hidden states are wanted, one layer after another."""
        cfg = self.config
        params = nn.meta.unbox(self.variables["params"])
        dropout_key = None if deterministic else self.make_rng("dropout")
        unrolled = output_attentions or output_hidden_states or not cfg.scan_layers
        hidden, attentions, global_attentions = [], [], []
        for first, count in layer_runs(cfg):
            layer = LongformerLayer(cfg, first)  # a run shares first's window and dilation
            # Matrices in the compute dtype (the layer casts them anyway): with bfloat16 compute
            # the scan's copy and its gradient take half the memory.
            def cast(p, matrix_ndim):
                return p.astype(cfg.compute_dtype) if p.ndim >= matrix_ndim else p
            run = params.get(_run_name(first, count))
            if run is None:
                run = jax.tree.map(lambda *p: jnp.stack([cast(a, 2) for a in p]),
                                   *[params[f"layer_{i}"] for i in range(first, first + count)])
            else:
                run = jax.tree.map(lambda p: cast(p, 3), run)

            def body(h, xs, layer=layer):
                p, index = xs
                rngs = (None if dropout_key is None
                        else {"dropout": jax.random.fold_in(dropout_key, index)})
                return layer.apply({"params": p}, h, attention_mask, globals_, deterministic,
                                   output_attentions, rngs=rngs)

            if cfg.remat != "none":
                body = jax.checkpoint(body, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=False)
            if not unrolled:
                x, _ = jax.lax.scan(lambda h, xs: (body(h, xs)[0], None), x,
                                    (run, jnp.arange(first, first + count)))
                continue
            for j in range(count):
                if output_hidden_states:
                    hidden.append(x)
                x, probs, g_probs = body(x, (jax.tree.map(lambda p: p[j], run), first + j))
                attentions.append(probs)
                global_attentions.append(g_probs)
        if output_hidden_states:
            hidden.append(x)
        return x, tuple(hidden), tuple(attentions), tuple(global_attentions)


class LongformerPooler(nn.Module):
    config: LongformerConfig

    @nn.compact
    def __call__(self, x):
        return jnp.tanh(Dense(self.config.hidden_size, self.config, ("embed", "mlp"),
                              name="dense")(x[:, 0]))


# ----------------------------------------------------------------------------- input checks
def _concrete(x) -> Optional[np.ndarray]:
    """The value of x when it is known now (not traced under jit), else None."""
    if x is None or isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def _check_shape(name: str, x, shape: tuple[int, ...]):
    if x is not None and tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(x.shape)} but the input has shape {tuple(shape)}")


def classification_global_mask(input_ids: Array) -> Array:
    """The reference's default for sequence classification: only token 0 (`<s>`) is global."""
    return jnp.zeros(input_ids.shape, jnp.int32).at[..., 0].set(1)


def _first_separator(input_ids: Array, sep_token_id: int, what: str) -> Array:
    ids = _concrete(input_ids)
    if ids is not None:
        counts = (ids == sep_token_id).sum(-1).reshape(-1)
        bad = np.flatnonzero(counts != 3)
        if bad.size:
            raise ValueError(
                f"{what}: no global_attention_mask was given, so the default rule needs the layout "
                f"`<s> question </s></s> context </s>` with exactly three separator tokens "
                f"(id {sep_token_id}) per example; example {int(bad[0])} has {int(counts[bad[0]])}. "
                f"Pass global_attention_mask explicitly for other layouts.")
    return jnp.argmax(input_ids == sep_token_id, axis=-1)


def question_answering_global_mask(input_ids: Array, sep_token_id: int) -> Array:
    """The reference's QA default: every token before the first `</s>` (`<s>` and the question)."""
    first = _first_separator(input_ids, sep_token_id, "question answering")
    return (jnp.arange(input_ids.shape[-1]) < first[..., None]).astype(jnp.int32)


def multiple_choice_global_mask(input_ids: Array, sep_token_id: int) -> Array:
    """The reference's multiple-choice default: every token after the first `</s></s>` pair."""
    first = _first_separator(input_ids, sep_token_id, "multiple choice")
    return (jnp.arange(input_ids.shape[-1]) > first[..., None] + 1).astype(jnp.int32)


def _pad_to(x, length: int, value):
    if x is None or x.shape[1] == length:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, length - x.shape[1])
    return jnp.pad(x, widths, constant_values=value)


# ----------------------------------------------------------------------------- the base model
class LongformerModel(nn.Module):
    """The bare encoder. `model.apply(params, input_ids, attention_mask=..., ...)`."""
    config: LongformerConfig
    add_pooling_layer: bool = True

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, global_attention_mask=None,
                 token_type_ids=None, position_ids=None, inputs_embeds=None,
                 output_attentions=False, output_hidden_states=False, deterministic=True):
        cfg = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        shape = tuple(input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1])
        if len(shape) != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {shape}")
        batch, length = shape
        if length > cfg.max_sequence_length:
            raise ValueError(
                f"sequence length {length} is longer than the position table allows: "
                f"max_position_embeddings={cfg.max_position_embeddings} holds "
                f"{cfg.max_sequence_length} tokens (positions start at pad_token_id + 1)")
        for name, x in (("attention_mask", attention_mask),
                        ("global_attention_mask", global_attention_mask),
                        ("token_type_ids", token_type_ids), ("position_ids", position_ids)):
            _check_shape(name, x, shape)

        attention_mask = (jnp.ones(shape, jnp.int32) if attention_mask is None
                          else jnp.asarray(attention_mask).astype(jnp.int32))
        global_mask = (jnp.zeros(shape, jnp.int32) if global_attention_mask is None
                       else jnp.asarray(global_attention_mask).astype(jnp.int32))
        token_type_ids = (jnp.zeros(shape, jnp.int32) if token_type_ids is None
                          else jnp.asarray(token_type_ids))

        # Pad to a multiple of the largest window, as the reference does; cut back at the end.
        padded = -(-length // cfg.max_window) * cfg.max_window
        attention_mask = _pad_to(attention_mask, padded, 0)
        global_mask = _pad_to(global_mask, padded, 0)
        token_type_ids = _pad_to(token_type_ids, padded, 0)
        if input_ids is not None:
            input_ids = _pad_to(jnp.asarray(input_ids), padded, cfg.pad_token_id)
            if position_ids is None:
                real = (input_ids != cfg.pad_token_id).astype(jnp.int32)
                position_ids = jnp.cumsum(real, axis=1) * real + cfg.pad_token_id
        else:
            inputs_embeds = jnp.asarray(inputs_embeds)
            inputs_embeds = _pad_to(inputs_embeds, padded, 0)  # padding is never attended to
            if position_ids is None:
                position_ids = jnp.broadcast_to(
                    jnp.arange(length) + cfg.pad_token_id + 1, shape)
        position_ids = _pad_to(jnp.asarray(position_ids), padded, cfg.pad_token_id)

        x = LongformerEmbeddings(cfg, name="embeddings")(
            input_ids, token_type_ids, position_ids, inputs_embeds, deterministic)

        is_real = attention_mask > 0
        is_global = is_real & (global_mask > 0)
        globals_, overflow = None, jnp.zeros((batch,), bool)
        known = _concrete(is_global)
        if cfg.max_global_tokens > 0:
            globals_ = attn_op.global_token_indices(is_global, cfg.max_global_tokens)
            overflow = globals_.overflow
        if known is not None and known.sum(1).max(initial=0) > cfg.max_global_tokens:
            counts = known.sum(1)
            raise ValueError(
                f"example {int(counts.argmax())} asks for {int(counts.max())} global tokens but "
                f"the budget is max_global_tokens={cfg.max_global_tokens}; raise it in the config")

        x, hidden, attentions, global_attentions = LongformerEncoder(cfg, name="encoder")(
            x, is_real, globals_, deterministic, output_attentions, output_hidden_states)
        x = x[:, :length]
        pooled = LongformerPooler(cfg, name="pooler")(x) if self.add_pooling_layer else None
        return LongformerOutput(
            last_hidden_state=x,
            pooler_output=pooled,
            hidden_states=tuple(h[:, :length] for h in hidden) if output_hidden_states else None,
            attentions=(tuple(a[:, :, :length] for a in attentions)
                        if output_attentions else None),
            global_attentions=(tuple(g[:, :, :length] for g in global_attentions)
                               if output_attentions and globals_ is not None else None),
            global_overflow=overflow,
        )

    def _word_table(self):
        return nn.meta.unbox(self.variables["params"]["embeddings"]["word_embeddings"]["embedding"])


# ----------------------------------------------------------------------------- losses
def masked_cross_entropy(logits: Array, labels: Array, ignore_index: int = -100) -> Array:
    """Mean cross-entropy over labels != ignore_index (float32)."""
    valid = labels != ignore_index
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), jnp.where(valid, labels, 0))
    return jnp.sum(jnp.where(valid, losses, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def _head_output(base: LongformerOutput, **fields) -> LongformerHeadOutput:
    return LongformerHeadOutput(hidden_states=base.hidden_states, attentions=base.attentions,
                                global_attentions=base.global_attentions,
                                global_overflow=base.global_overflow, **fields)


# ----------------------------------------------------------------------------- heads
class LongformerForMaskedLM(nn.Module):
    """MLM head: dense, gelu, LayerNorm, decoder tied to the word embeddings, separate bias."""
    config: LongformerConfig

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, global_attention_mask=None,
                 token_type_ids=None, position_ids=None, inputs_embeds=None, labels=None,
                 output_attentions=False, output_hidden_states=False, deterministic=True):
        cfg = self.config
        base = LongformerModel(cfg, add_pooling_layer=False, name="longformer")
        out = base(input_ids, attention_mask, global_attention_mask, token_type_ids, position_ids,
                   inputs_embeds, output_attentions, output_hidden_states, deterministic)
        logits = _LMHead(cfg, name="lm_head")(out.last_hidden_state, base._word_table())
        loss = masked_cross_entropy(logits, labels) if labels is not None else None
        return _head_output(out, logits=logits, loss=loss)


class _LMHead(nn.Module):
    config: LongformerConfig

    @nn.compact
    def __call__(self, x, word_table):
        cfg = self.config
        h = Dense(cfg.hidden_size, cfg, ("embed", "mlp"), name="dense")(x)
        h = LayerNorm(cfg, name="layer_norm")(gelu(h))
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                          (cfg.vocab_size,), cfg.params_dtype)
        dtype = cfg.compute_dtype
        return linear(h, word_table.T, bias, dtype)


class LongformerForSequenceClassification(nn.Module):
    """Classification on token 0, which is global unless a global_attention_mask is given."""
    config: LongformerConfig

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, global_attention_mask=None,
                 token_type_ids=None, position_ids=None, inputs_embeds=None, labels=None,
                 output_attentions=False, output_hidden_states=False, deterministic=True):
        cfg = self.config
        if global_attention_mask is None:
            ref = input_ids if input_ids is not None else inputs_embeds[..., 0]
            global_attention_mask = classification_global_mask(ref)
        out = LongformerModel(cfg, add_pooling_layer=False, name="longformer")(
            input_ids, attention_mask, global_attention_mask, token_type_ids, position_ids,
            inputs_embeds, output_attentions, output_hidden_states, deterministic)
        logits = _ClassificationHead(cfg, name="classifier")(out.last_hidden_state[:, 0],
                                                              deterministic)
        loss = None if labels is None else sequence_classification_loss(cfg, logits, labels)
        return _head_output(out, logits=logits, loss=loss)


class _ClassificationHead(nn.Module):
    """dropout, dense, tanh, dropout, out_proj (no pooler), as the reference."""
    config: LongformerConfig

    @nn.compact
    def __call__(self, x, deterministic):
        cfg = self.config
        drop = nn.Dropout(cfg.hidden_dropout_prob)
        x = drop(x, deterministic=deterministic)
        x = jnp.tanh(Dense(cfg.hidden_size, cfg, ("embed", "mlp"), name="dense")(x))
        x = drop(x, deterministic=deterministic)
        return Dense(cfg.num_labels, cfg, ("mlp", "classes"), name="out_proj")(x)


def problem_type(config: LongformerConfig, labels: Array) -> str:
    """The reference's rule when config.problem_type is unset."""
    if config.problem_type:
        return config.problem_type
    if config.num_labels == 1:
        return "regression"
    if jnp.issubdtype(labels.dtype, jnp.integer):
        return "single_label_classification"
    return "multi_label_classification"


def sequence_classification_loss(config: LongformerConfig, logits: Array, labels: Array) -> Array:
    kind = problem_type(config, labels)
    logits = logits.astype(jnp.float32)
    if kind == "regression":
        if config.num_labels == 1:
            return jnp.mean((logits.reshape(-1) - labels.reshape(-1).astype(jnp.float32)) ** 2)
        return jnp.mean((logits - labels.astype(jnp.float32)) ** 2)
    if kind == "single_label_classification":
        return masked_cross_entropy(logits.reshape(-1, config.num_labels), labels.reshape(-1))
    if kind == "multi_label_classification":
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32)))
    raise ValueError(f"unknown problem_type {kind!r}")


class LongformerForTokenClassification(nn.Module):
    """dropout + linear per token; no default global attention."""
    config: LongformerConfig

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, global_attention_mask=None,
                 token_type_ids=None, position_ids=None, inputs_embeds=None, labels=None,
                 output_attentions=False, output_hidden_states=False, deterministic=True):
        cfg = self.config
        out = LongformerModel(cfg, add_pooling_layer=False, name="longformer")(
            input_ids, attention_mask, global_attention_mask, token_type_ids, position_ids,
            inputs_embeds, output_attentions, output_hidden_states, deterministic)
        x = nn.Dropout(cfg.hidden_dropout_prob)(out.last_hidden_state, deterministic=deterministic)
        logits = Dense(cfg.num_labels, cfg, ("embed", "classes"), name="classifier")(x)
        loss = None if labels is None else masked_cross_entropy(logits, labels)
        return _head_output(out, logits=logits, loss=loss)


class LongformerForMultipleChoice(nn.Module):
    """Inputs (batch, choices, length); one score per choice from the pooled token 0.

    Default global attention, per choice, is the reference's: every token after the first
    `</s></s>` pair.
    """
    config: LongformerConfig

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, global_attention_mask=None,
                 token_type_ids=None, position_ids=None, inputs_embeds=None, labels=None,
                 output_attentions=False, output_hidden_states=False, deterministic=True):
        cfg = self.config
        ref = input_ids if input_ids is not None else inputs_embeds[..., 0]
        if ref.ndim != 3:
            raise ValueError(f"multiple choice inputs must be (batch, choices, length), "
                             f"got shape {tuple(ref.shape)}")
        batch, choices, length = ref.shape
        if global_attention_mask is None and input_ids is not None:
            global_attention_mask = multiple_choice_global_mask(input_ids, cfg.sep_token_id)

        def flat(x):
            return None if x is None else jnp.asarray(x).reshape((batch * choices,) + x.shape[2:])

        out = LongformerModel(cfg, add_pooling_layer=True, name="longformer")(
            flat(input_ids), flat(attention_mask), flat(global_attention_mask),
            flat(token_type_ids), flat(position_ids), flat(inputs_embeds), output_attentions,
            output_hidden_states, deterministic)
        x = nn.Dropout(cfg.hidden_dropout_prob)(out.pooler_output, deterministic=deterministic)
        logits = Dense(1, cfg, ("embed", "classes"), name="classifier")(x).reshape(batch, choices)
        loss = None if labels is None else masked_cross_entropy(logits, labels)
        return _head_output(out, logits=logits, loss=loss)


class LongformerForQuestionAnswering(nn.Module):
    """Start/end logits; default global attention on `<s>` and the question (before `</s>`)."""
    config: LongformerConfig

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, global_attention_mask=None,
                 token_type_ids=None, position_ids=None, inputs_embeds=None,
                 start_positions=None, end_positions=None, output_attentions=False,
                 output_hidden_states=False, deterministic=True):
        cfg = self.config
        if global_attention_mask is None and input_ids is not None:
            global_attention_mask = question_answering_global_mask(input_ids, cfg.sep_token_id)
        out = LongformerModel(cfg, add_pooling_layer=False, name="longformer")(
            input_ids, attention_mask, global_attention_mask, token_type_ids, position_ids,
            inputs_embeds, output_attentions, output_hidden_states, deterministic)
        logits = Dense(cfg.num_labels, cfg, ("embed", "classes"), name="qa_outputs")(
            out.last_hidden_state)
        start, end = logits[..., 0], logits[..., 1]
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = question_answering_loss(start, end, start_positions, end_positions)
        return _head_output(out, start_logits=start, end_logits=end, loss=loss)


def question_answering_loss(start_logits, end_logits, start_positions, end_positions):
    """Mean of the start and end cross-entropies; positions outside the input are ignored."""
    length = start_logits.shape[-1]

    def one(logits, positions):
        positions = jnp.clip(jnp.asarray(positions).reshape(-1), 0, length)
        return masked_cross_entropy(logits, positions, ignore_index=length)

    return (one(start_logits, start_positions) + one(end_logits, end_positions)) / 2


MODEL_CLASSES = {
    "LongformerModel": LongformerModel,
    "LongformerForMaskedLM": LongformerForMaskedLM,
    "LongformerForSequenceClassification": LongformerForSequenceClassification,
    "LongformerForTokenClassification": LongformerForTokenClassification,
    "LongformerForMultipleChoice": LongformerForMultipleChoice,
    "LongformerForQuestionAnswering": LongformerForQuestionAnswering,
}
