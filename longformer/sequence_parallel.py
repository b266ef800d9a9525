"""One document across devices: the `sequence` mesh axis, by halo exchange.

Why not a ring (ring attention passes every key block around all the devices): a band of
`left + right + 1` keys needs only `left` rows of the shard before and `right` rows of the shard
after, whatever the document's length, so each shard fetches exactly those rows from its
neighbours (`halo`, one `ppermute` per hop) and runs the same blocked band on its own queries.
What crosses shards otherwise is small and fixed by the budget of global tokens: their G rows
(`gather_rows` sums each shard's contribution), and the global rows' softmax statistics over each
shard's keys, merged by log-sum-exp (`pmax` of the peaks, `psum` of the sums and values).

The functions here run on one shard's rows inside `jax.shard_map` over `AXIS` (manual only on that
axis: batch, fsdp and tensor stay GSPMD's); the op (`attention.py`, `band.py`) calls them when it is
given that axis, and `over_sequence` wraps such a function of one shard's arrays into a function of
the whole arrays. A model splits the sequence when the mesh in context (`jax.set_mesh`) has a
`sequence` axis larger than 1 (`shards`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

AXIS = "sequence"


def shards() -> int:
    """The size of the `sequence` axis of the mesh in context (1 without one)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return 1
    return dict(mesh.shape).get(AXIS, 1)


def over_sequence(fn: Callable, in_specs, out_specs) -> Callable:
    """fn of one shard's arrays -> fn of the whole arrays. Specs name the position axis: `along(1)`
    splits axis 1 over the shards, `P()` hands every shard the whole (small) array."""
    return jax.shard_map(fn, in_specs=in_specs, out_specs=out_specs, axis_names={AXIS})


def along(axis: int) -> P:
    """The spec of an array whose axis `axis` holds positions, split over the shards."""
    return P(*([None] * axis), AXIS)


# ----------------------------------------------------------------------------- inside shard_map
def start(length: int, axis: str) -> jax.Array:
    """The document position of this shard's first row (shards hold `length` rows each)."""
    return lax.axis_index(axis) * length


def exclusive_prefix(count: jax.Array, axis: str) -> jax.Array:
    """The sum of `count` over the shards before this one (all shards' counts travel: a few
    numbers each)."""
    every = lax.all_gather(count, axis)  # (S, ...)
    before = jnp.arange(every.shape[0]) < lax.axis_index(axis)
    return jnp.sum(jnp.where(before.reshape((-1,) + (1,) * count.ndim), every, 0), axis=0,
                   dtype=count.dtype)


def cumsum(x: jax.Array, axis: str) -> jax.Array:
    """Running sum along axis 1 over the whole document, from this shard's rows."""
    local = jnp.cumsum(x, axis=1, dtype=x.dtype)
    return local + exclusive_prefix(local[:, -1], axis)[:, None]


def _shift(x, hops: int, axis: str):
    """Shard i receives shard (i - hops)'s x (hops may be negative); zeros where there is none."""
    size = lax.axis_size(axis)
    pairs = [(i, i + hops) for i in range(size) if 0 <= i + hops < size]
    if not pairs:
        return jax.tree.map(jnp.zeros_like, x)
    return lax.ppermute(x, axis, pairs)


def halo(x, before: int, after: int, axis: str):
    """(the `before` rows that precede this shard's rows, the `after` rows that follow them),
    along axis 1 of every array of the pytree x, fetched from the neighbours: only those rows
    travel, over several hops when a halo is longer than a shard. Past the document's ends the
    rows are zeros (False for masks), so they are never visible."""
    length = jax.tree.leaves(x)[0].shape[1]

    def fetch(count: int, direction: int):
        parts, hop = [], 1
        while count > 0:
            take = min(count, length)
            # From the shard `hop` before: its last rows; from the shard `hop` after: its first.
            piece = jax.tree.map((lambda a, t=take: a[:, length - t:]) if direction > 0
                                 else (lambda a, t=take: a[:, :t]), x)
            parts.append(_shift(piece, direction * hop, axis))
            count, hop = count - take, hop + 1
        if direction > 0:
            parts = parts[::-1]  # farthest first: the rows in document order
        if not parts:
            return jax.tree.map(lambda a: a[:, :0], x)
        return jax.tree.map(lambda *p: jnp.concatenate(p, axis=1), *parts)

    return fetch(before, 1), fetch(after, -1)


def gather_rows(x: jax.Array, index: jax.Array, axis: str, varying: bool = True) -> jax.Array:
    """x's rows at document positions index (B, G) -> (B, G, ...) on every shard: each shard
    gives the rows it holds, zeros for the others, and the shards' parts are summed.

    `varying`: floats come back typed as varying over the axis (`lax.pcast`), as what they meet
    in the op is: so that their gradient's sum over the shards is this function's own, in
    float32, rather than one JAX inserts in their dtype (XLA:CPU fails to compile bfloat16
    all-reduces). False for a result that leaves the shard_map whole."""
    length = x.shape[1]
    local = index - start(length, axis)
    here = (local >= 0) & (local < length)
    rows = jax.vmap(lambda xb, ib: jnp.take(xb, ib, axis=0))(x, jnp.clip(local, 0, length - 1))
    here = here.reshape(here.shape + (1,) * (x.ndim - 2))
    if x.dtype == bool:
        return lax.psum(jnp.where(here, rows, False).astype(jnp.int32), axis) > 0
    # One shard gives each row, the others zeros: the sum is exact in any precision. It runs in
    # float32 for narrower floats.
    rows = lax.psum(jnp.where(here, rows, 0).astype(widened(x.dtype)), axis)
    return (varying_over(rows, axis) if varying else rows).astype(x.dtype)


def widened(dtype):
    """float32 for floats narrower than it; other dtypes as they are."""
    return jnp.promote_types(dtype, jnp.float32) if jnp.issubdtype(dtype, jnp.floating) else dtype


def varying_over(x: jax.Array, axis: str) -> jax.Array:
    """x (the same on every shard) typed as varying over the axis: its cotangent is then summed
    over the shards by this cast's transpose, in x's dtype (give it float32)."""
    return lax.pcast(x, (axis,), to="varying")


def local_index(index: jax.Array, valid: jax.Array, length: int, axis: str) -> jax.Array:
    """Document positions (B, G) -> positions in this shard's rows; `length` (out of range)
    where a slot is unused or held by another shard."""
    local = index - start(length, axis)
    return jnp.where(valid & (local >= 0) & (local < length), local, length)
