"""The band: sliding-window attention computed block by block, and its dilated form.

Pure functions on arrays; `attention.py` builds the full Longformer attention on them.
* A loop over query blocks of `block` rows, each slicing only the `block + left + right` keys its
    rows can see: work and memory O(n * (block + left + right)), no n x n array ever exists. The
    band is described by its two one-sided extents: a causal window is `right=0`.
* Two layouts of the blocks, chosen by the caller (`band_attention`'s `loop`): one block after
    another with a hand-written VJP (XLA:CPU), or every block at once, recomputed in the
    backward pass (GPUs and TPUs).
* Dilation d (`dilated_band_attention`, per head) is that same band run on the d interleaved
    subsequences i = r mod d, stacked on the batch axis: no new kernel, still O(n * w).

Shapes: B batch, N length, H heads, D head size, G extra (global) columns. `q` is already scaled.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.ad_checkpoint import checkpoint_name

from longformer import sequence_parallel as sp

_NEG = -1e30  # finite stand-in for -inf: keeps masked rows NaN-free in values and gradients


def default_block_size(left: int, right: int, length: int) -> int:
    """Query block size: about the one-sided window, clamped to [16, 128], never above the length.

    Smaller blocks waste fewer products on the band's corners (the keys a block gathers are
    block + left + right for (left + right + 1) useful ones); larger blocks make better matmuls.
    """
    block = max(left, right, 1)
    block = min(max(block, 16), 128)
    return max(1, min(block, length))


class Halo(NamedTuple):
    """The keys just outside a shard's rows (sequence parallelism): `before` rows that precede
    them and `after` rows that follow them, each (B, rows, ...), zeros past the document."""
    k: tuple[jax.Array, jax.Array]  # (B, before, H, D), (B, after, H, D)
    v: tuple[jax.Array, jax.Array]
    mask: tuple[jax.Array, jax.Array]  # (B, before), (B, after) bool
    segments: tuple[jax.Array, jax.Array] | None = None


def fetch_halo(k, v, key_mask, segments, before: int, after: int, axis: str) -> Halo:
    """The band's halo of rows from this shard's neighbours (`sequence_parallel.halo`)."""
    parts = (k, v, key_mask.astype(bool)) + (() if segments is None else (segments,))
    rows_before, rows_after = sp.halo(parts, before, after, axis)
    pairs = list(zip(rows_before, rows_after))
    return Halo(*pairs[:3], segments=pairs[3] if segments is not None else None)


class _Band(NamedTuple):
    """The band's operands laid out for the block loop: head-major, padded so that every block's
    window is in range. Built once per call and sliced per block."""
    q: jax.Array  # (B, H, nb * block, D)
    k_t: jax.Array  # (B, H, D, left + nb * block + right): scores are a plain matmul
    v: jax.Array  # (B, H, left + nb * block + right, D)
    extra_k_t: jax.Array | None  # (B, H, D, G)
    extra_v: jax.Array | None  # (B, H, G, D)
    keys_ok: jax.Array  # (B, left + nb * block + right) bool
    rows_ok: jax.Array  # (B, nb * block) bool
    extra_ok: jax.Array | None  # (B, 1, 1, G) bool
    # Packed rows: a query sees only keys (and extra columns) of its own segment.
    q_seg: jax.Array | None = None  # (B, nb * block) int
    k_seg: jax.Array | None = None  # (B, left + nb * block + right) int
    extra_seg: jax.Array | None = None  # (B, G) int


def _block(band: _Band, i, *, block: int, width: int, rate: float, rng):
    """Query block i: its queries, keys and values (the extra columns first, then the band), the
    float32 exponentials of its scores, 1 / their row sum (0 on padding rows) and the dropout
    keep masks (None without dropout)."""
    span = block + width - 1
    start = i * block
    q = lax.dynamic_slice_in_dim(band.q, start, block, axis=2)
    keys = [lax.dynamic_slice_in_dim(band.k_t, start, span, axis=3)]
    values = [lax.dynamic_slice_in_dim(band.v, start, span, axis=2)]
    offset = jnp.arange(span)[None, :] - jnp.arange(block)[:, None]  # key - query + left
    masks = [((offset >= 0) & (offset < width))[None, None]
             & lax.dynamic_slice_in_dim(band.keys_ok, start, span, axis=1)[:, None, None, :]]
    extra_ok = band.extra_ok
    if band.q_seg is not None:
        q_seg = lax.dynamic_slice_in_dim(band.q_seg, start, block, axis=1)[:, :, None]
        k_seg = lax.dynamic_slice_in_dim(band.k_seg, start, span, axis=1)[:, None, :]
        masks[0] = masks[0] & (q_seg == k_seg)[:, None]
        if extra_ok is not None:
            extra_ok = extra_ok & (q_seg == band.extra_seg[:, None, :])[:, None]
    if band.extra_k_t is not None:
        keys.insert(0, band.extra_k_t)
        values.insert(0, band.extra_v)
        masks.insert(0, extra_ok)
    scores = [jnp.where(m, jnp.einsum("bhcd,bhds->bhcs", q, k, preferred_element_type=jnp.float32),
                        _NEG) for k, m in zip(keys, masks)]
    # The peak's floor makes a row with no visible key give exp(-1e30 + 1e20) = 0 everywhere,
    # so masked entries need no second select.
    peak = functools.reduce(jnp.maximum, [jnp.max(s, axis=-1, keepdims=True) for s in scores])
    peak = lax.stop_gradient(jnp.maximum(peak, -1e20))
    expd = [jnp.exp(s - peak) for s in scores]
    total = functools.reduce(jnp.add, [jnp.sum(e, axis=-1, keepdims=True) for e in expd])
    row_ok = lax.dynamic_slice_in_dim(band.rows_ok, start, block, axis=1)[:, None, :, None]
    inv = jnp.where(row_ok, 1.0 / jnp.where(total > 0, total, 1.0), 0.0)
    keep = [None] * len(expd)
    if rate > 0.0 and rng is not None:
        rngs = jax.random.split(jax.random.fold_in(rng, i), len(expd))
        keep = [jax.random.bernoulli(r, 1.0 - rate, e.shape) for r, e in zip(rngs, expd)]
    return q, keys, values, expd, inv, keep


def _dropped(p, keep, rate):
    return p if keep is None else jnp.where(keep, p / (1.0 - rate), 0.0)


def _block_out(values, expd, inv, keep, rate, dtype):
    """Softmax(scores) @ values, normalised after the matmul (one scaling of (block, D) rows
    instead of (block, span) weights)."""
    out = functools.reduce(jnp.add, [
        jnp.einsum("bhcs,bhsd->bhcd", _dropped(e, k, rate).astype(dtype), v,
                   preferred_element_type=jnp.float32)
        for e, v, k in zip(expd, values, keep)])
    return (out * inv).astype(dtype)


def _from_blocks(x, length):
    """(nb, B, H, block, D) -> (B, length, H, D)."""
    nb, batch, heads, block, dim = x.shape
    return x.transpose(1, 0, 3, 2, 4).reshape(batch, nb * block, heads, dim)[:, :length]


def _to_blocks(x, block):
    """(B, N, H, D) -> (nb, B, H, block, D), zero rows past N."""
    batch, length, heads, dim = x.shape
    nb = -(-length // block)
    x = jnp.pad(x, ((0, 0), (0, nb * block - length), (0, 0), (0, 0)))
    return x.reshape(batch, nb, block, heads, dim).transpose(1, 0, 3, 2, 4)


def _varying(x):
    """x, marked as varying over the manual axes of the shard_map it is traced in (if any)."""
    manual = tuple(jax.sharding.get_abstract_mesh().manual_axes)
    return lax.pcast(x, manual, to="varying") if manual else x


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _band_loop(band: _Band, rng, block: int, width: int, rate: float, length: int):
    """out (B, length, H, D), one query block per loop step.

    Its VJP recomputes a block's scores instead of storing them (flash-attention style: memory
    O(n * d), never O(n * w) per layer) and runs every matmul with float32 results, which is
    both exact and the fast path for bfloat16 on CPU; it does one matmul fewer per block than
    differentiating a rematerialised forward.
    """
    return _band_loop_fwd(band, rng, block, width, rate, length)[0]


def _band_loop_fwd(band, rng, block, width, rate, length):
    def one(i):
        _, _, values, expd, inv, keep = _block(band, i, block=block, width=width, rate=rate,
                                               rng=rng)
        return _block_out(values, expd, inv, keep, rate, band.v.dtype)

    # The output is also the residual the backward pass needs (for sum_j p_j d p_j); named, so
    # that remat="minimal" keeps it rather than rerun the loop.
    out = checkpoint_name(_from_blocks(lax.map(one, jnp.arange(band.q.shape[2] // block)),
                                      length), "attention")
    return out, (band, rng, out)


def _band_loop_bwd(block, width, rate, length, res, d_out):
    band, rng, out = res
    out, d_out = _to_blocks(out, block), _to_blocks(d_out, block)
    span = block + width - 1
    dtype, f32 = band.v.dtype, jnp.float32

    def step(carry, xs):
        d_k_t, d_v_t, d_extra_k_t, d_extra_v_t = carry
        i, out_b, d_out_b = xs
        start = i * block
        q, keys, values, expd, inv, keep = _block(band, i, block=block, width=width, rate=rate,
                                                  rng=rng)
        d_out_b = d_out_b.astype(dtype)
        # The key and value gradients sum over the block's queries; with those queries on the
        # small operands' last axis (q and d_out transposed, one block each) the products are
        # plain matmuls, which XLA:CPU hands to its fast library (a contraction over both
        # operands' rows it runs in its own, slower, loops).
        q_t, d_out_t = jnp.swapaxes(q, -1, -2), jnp.swapaxes(d_out_b, -1, -2)
        # d score = p * (d p - sum_j p_j d p_j), and that sum is d_out . out (dropout included).
        delta = jnp.sum(d_out_b.astype(f32) * out_b.astype(f32), axis=-1, keepdims=True)
        d_q, d_keys, d_values = 0.0, [], []
        for k, v, e, kp in zip(keys, values, expd, keep):
            p = e * inv
            d_values.append(jnp.einsum("bhdc,bhcs->bhds", d_out_t,
                                       _dropped(p, kp, rate).astype(dtype),
                                       preferred_element_type=f32))
            d_p = _dropped(jnp.einsum("bhcd,bhsd->bhcs", d_out_b, v, preferred_element_type=f32),
                           kp, rate)
            d_s = (p * (d_p - delta)).astype(dtype)
            d_q = d_q + jnp.einsum("bhcs,bhds->bhcd", d_s, k, preferred_element_type=f32)
            d_keys.append(jnp.einsum("bhdc,bhcs->bhds", q_t, d_s, preferred_element_type=f32))
        if band.extra_k_t is not None:
            d_extra_k_t = d_extra_k_t + d_keys.pop(0)
            d_extra_v_t = d_extra_v_t + d_values.pop(0)
        window_k = lax.dynamic_slice_in_dim(d_k_t, start, span, axis=3)
        window_v = lax.dynamic_slice_in_dim(d_v_t, start, span, axis=3)
        d_k_t = lax.dynamic_update_slice_in_dim(d_k_t, window_k + d_keys[0], start, axis=3)
        d_v_t = lax.dynamic_update_slice_in_dim(d_v_t, window_v + d_values[0], start, axis=3)
        return (d_k_t, d_v_t, d_extra_k_t, d_extra_v_t), d_q

    # Inside a sequence-parallel shard_map the gradients vary over its axis as the queries do, even
    # those of operands every shard shares (the extra columns): the carry must say so.
    zeros = lambda x: None if x is None else _varying(jnp.zeros(x.shape, f32))  # noqa: E731
    swap = lambda x: None if x is None else jnp.swapaxes(x, -1, -2)  # noqa: E731
    init = (zeros(band.k_t), zeros(swap(band.v)), zeros(band.extra_k_t), zeros(swap(band.extra_v)))
    num_blocks = band.q.shape[2] // block
    (d_k_t, d_v_t, d_extra_k_t, d_extra_v_t), d_q = lax.scan(
        step, init, (jnp.arange(num_blocks), out, d_out))
    d_v, d_extra_v = swap(d_v_t), swap(d_extra_v_t)
    d_q = jnp.moveaxis(d_q, 0, 2).reshape(band.q.shape)
    cast = lambda d, x: None if x is None else d.astype(x.dtype)  # noqa: E731
    d_band = _Band(cast(d_q, band.q), cast(d_k_t, band.k_t), cast(d_v, band.v),
                   cast(d_extra_k_t, band.extra_k_t), cast(d_extra_v, band.extra_v),
                   None, None, None, None, None, None)
    return d_band, None


_band_loop.defvjp(_band_loop_fwd, _band_loop_bwd)


@functools.partial(jax.checkpoint, static_argnums=(2, 3, 4, 5),
                   policy=jax.checkpoint_policies.nothing_saveable)
def _band_batched(band: _Band, rng, block: int, width: int, rate: float, length: int):
    """out (B, length, H, D), every query block at once. Checkpointed with nothing saveable: its
    backward pass keeps only the operands and recomputes the scores (never every block's
    scores of every layer at once)."""
    def one(i):
        _, _, values, expd, inv, keep = _block(band, i, block=block, width=width, rate=rate,
                                               rng=rng)
        return _block_out(values, expd, inv, keep, rate, band.v.dtype)

    return _from_blocks(jax.vmap(one)(jnp.arange(band.q.shape[2] // block)), length)


def _pad_rows(x, before: int, after: int):
    """Zero (False) rows before and after axis 1's."""
    return jnp.pad(x, [(0, 0), (before, after)] + [(0, 0)] * (x.ndim - 2))


