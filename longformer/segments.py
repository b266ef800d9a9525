"""Packed rows: several sequences in one row, told apart by `segment_ids`.

0 marks padding, and each other value one sequence, a contiguous run of the row. The rules that
read segment ids live here once (numpy for the pipelines, jax for the models, also under jit):
where each sequence starts, counts that restart with each sequence (positions, separators), and
the static slots a head gives its per-sequence outputs in.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _xp(x):
    return jnp if isinstance(x, jax.Array) else np


def _run_starts(segment_ids):
    """(B, N) bool: where a run of equal ids starts (padding runs included)."""
    xp = _xp(segment_ids)
    first = xp.ones_like(segment_ids[:, :1], dtype=bool)
    return xp.concatenate([first, segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)


def starts(segment_ids):
    """(B, N) bool: the first position of each sequence (never padding)."""
    return _run_starts(segment_ids) & (segment_ids > 0)


def count_within(flags, segment_ids):
    """Running count of `flags` (B, N) along each row, restarting where a sequence starts:
    position i holds the count over its own sequence up to and including i."""
    xp = _xp(flags)
    count = xp.cumsum(flags, axis=1)
    if segment_ids is None:
        return count
    before = xp.where(_run_starts(segment_ids), count - flags, 0)  # the count just before each start
    before = (jax.lax.cummax(before, axis=1) if xp is jnp
              else np.maximum.accumulate(before, axis=1))
    return count - before


def slot_positions(segment_ids, max_segments: int):
    """Where each sequence starts, packed into `max_segments` slots per row in order:
    (positions (B, S) int32, valid (B, S) bool, count (B,) int32 of sequences in the row)."""
    first = starts(segment_ids)
    if isinstance(first, jax.Array):
        from longformer.attention import global_token_indices
        slots = global_token_indices(first, max_segments)
        return slots.index, slots.valid, slots.count
    batch, length = first.shape
    index = np.zeros((batch, max_segments), np.int32)
    valid = np.zeros((batch, max_segments), bool)
    for b in range(batch):
        where = np.flatnonzero(first[b])[:max_segments]
        index[b, :len(where)] = where
        valid[b, :len(where)] = True
    return index, valid, first.sum(axis=1).astype(np.int32)


def check_count(segment_ids, max_segments: int) -> None:
    """Refuses a row with more sequences than the slots hold (when the values are known)."""
    if isinstance(segment_ids, jax.core.Tracer):
        return
    counts = starts(np.asarray(segment_ids)).sum(axis=1)
    if counts.size and counts.max() > max_segments:
        row = int(counts.argmax())
        raise ValueError(f"row {row} packs {int(counts[row])} sequences but the model has "
                         f"max_segments={max_segments}; raise it in the config or pack fewer")


def ends(segment_ids):
    """(B, N) bool: the last position of each sequence (never padding)."""
    xp = _xp(segment_ids)
    last = xp.ones_like(segment_ids[:, :1], dtype=bool)
    change = xp.concatenate([segment_ids[:, :-1] != segment_ids[:, 1:], last], axis=1)
    return change & (segment_ids > 0)
