"""Longformer attention as pure functions on arrays (no parameters, no modules).

Why it is shaped like this:
* The band (sliding window, optionally dilated) is `band.py`'s: computed block by block, never
    an n x n array.
* Global tokens are gathered into a static budget of `G` slots per example (`global_token_indices`)
    so shapes never depend on data: local rows see them as `G` extra key columns of the band, and
    the global rows are recomputed over all keys (O(n * G)) and scattered back.
* Softmax runs in float32 over the global columns and the band together; a row with no visible key
    gives zeros, never NaN, and so do padding rows (as the reference does).

Shapes: B batch, N length, H heads, D head size, G global budget. `q` is already scaled.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from longformer import sequence_parallel as sp
from longformer.band import (  # noqa: F401
    _NEG,
    band_attention,
    default_block_size,
    dilated_band_attention,
    layer_dilation,
)


class GlobalIndices(NamedTuple):
    """Where the global tokens of each example sit, padded to a static budget."""
    index: jax.Array  # (B, G) int32 positions, ascending; unused slots hold 0
    valid: jax.Array  # (B, G) bool, slot is used
    count: jax.Array  # (B,) int32 number of global tokens asked for (may exceed G)

    @property
    def overflow(self) -> jax.Array:
        """(B,) bool: more global tokens were asked for than the budget holds."""
        return self.count > self.index.shape[1]


def global_token_indices(is_global: jax.Array, budget: int, axis: str | None = None
                         ) -> GlobalIndices:
    """Packs the positions of global tokens into `budget` slots, in order of position.

    Tokens past the budget are left out of the slots; `overflow` reports it and callers treat those
    tokens as local, so no result is silently inconsistent. With `axis` (inside `shard_map`,
    is_global one shard's rows) the slots hold document positions, the same on every shard.
    """
    batch, length = is_global.shape
    is_global = is_global.astype(bool)
    rank = jnp.cumsum(is_global, axis=1, dtype=jnp.int32) - 1
    count = jnp.sum(is_global, axis=1, dtype=jnp.int32)
    positions = jnp.arange(length, dtype=jnp.int32)
    if axis is not None:  # ranks and positions continue those of the shards before
        rank = rank + sp.exclusive_prefix(count, axis)[:, None]
        positions = positions + sp.start(length, axis)
    slot = jnp.where(is_global & (rank < budget), rank, budget)  # `budget` is out of range: dropped
    index = jnp.zeros((batch, budget), jnp.int32).at[jnp.arange(batch)[:, None], slot].set(
        jnp.broadcast_to(positions, (batch, length)), mode="drop")
    if axis is not None:  # each slot was set by one shard only
        index, count = lax.psum(index, axis), lax.psum(count, axis)
    valid = jnp.arange(budget)[None, :] < jnp.minimum(count, budget)[:, None]
    return GlobalIndices(index, valid, count)


def gather_rows(x: jax.Array, index: jax.Array, axis: str | None = None) -> jax.Array:
    """x (B, N, ...) at positions index (B, G) -> (B, G, ...); with `axis`, x is one shard's
    rows and index holds document positions (`sequence_parallel.gather_rows`)."""
    if axis is not None:
        return sp.gather_rows(x, index, axis)
    return jax.vmap(lambda xb, ib: jnp.take(xb, ib, axis=0))(x, index)


def scatter_rows(x: jax.Array, index: jax.Array, valid: jax.Array, rows: jax.Array,
                 axis: str | None = None) -> jax.Array:
    """Replaces x (B, N, ...) at the valid positions of index (B, G) by rows (B, G, ...); with
    `axis`, only those of the positions that this shard holds."""
    length = x.shape[1]
    index = (jnp.where(valid, index, length) if axis is None  # out of range: dropped
             else sp.local_index(index, valid, length, axis))
    return jax.vmap(lambda xb, ib, rb: xb.at[ib].set(rb.astype(xb.dtype), mode="drop"))(
        x, index, rows)


def _dropout(probs: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    if rng is None or rate == 0.0:
        return probs
    keep = jax.random.bernoulli(rng, 1.0 - rate, probs.shape)
    return jnp.where(keep, probs / (1.0 - rate), 0.0).astype(probs.dtype)


def _masked_softmax(scores: list[jax.Array], valid: list[jax.Array], axis: str | None = None
                    ) -> list[jax.Array]:
    """One float32 softmax over several score blocks sharing their leading axes (last axis split).

    Rows where nothing is valid come out as zeros. With `axis` the last axis is split over the
    shards too: the peaks and sums are merged across them (log-sum-exp).
    """
    scores = [jnp.where(m, s.astype(jnp.float32), _NEG) for s, m in zip(scores, valid)]
    peak = functools.reduce(jnp.maximum, [jnp.max(s, axis=-1, keepdims=True) for s in scores])
    peak = lax.stop_gradient(peak)
    if axis is not None:
        peak = lax.pmax(peak, axis)
    expd = [jnp.where(m, jnp.exp(s - peak), 0.0) for s, m in zip(scores, valid)]
    total = functools.reduce(jnp.add, [jnp.sum(e, axis=-1, keepdims=True) for e in expd])
    if axis is not None:
        total = lax.psum(total, axis)
    inv = 1.0 / jnp.where(total > 0, total, 1.0)
    return [e * inv for e in expd]


class GlobalProjection(NamedTuple):
    """`key_global` / `value_global` of every token, left unprojected: the input and the weights.

    The global rows need only q_g . K_g^T and P . V_g, and both factor through the input:
    q_g . (x W_k + b_k)^T = (q_g W_k^T) . x^T + q_g . b_k, and P (x W_v + b_v) = (P x) W_v +
    (sum P) b_v. That costs O(N * E * H * G) instead of projecting every token, O(N * E * E): for
    a few global tokens (G < head size) about 1% of the work, for the same result up to rounding.
    """
    x: jax.Array  # (B, N, E) the layer's input
    key_kernel: jax.Array  # (E, H, D)
    key_bias: jax.Array  # (H, D)
    value_kernel: jax.Array  # (E, H, D)
    value_bias: jax.Array  # (H, D)

    def projected(self) -> tuple[jax.Array, jax.Array]:
        """`key_global`, `value_global` (B, N, H, D) of every token: what G slots at or above the
        head size cost less with (float32 accumulation, the input's dtype)."""
        def one(kernel, bias):
            y = jnp.einsum("bne,ehd->bnhd", self.x, kernel.astype(self.x.dtype),
                           preferred_element_type=jnp.float32)
            return (y + bias.astype(jnp.float32)).astype(self.x.dtype)
        return one(self.key_kernel, self.key_bias), one(self.value_kernel, self.value_bias)


def budget_buckets(budget: int, ratio: int) -> tuple[int, ...]:
    """The budgets a call's global path may run with, ascending: budget, budget / ratio, ...,
    down to 1 (rounded up); `(budget,)` for a ratio of 1."""
    buckets = [budget]
    while ratio > 1 and buckets[-1] > 1:
        buckets.append(-(-buckets[-1] // ratio))
    return tuple(sorted(set(buckets)))


def global_attention(
        q_global: jax.Array,
        k: jax.Array | GlobalProjection,
        v: jax.Array | None,
        key_mask: jax.Array,
        *,
        dropout_rate: float = 0.0,
        dropout_rng: jax.Array | None = None,
        upcast: bool = False,
        axis: str | None = None,
):
    """The global tokens' own rows: q_global (B, G, H, D) against every key where key_mask holds.

    key_mask: (B, N) bool, or (B, G, N) for a mask of its own per global token (packed rows:
        the keys of its segment).
    k, v: (B, N, H, D) projected keys and values, or k a `GlobalProjection` (and v None).
    upcast: run the factored matmuls in float32 (for XLA:CPU, which has no low-precision kernel
        with float32 results for some of their layouts); otherwise they run in the input's
        dtype with float32 results.
    axis: inside `shard_map`, the keys are one shard's: each shard's part of a row (its softmax
        statistics and weighted values) is merged with the others' (log-sum-exp), so the rows
        are the whole document's; the weights returned are this shard's columns.
    Returns out (B, G, H, D) and the weights (B, H, G, N). O(N * G).
    """
    def total(out):  # float32 (B, G, H, D); typed varying, as the rows it is scattered into
        return out if axis is None else sp.varying_over(lax.psum(out, axis), axis)

    key_mask = key_mask.astype(bool)
    mask = [key_mask[:, None, None, :] if key_mask.ndim == 2 else key_mask[:, None]]
    if isinstance(k, GlobalProjection) and q_global.shape[1] >= k.key_kernel.shape[-1]:
        k, v = k.projected()  # factoring through the input no longer saves work
    if not isinstance(k, GlobalProjection):
        scores = jnp.einsum("bghd,bnhd->bhgn", q_global, k, preferred_element_type=jnp.float32)
        (probs,) = _masked_softmax([scores], mask, axis)
        dropped = _dropout(probs, dropout_rate, dropout_rng)
        out = jnp.einsum("bhgn,bnhd->bghd", dropped.astype(v.dtype), v,
                         preferred_element_type=jnp.float32)
        return total(out).astype(v.dtype), probs

    # These matmuls are O(N * E * H * G): small, whatever their precision.
    dtype, f32 = k.x.dtype, jnp.float32
    cdt = f32 if upcast else dtype
    x, key_kernel, value_kernel = (a.astype(cdt) for a in (k.x, k.key_kernel, k.value_kernel))
    q_global = q_global.astype(cdt)

    def mm(spec, a, b):
        return jnp.einsum(spec, a.astype(cdt), b, preferred_element_type=f32)

    q_in = mm("bghd,ehd->bghe", q_global, key_kernel)  # the query mapped to the input
    q_bias = mm("bghd,hd->bhg", q_global, k.key_bias.astype(cdt))
    scores = mm("bghe,bne->bhgn", q_in, x) + q_bias[..., None]
    (probs,) = _masked_softmax([scores], mask, axis)
    dropped = _dropout(probs, dropout_rate, dropout_rng)
    pooled = mm("bhgn,bne->bghe", dropped, x)
    out = mm("bghe,ehd->bghd", pooled, value_kernel)
    out = out + jnp.sum(dropped, axis=-1).transpose(0, 2, 1)[..., None] * k.value_bias.astype(f32)
    return total(out).astype(dtype), probs


def longformer_attention(
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        attention_mask: jax.Array,
        *,
        left: int,
        right: int,
        dilation: int | tuple[int, ...] = 1,
        globals_: GlobalIndices | None = None,
        q_global: jax.Array | None = None,
        k_global: jax.Array | None = None,
        v_global: jax.Array | None = None,
        block: int | None = None,
        dropout_rate: float = 0.0,
        dropout_rng: jax.Array | None = None,
        return_probs: bool = False,
        loop: bool = False,
        upcast_global: bool = False,
        segment_ids: jax.Array | None = None,
        axis: str | None = None,
        budgets: tuple[int, ...] = (),
):
    """The reference's full self-attention: band + global columns, global rows recomputed.

    Args:
        q, k, v: (B, N, H, D) local projections (q scaled).
        attention_mask: (B, N) bool, True for real (non-padding) tokens.
        dilation: of the band, an int or one per head (`dilated_band_attention`); global columns
            and rows are not dilated.
        globals_: slots of the global tokens (None or a zero budget: local attention only).
        q_global: (B, G, H, D) `query_global` of the global tokens (scaled);
        k_global, v_global: (B, N, H, D) `key_global` / `value_global` of every token, or
            k_global a `GlobalProjection` and v_global None.
        loop: the band's layout (`band_attention`); upcast_global: `global_attention`'s upcast.
        segment_ids: (B, N) int for packed rows: attention stays within a segment, in the band
            and through global tokens (a global token sees, and is seen by, its own segment);
            None: each row is one sequence.
        axis: run inside `jax.shard_map` on one shard's rows of the document (`N` is then the
            shard's length; `globals_` holds document positions, the same on every shard): the
            band takes its halo from the neighbours, the global tokens' rows are gathered from
            the shards that hold them and their own rows merged over every shard's keys
            (`sequence_parallel.py`). The result is this shard's rows of one device's.
        budgets: the budgets (ascending, `budget_buckets`) the global rows may run with: the
            smallest that holds the batch's global tokens runs (`lax.switch`, one branch each),
            so unused slots cost nothing there; the band's global columns are cheap (unused
            ones are masked). Results are the same; with return_probs the whole budget runs.

    Returns out (B, N, H, D); with return_probs (out, local weights (B, H, N, G + left + right + 1)
    with global rows zeroed, global weights (B, H, N, G) or None without global tokens).
    """
    attention_mask = attention_mask.astype(bool)
    use_global = globals_ is not None and globals_.index.shape[1] > 0
    if dropout_rng is not None and axis is not None:  # each shard draws its own masks
        dropout_rng = jax.random.fold_in(dropout_rng, lax.axis_index(axis))
    rngs = (jax.random.split(dropout_rng) if dropout_rng is not None else (None, None))
    if not use_global:
        result = dilated_band_attention(q, k, v, attention_mask, left=left, right=right,
                                        dilation=dilation, query_mask=attention_mask,
                                        segments=segment_ids, block=block,
                                        dropout_rate=dropout_rate, dropout_rng=rngs[0],
                                        return_probs=return_probs, loop=loop, axis=axis)
        return (*result, None) if return_probs else result

    # A padding token is never global, whatever the slots say.
    valid = globals_.valid & gather_rows(attention_mask, globals_.index, axis)
    globals_ = globals_._replace(valid=valid)
    # Global tokens leave the band (they come back as the extra columns, counted once).
    is_global = scatter_rows(jnp.zeros(attention_mask.shape, bool), globals_.index, valid,
                             jnp.ones(globals_.index.shape, bool), axis)
    global_segments = (None if segment_ids is None
                       else gather_rows(segment_ids.astype(jnp.int32), globals_.index, axis))
    result = dilated_band_attention(
            q, k, v, attention_mask & ~is_global, left=left, right=right, dilation=dilation,
            query_mask=attention_mask, extra_k=gather_rows(k, globals_.index, axis),
            extra_v=gather_rows(v, globals_.index, axis), extra_mask=globals_.valid,
            segments=segment_ids, extra_segments=global_segments, block=block,
            dropout_rate=dropout_rate, dropout_rng=rngs[0], return_probs=return_probs, loop=loop,
            axis=axis)
    out, local_probs = result if return_probs else (result, None)

    g_out, g_probs = _global_rows(
        () if return_probs else budgets, globals_.count, q_global, k_global, v_global,
        _global_row_keys(attention_mask, segment_ids, global_segments),
        dropout_rate=dropout_rate, dropout_rng=rngs[1], upcast=upcast_global, axis=axis)
    out = scatter_rows(out, globals_.index, globals_.valid, g_out, axis)
    if not return_probs:
        return out
    local_probs = jnp.where(is_global[:, None, :, None], 0.0, local_probs)
    g_probs = jnp.where(globals_.valid[:, None, :, None], g_probs, 0.0)
    return out, local_probs, g_probs.transpose(0, 1, 3, 2)


def budget_branch(count: jax.Array, budgets: tuple[int, ...]) -> jax.Array:
    """The index of the smallest of `budgets` that holds the largest of count (B,) (the largest
    budget when none does: the tokens past it are local)."""
    used = jnp.minimum(jnp.max(count), budgets[-1])
    return jnp.sum(jnp.asarray(budgets, jnp.int32) < used)  # no loop (searchsorted's is one)


def _global_rows(budgets, count, q_global, k, v, key_mask, *, dropout_rng, **options):
    """`global_attention` of the first b slots, b the smallest of `budgets` (ascending to the
    slots' budget) holding every example's global tokens, one `lax.switch` branch each: the
    slots past the count are unused (`global_token_indices` fills them in order), so their rows
    (zeros here) are never scattered back. Returns out (B, G, H, D) and the weights (None when
    a smaller budget may run)."""
    if len(budgets) <= 1:
        return global_attention(q_global, k, v, key_mask, dropout_rng=dropout_rng, **options)
    budget = q_global.shape[1]
    if budgets[-1] != budget or list(budgets) != sorted(set(budgets)):
        raise ValueError(f"budgets {budgets} must ascend to the slots' budget {budget}")

    def within(b):  # recomputed in the backward pass: a cond keeps every branch's residuals
        @jax.checkpoint
        def run(q_global, k, v, key_mask, dropout_rng):
            out, _ = global_attention(q_global[:, :b], k, v,
                                      key_mask if key_mask.ndim == 2 else key_mask[:, :b],
                                      dropout_rng=dropout_rng, **options)
            return jnp.pad(out, ((0, 0), (0, budget - b), (0, 0), (0, 0)))
        return run

    branch = budget_branch(count, budgets)  # the same on every shard with `axis`
    return lax.switch(branch, [within(b) for b in budgets], q_global, k, v, key_mask,
                      dropout_rng), None


def sharded_longformer_attention(q, k, v, attention_mask, *, globals_=None, q_global=None,
                                 k_global=None, v_global=None, dropout_rng=None,
                                 return_probs=False, segment_ids=None, **options):
    """`longformer_attention` on whole arrays, each shard of the mesh's `sequence` axis computing
    its own rows (`axis`): the arrays with positions are split along them, the global tokens'
    slots and projections handed whole to every shard. Same arguments and results."""
    if segment_ids is not None:
        raise ValueError("packed rows (segment_ids) are not split over the `sequence` axis")
    rows, whole = sp.along(1), sp.P()
    args = dict(q=(q, rows), k=(k, rows), v=(v, rows), attention_mask=(attention_mask, rows),
                globals_=(globals_, whole), q_global=(q_global, whole),
                k_global=(k_global, GlobalProjection(rows, whole, whole, whole, whole)
                          if isinstance(k_global, GlobalProjection) else rows),
                v_global=(v_global, rows), dropout_rng=(dropout_rng, whole))
    names = [name for name, (x, _) in args.items() if x is not None]
    given, specs = [args[n][0] for n in names], [args[n][1] for n in names]

    # The whole (replicated) float arrays' gradients are summed over the shards: in float32 (they
    # are small: G rows and the global projections), as XLA:CPU fails to compile bfloat16
    # all-reduces. So they enter widened and are typed varying before they are narrowed again.
    def whole_floats(fn):
        def per_arg(spec, x):  # spec: a prefix of x's tree
            touch = lambda a: fn(a) if jnp.issubdtype(a.dtype, jnp.floating) else a  # noqa: E731
            return jax.tree.map(touch, x) if spec == whole else x
        return lambda xs: jax.tree.map(per_arg, specs, list(xs),
                                       is_leaf=lambda t: isinstance(t, P))

    widen = whole_floats(lambda a: a.astype(sp.widened(a.dtype)))
    wide = widen(given)
    narrow_to = jax.tree.map(lambda w, a: a.dtype, wide, given)

    def local(*xs):
        xs = whole_floats(lambda a: sp.varying_over(a, sp.AXIS))(xs)
        xs = jax.tree.map(lambda a, dtype: a.astype(dtype) if a.dtype != dtype else a, xs,
                          narrow_to)
        result = longformer_attention(**dict(zip(names, xs)), return_probs=return_probs,
                                      axis=sp.AXIS, **options)
        if return_probs and result[2] is None:  # a shard_map's outputs are arrays
            result = (*result[:2], jnp.zeros((0,), q.dtype))
        return result

    weights = sp.along(2)  # (B, H, N, ...)
    use_global = globals_ is not None and globals_.index.shape[1] > 0
    out_specs = (rows, weights, weights if use_global else whole) if return_probs else rows
    result = sp.over_sequence(local, tuple(specs), out_specs)(*wide)
    if return_probs and not use_global:
        result = (*result[:2], None)
    return result


def _global_row_keys(attention_mask, segment_ids, global_segments):
    """The keys a global row sees: every real token, or (packed rows) those of its segment."""
    if segment_ids is None:
        return attention_mask
    return attention_mask[:, None, :] & (segment_ids[:, None, :] == global_segments[:, :, None])


def dense_longformer_attention(
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        attention_mask: jax.Array,
        *,
        left: int,
        right: int,
        globals_: GlobalIndices | None = None,
        q_global: jax.Array | None = None,
        k_global: jax.Array | None = None,
        v_global: jax.Array | None = None,
        block: int | None = None,
        dropout_rate: float = 0.0,
        dropout_rng: jax.Array | None = None,
        return_probs: bool = False,
        upcast_global: bool = False,
        segment_ids: jax.Array | None = None,
):
    """`longformer_attention` computed densely with an (N, N) mask: a BASELINE for benchmarks.

    Same arguments and results (without `return_probs`), but O(N^2) time and memory: the
    full-attention cost that the banded op avoids. `block` is ignored.
    """
    del block
    if return_probs:
        raise ValueError("the dense baseline does not return attention weights")
    attention_mask = attention_mask.astype(bool)
    length = q.shape[1]
    use_global = globals_ is not None and globals_.index.shape[1] > 0
    rngs = (jax.random.split(dropout_rng) if dropout_rng is not None else (None, None))
    i = jnp.arange(length)
    band = (i[None, :] >= i[:, None] - left) & (i[None, :] <= i[:, None] + right)  # (N, N)
    keys = attention_mask
    if use_global:
        is_global = scatter_rows(jnp.zeros(attention_mask.shape, bool), globals_.index,
                                 globals_.valid, jnp.ones(globals_.index.shape, bool))
        keys = attention_mask & ~is_global
    mask = band[None] & keys[:, None, :]
    if use_global:
        mask = mask | is_global[:, None, :]
    if segment_ids is not None:
        mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
    scores = jnp.einsum("bihd,bjhd->bhij", q, k, preferred_element_type=jnp.float32)
    (probs,) = _masked_softmax([scores], [mask[:, None]])
    probs = jnp.where(attention_mask[:, None, :, None], probs, 0.0)
    probs = _dropout(probs, dropout_rate, rngs[0])
    out = jnp.einsum("bhij,bjhd->bihd", probs.astype(v.dtype), v,
                     preferred_element_type=jnp.float32).astype(v.dtype)
    if not use_global:
        return out
    global_segments = (None if segment_ids is None
                       else gather_rows(segment_ids, globals_.index))
    g_out, _ = global_attention(q_global, k_global, v_global,
                                _global_row_keys(attention_mask, segment_ids, global_segments),
                                dropout_rate=dropout_rate, dropout_rng=rngs[1],
                                upcast=upcast_global)
    return scatter_rows(out, globals_.index, globals_.valid, g_out)