def band_attention(
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        key_mask: jax.Array,
        *,
        left: int,
        right: int,
        query_mask: jax.Array | None = None,
        extra_k: jax.Array | None = None,
        extra_v: jax.Array | None = None,
        extra_mask: jax.Array | None = None,
        segments: jax.Array | None = None,
        extra_segments: jax.Array | None = None,
        block: int | None = None,
        dropout_rate: float = 0.0,
        dropout_rng: jax.Array | None = None,
        return_probs: bool = False,
        loop: bool = False,
        halo: Halo | None = None,
):
    """Sliding-window attention: query i sees keys i-left .. i+right where key_mask holds.

    Query blocks: block i slices the `block + left + right` keys its rows can see and runs scores,
    masked float32 softmax and values on them, in one of two layouts (`loop`):
    * the loop (XLA:CPU's): one block after another, so a block's scores (heads x block x span
      floats, a few MB) stay in cache from the score matmul through the softmax to the value
      matmul, where one batched computation writes and rereads every score through main memory
      (about 3x slower on CPU; bench/README.md); a hand-written VJP recomputes each block;
    * batched (GPUs and TPUs, where a loop of small steps would leave the device idle): every
      block at once, under `jax.checkpoint`, so that the backward pass recomputes the scores
      instead of keeping them (train-step memory linear in length, like the loop's) and autodiff
      differentiates the recomputation.
    Both name their output "attention" for `remat="minimal"`, and give the same results
    (`tests/test_attention_blocks.py`).

    Args:
        q, k, v: (B, N, H, D); q already scaled.
        key_mask: (B, N) bool, the keys that may appear in a band.
        left, right: one-sided extents of the window (right=0 is causal).
        query_mask: (B, N) bool; rows where it is False come out zero (padding rows).
        extra_k, extra_v: (B, G, H, D) keys every query also sees (the global tokens' local
            projections), with extra_mask (B, G) bool. They share the band's softmax.
        segments: (B, N) int, for packed rows: query i sees only keys j (and extra columns g)
            with segments[j] == segments[i] (extra_segments[g] == segments[i]); None: one
            segment per row, and no comparison is made.
        block: query block size (None: `default_block_size`).
        return_probs: also return the weights as (B, H, N, G + left + right + 1): the extra columns
            first, then the band, the query itself at column G + left.
        loop: the CPU layout (True) or the batched one (False); the caller chooses
            (`LongformerConfig.band_impl`), nothing here looks at the platform.
        halo: the `left` keys before the rows and the `right` keys after them (a shard of a
            document split over devices); None: nothing is visible past the ends.

    Returns:
        out (B, N, H, D) in v's dtype, and the weights when asked.
    """
    batch, length, heads, dim = q.shape
    block = block or default_block_size(left, right, length)
    width = left + right + 1
    num_blocks = -(-length // block)
    padded = num_blocks * block
    tail = padded - length

    def keys(x, around):  # (B, N, ...) -> (B, left + N + right + tail, ...): the keys' rows
        if around is None:
            return _pad_rows(x, left, tail + right)
        if around[0].shape[1] != left or around[1].shape[1] != right:
            raise ValueError(f"a halo of {around[0].shape[1]} + {around[1].shape[1]} rows for a "
                             f"band of {left} + {right}")
        return _pad_rows(jnp.concatenate([around[0], x, around[1]], axis=1), 0, tail)

    def head_major(x):  # (B, rows, H, D) -> (B, H, rows, D)
        return x.transpose(0, 2, 1, 3)

    use_extra = extra_k is not None
    band = _Band(
        q=head_major(_pad_rows(q, 0, tail)),
        k_t=head_major(keys(k, halo and halo.k)).swapaxes(2, 3),
        v=head_major(keys(v, halo and halo.v)),
        # Inside a sequence-parallel shard_map these come typed varying over its axis
        # (`sequence_parallel.gather_rows`): each shard's gradient of them is its own.
        extra_k_t=extra_k.transpose(0, 2, 3, 1) if use_extra else None,
        extra_v=extra_v.transpose(0, 2, 1, 3) if use_extra else None,
        keys_ok=keys(key_mask.astype(bool), halo and halo.mask),
        rows_ok=_pad_rows(jnp.ones((batch, length), bool) if query_mask is None
                          else query_mask.astype(bool), 0, tail),
        extra_ok=extra_mask.astype(bool)[:, None, None, :] if use_extra else None)
    if segments is not None:
        band = band._replace(
            q_seg=_pad_rows(segments.astype(jnp.int32), 0, tail),
            k_seg=keys(segments.astype(jnp.int32), halo and halo.segments),
            extra_seg=extra_segments.astype(jnp.int32) if use_extra else None)
    rate = float(dropout_rate) if dropout_rng is not None else 0.0

    if not return_probs:
        if loop:
            return _band_loop(band, dropout_rng if rate > 0.0 else None, block, width, rate,
                              length)
        return checkpoint_name(_band_batched(band, dropout_rng if rate > 0.0 else None, block,
                                             width, rate, length), "attention")

    def one(i):
        _, _, values, expd, inv, keep = _block(band, i, block=block, width=width, rate=rate,
                                               rng=dropout_rng)
        out = _block_out(values, expd, inv, keep, rate, v.dtype)
        if not return_probs:
            return out
        # Band column t of row r is key r + t of the block's span.
        take = jnp.arange(block)[:, None] + jnp.arange(width)[None, :]
        weights = [e * inv for e in expd]
        weights[-1] = jnp.take_along_axis(weights[-1], take[None, None], axis=-1)
        return out, jnp.concatenate(weights, axis=-1)

    blocks = jnp.arange(num_blocks)
    result = lax.map(one, blocks) if loop else jax.vmap(one)(blocks)
    if not return_probs:
        return _from_blocks(result, length)
    out, weights = result
    weights = weights.transpose(1, 2, 0, 3, 4).reshape(batch, heads, padded, -1)
    return _from_blocks(out, length), weights[:, :, :length]


# ----------------------------------------------------------------------------- dilation
def layer_dilation(dilation, heads: int) -> tuple[int, ...]:
    """An int or one int per head -> one positive int per head."""
    per_head = (int(dilation),) * heads if isinstance(dilation, int) else tuple(map(int, dilation))
    if len(per_head) != heads or min(per_head) < 1:
        raise ValueError(f"dilation {dilation!r}: give a positive int or one per head ({heads})")
    return per_head


def _interleave(x: jax.Array, dilation: int) -> jax.Array:
    """(B, N, ...) -> (B * d, ceil(N / d), ...): row b * d + r holds positions r, r + d, r + 2d...

    The tail is padded with zeros (False for masks), so padded keys are never visible.
    """
    batch, length = x.shape[:2]
    sub = -(-length // dilation)
    x = jnp.pad(x, [(0, 0), (0, sub * dilation - length)] + [(0, 0)] * (x.ndim - 2))
    x = jnp.swapaxes(x.reshape((batch, sub, dilation) + x.shape[2:]), 1, 2)
    return x.reshape((batch * dilation, sub) + x.shape[3:])


def _deinterleave(x: jax.Array, dilation: int, length: int, axis: int = 1) -> jax.Array:
    """The inverse of `_interleave` for an array whose position axis is `axis` (1 or 2)."""
    x = x.reshape((x.shape[0] // dilation, dilation) + x.shape[1:])  # (B, d, ..., sub, ...)
    x = jnp.moveaxis(x, 1, axis + 1)  # (B, ..., sub, d, ...)
    shape = x.shape[:axis] + (x.shape[axis] * dilation,) + x.shape[axis + 2:]
    return lax.slice_in_dim(x.reshape(shape), 0, length, axis=axis)


def _take_heads(x: jax.Array | None, heads: list[int]) -> jax.Array | None:
    if x is None:
        return None
    if heads == list(range(heads[0], heads[-1] + 1)):
        return x[:, :, heads[0]:heads[-1] + 1]  # a contiguous run: a slice, not a gather
    return x[:, :, np.asarray(heads)]


def _dilated_band_one(q, k, v, key_mask, *, left, right, dilation, query_mask, extra_k, extra_v,
                      extra_mask, segments, extra_segments, block, dropout_rate, dropout_rng,
                      return_probs, loop, axis):
    """`dilated_band_attention` with one dilation for every head given."""
    length = q.shape[1]
    halo = None
    if axis is not None:  # one shard of the document: the keys around it come from its neighbours
        if length % dilation:
            raise ValueError(f"a shard of {length} rows cannot hold whole residues of dilation "
                             f"{dilation}: make the padded length per shard a multiple of it")
        halo = fetch_halo(k, v, key_mask, segments, left * dilation, right * dilation, axis)
    if dilation == 1:
        return band_attention(q, k, v, key_mask, left=left, right=right, query_mask=query_mask,
                              extra_k=extra_k, extra_v=extra_v, extra_mask=extra_mask,
                              segments=segments, extra_segments=extra_segments, block=block,
                              dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                              return_probs=return_probs, loop=loop, halo=halo)

    def per_example(x):  # the extra (global) keys are shared by an example's d subsequences
        return None if x is None else jnp.repeat(x, dilation, axis=0)

    # A subsequence is d times shorter: keys past its ends do not exist, so the band is clipped
    # to it (the same band, without the cost of a window d times too long). A shard's
    # subsequence continues into its halo, which holds whole residues: it is interleaved alike.
    longest = -(-length // dilation) - 1
    sub_left, sub_right = (left, right) if halo else (min(left, longest), min(right, longest))
    if halo:
        halo = Halo(*(None if pair is None else tuple(_interleave(x, dilation) for x in pair)
                      for pair in halo))
    result = band_attention(
        _interleave(q, dilation), _interleave(k, dilation), _interleave(v, dilation),
        _interleave(key_mask.astype(bool), dilation), left=sub_left, right=sub_right,
        query_mask=None if query_mask is None else _interleave(query_mask.astype(bool), dilation),
        extra_k=per_example(extra_k), extra_v=per_example(extra_v),
        extra_mask=per_example(extra_mask),
        segments=None if segments is None else _interleave(segments, dilation),
        extra_segments=per_example(extra_segments), block=block, dropout_rate=dropout_rate,
        dropout_rng=dropout_rng, return_probs=return_probs, loop=loop, halo=halo)
    if not return_probs:
        return _deinterleave(result, dilation, length)
    out, probs = result
    extra = 0 if extra_k is None else extra_k.shape[1]  # band columns back to the full window
    probs = jnp.concatenate([probs[..., :extra], jnp.pad(
        probs[..., extra:], ((0, 0),) * 3 + ((left - sub_left, right - sub_right),))], axis=-1)
    return _deinterleave(out, dilation, length), _deinterleave(probs, dilation, length, axis=2)


def dilated_band_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_mask: jax.Array,
    *,
    left: int,
    right: int,
    dilation: int | tuple[int, ...] = 1,
    query_mask: jax.Array | None = None,
    extra_k: jax.Array | None = None,
    extra_v: jax.Array | None = None,
    extra_mask: jax.Array | None = None,
    segments: jax.Array | None = None,
    extra_segments: jax.Array | None = None,
    block: int | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    return_probs: bool = False,
    loop: bool = False,
    axis: str | None = None,
):
    """`band_attention` with dilation d: query i sees keys i - left*d, ..., i - d, i, i + d, ...
    up to i + right*d (and the extra columns, as before).

    Why no new kernel: every key a query sees shares its residue mod d, so a dilated band is the
    ordinary band run on each of the d interleaved subsequences (positions r, r + d, r + 2d, ...),
    stacked on the batch axis. Cost stays O(N * (left + right)), nothing is N x N, and gradients
    are exact because the same op computes them. `dilation` is an int or one per head; heads are
    grouped by value and each group is one call; undilated heads take `band_attention` unchanged.

    Same arguments and results as `band_attention`; with `return_probs` band column t holds the
    weight of offset (t - left) * d. With `axis` (inside `shard_map`, the rows one shard's of a
    document split over the devices) each head group fetches its halo of `left * d` rows before
    and `right * d` after from the neighbouring shards (`fetch_halo`): nothing else travels.
    """
    heads = q.shape[2]
    per_head = layer_dilation(dilation, heads)
    kwargs = dict(left=left, right=right, query_mask=query_mask, extra_mask=extra_mask,
                  segments=segments, extra_segments=extra_segments, block=block,
                  dropout_rate=dropout_rate, return_probs=return_probs, loop=loop, axis=axis)
    groups = sorted(set(per_head))
    if len(groups) == 1:
        return _dilated_band_one(q, k, v, key_mask, dilation=groups[0], extra_k=extra_k,
                                 extra_v=extra_v, dropout_rng=dropout_rng, **kwargs)

    rngs = (jax.random.split(dropout_rng, len(groups)) if dropout_rng is not None
            else [None] * len(groups))
    order, outs, probs = [], [], []
    for d, rng in zip(groups, rngs):
        idx = [h for h in range(heads) if per_head[h] == d]
        order += idx
        result = _dilated_band_one(
            _take_heads(q, idx), _take_heads(k, idx), _take_heads(v, idx), key_mask, dilation=d,
            extra_k=_take_heads(extra_k, idx), extra_v=_take_heads(extra_v, idx),
            dropout_rng=rng, **kwargs)
        out, p = result if return_probs else (result, None)
        outs.append(out)
        probs.append(p)
    inverse = np.argsort(order)
    out = jnp.concatenate(outs, axis=2)[:, :, inverse]
    if not return_probs:
        return out
    return out, jnp.concatenate(probs, axis=1)[:, inverse]
