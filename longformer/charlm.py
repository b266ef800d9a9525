"""A byte-level autoregressive Longformer: the paper's character language model (Appendix B).

What it takes from the paper: causal sliding windows that grow from the bottom layer to the top
(`attention_window`, one entry per layer), dilation on a few heads of the upper layers
(`attention_dilation`, per layer and head), pre-LayerNorm blocks, a byte vocabulary (text8 and
enwik8 are read as bytes, so bits per character are bits per byte), no global attention.

Where it differs, and why: positions are rotary (RoPE) on queries and keys instead of the paper's
Transformer-XL relative sinusoidal embeddings. Both make attention depend on i - j only, so a
model trained on 2K windows runs on 23K ones, and evaluation windows may start anywhere; RoPE
needs no change to the attention op (it rotates q and k before the band is computed).

The model is configured by `LongformerConfig` (sizes, windows, dilation, dropout, dtypes, remat,
block size) with `causal=True`; its position, token-type and special-token fields are unused.
Parameters carry the same logical axis names as the encoder's, so the same sharding rules apply.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from longformer import attention as attn_op
from longformer import segments
from longformer import sequence_parallel as sp
from longformer.config import LongformerConfig
from longformer.layers import REMAT_POLICIES, Dense, DenseParams, Embed, LayerNorm, activation, concrete, linear, rotary
from longformer.modeling import ResolvedModule

VOCAB_SIZE = 256  # bytes


def geometric_windows(first: int, last: int, layers: int, multiple: int = 32) -> tuple[int, ...]:
    """Windows growing geometrically from `first` (bottom layer) to `last` (top layer).

    The paper gives the end points (32 and 8,192 in phase 1) but not the layers in between; a
    geometric ramp keeps the ratio between neighbouring layers constant. Values are rounded to
    `multiple` (even, so valid windows; multiples of the op's block are cheaper).
    """
    if layers == 1:
        return (last,)
    ratio = (last / first) ** (1.0 / (layers - 1))
    return tuple(max(multiple, int(round(first * ratio ** i / multiple)) * multiple)
                 for i in range(layers))


class CharLMAttention(nn.Module):
    """q, k, v projections, RoPE, the causal (dilated) band op, and the output projection."""
    config: LongformerConfig
    layer_index: int

    @nn.compact
    def __call__(self, x, positions, segment_ids=None, deterministic=True):
        cfg = self.config
        batch, length, hidden = x.shape
        heads, dim = cfg.num_attention_heads, cfg.head_dim
        dtype = cfg.compute_dtype
        names = ("query", "key", "value")
        params = [DenseParams(hidden, cfg, ("embed", "heads"), name=n)(hidden) for n in names]
        kernel = jnp.concatenate([p[0].astype(dtype) for p in params], axis=1)
        bias = jnp.concatenate([p[1] for p in params])
        fused = linear(x, kernel, bias, cfg)  # one matmul for the three projections
        q, k, v = (t.reshape(batch, length, heads, dim) for t in jnp.split(fused, 3, axis=-1))
        q = rotary(q.astype(jnp.float32) / math.sqrt(dim), positions).astype(dtype)
        k = rotary(k, positions)

        left, right = cfg.layer_extents[self.layer_index]
        rate = cfg.attention_probs_dropout_prob
        rng = None if deterministic or rate == 0.0 else self.make_rng("dropout")
        keys = jnp.ones((batch, length), bool) if segment_ids is None else segment_ids > 0
        options = dict(left=left, right=right, dilation=cfg.layer_dilations[self.layer_index],
                       block=cfg.attention_block_size or None, dropout_rate=rate,
                       dropout_rng=rng, loop=cfg.band_impl == "loop")
        if sp.shards() > 1:  # the text split over the mesh's `sequence` axis: halo exchange
            out = attn_op.sharded_longformer_attention(q, k, v, keys, segment_ids=segment_ids,
                                                       **options)
        else:
            out = attn_op.dilated_band_attention(q, k, v, keys, segments=segment_ids, **options)
        return Dense(hidden, cfg, ("heads", "embed"), name="output")(out.reshape(batch, length,
                                                                                  hidden))


class CharLMLayer(nn.Module):
    """Pre-LayerNorm block: x + attention(LN(x)), then x + MLP(LN(x))."""
    config: LongformerConfig
    layer_index: int

    @nn.compact
    def __call__(self, x, positions, segment_ids=None, deterministic=True):
        cfg = self.config
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        drop = nn.Dropout(cfg.hidden_dropout_prob)
        h = LayerNorm(cfg, name="attention_norm")(x)
        h = CharLMAttention(cfg, self.layer_index, name="attention")(h, positions, segment_ids,
                                                                     deterministic)
        x = x + drop(h, deterministic=deterministic)
        h = LayerNorm(cfg, name="mlp_norm")(x)
        h = Dense(cfg.intermediate_size, cfg, ("embed", "mlp"), name="mlp_in")(h)
        h = Dense(cfg.hidden_size, cfg, ("mlp", "embed"), name="mlp_out")(
            activation(cfg.hidden_act, cfg)(h))
        return x + drop(h, deterministic=deterministic)


class CharLM(ResolvedModule):
    """input_ids (B, N) bytes -> next-byte logits (B, N, 256); position t sees bytes <= t only.

    `model.apply(params, input_ids, deterministic=False, rngs={'dropout': key})` for training.
    `global_attention_mask` is accepted only because the generic initialiser passes an all-zero
    one: a causal model has no global attention (see `LongformerConfig`). `segment_ids`
    (B, N) packs several texts in a row, as for the other models: none sees another.
    """
    config: LongformerConfig

    @nn.compact
    def __call__(self, input_ids, deterministic=True, global_attention_mask=None,
                 segment_ids=None):
        cfg = self.config
        if not cfg.causal:
            raise ValueError("CharLM is autoregressive: its config needs causal=True")
        known = concrete(global_attention_mask)
        if known is not None and known.any():
            raise ValueError("CharLM has no global attention: it would leak the future")
        x = Embed(cfg.vocab_size, cfg, name="embed")(input_ids)
        x = nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)
        positions = jnp.arange(input_ids.shape[1])
        if segment_ids is not None:
            segment_ids = jnp.asarray(segment_ids).astype(jnp.int32)
            positions = segments.count_within(jnp.ones_like(segment_ids), segment_ids) - 1
        layer_cls = CharLMLayer
        if cfg.remat != "none":  # arguments count `self` as 0: deterministic is static
            layer_cls = nn.remat(CharLMLayer, policy=REMAT_POLICIES[cfg.remat],
                                 static_argnums=(4,))
        for i in range(cfg.num_hidden_layers):
            x = layer_cls(cfg, i, name=f"layer_{i}")(x, positions, segment_ids, deterministic)
        x = LayerNorm(cfg, name="final_norm")(x)
        return Dense(cfg.vocab_size, cfg, ("embed", "vocab"), name="lm_head")(x)


# ----------------------------------------------------------------------------- sampling
def sample(model: CharLM, params, prompt: bytes, length: int, *, context: int,
           temperature: float = 1.0, top_k: int = 0, seed: int = 0) -> bytes:
    """Samples `length` bytes continuing `prompt`; returns only the new bytes.

    Each new byte re-runs the model on the last `context` bytes (no key/value cache: simple, and
    O(context * window) per byte, fine for demos). The whole loop is one compiled `fori_loop`
    over a fixed-size buffer, so nothing recompiles per step. temperature 0 is greedy; top_k > 0
    samples among the k most likely bytes only.
    """
    if not prompt:
        prompt = b"\n"  # the model needs one byte to condition on
    total = len(prompt) + length
    window = min(context, total)
    buf = jnp.zeros((total,), jnp.int32).at[:len(prompt)].set(
        jnp.frombuffer(prompt, dtype=np.uint8).astype(jnp.int32))

    def logits_at(buf, t):  # next-byte logits after position t - 1
        start = jnp.clip(t - window, 0, total - window)
        ids = jax.lax.dynamic_slice_in_dim(buf, start, window)[None]
        logits = model.apply(params, ids)[0].astype(jnp.float32)
        return jax.lax.dynamic_index_in_dim(logits, t - 1 - start, keepdims=False)

    def step(t, carry):
        buf, key = carry
        key, sub = jax.random.split(key)
        logits = logits_at(buf, t)
        if top_k > 0:
            kth = jax.lax.top_k(logits, top_k)[0][-1]
            logits = jnp.where(logits < kth, -jnp.inf, logits)
        if temperature <= 0:
            nxt = jnp.argmax(logits)
        else:
            nxt = jax.random.categorical(sub, logits / temperature)
        return buf.at[t].set(nxt.astype(jnp.int32)), key

    run = jax.jit(lambda buf, key: jax.lax.fori_loop(len(prompt), total, step, (buf, key))[0])
    out = np.asarray(run(buf, jax.random.key(seed)))
    return bytes(out[len(prompt):].astype(np.uint8).tolist())
