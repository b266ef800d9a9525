"""Fine-tuning examples packed into rows of `seq_len` tokens, and the model's outputs read back
per example.

Short examples padded to `seq_len` spend most of a step on padding. `pack` (host side, numpy)
puts several examples in one row, told apart by `segment_ids` (see `segments.py`: the model
keeps attention within each and restarts positions), and moves each example's own fields
(labels, answer positions, `index`, `valid`) into per-row slots. The `unpack_*` functions (jnp,
static shapes, under jit) give back exactly the per-example layout of the unpacked rows, so a
task's loss, metrics and predictions read packed batches unchanged.

Rows are the tasks' encodings: each example one row, its tokens a prefix of length
`attention_mask.sum()`. A field is per token when its second axis is the row length (or when
the caller names it), otherwise per example. Packing is first-fit decreasing, longest example
first and ties by position, so the same rows always pack the same way (a fixed grain source,
resumable like the unpacked one).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

SEGMENT_IDS, SLOT_START = "segment_ids", "slot_start"
# What an unpacked model output holds past its example's end. Start/end logits: -1e9, so no
# softmax or best span picks a position outside the example (a packed row has no padding of
# its own to score). Anything else (per-token class logits): 0, read only where labelled.
NO_SCORE = -1e9  # a logit no softmax, argmax or best span picks (also QA's padding, bucketing's)
OUTPUT_FILLS = {"start_logits": NO_SCORE, "end_logits": NO_SCORE}
TOKEN_OUTPUTS = ("logits", "start_logits", "end_logits")


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a task's rows pack: the per-token fields and the value each holds on padding (what
    unpacking writes past an example's end, so unpacked rows equal the encoded ones)."""
    row_len: int
    per_token: tuple[str, ...]
    fills: dict[str, Any]


def per_token_keys(rows: dict[str, np.ndarray], per_token: Optional[Iterable[str]] = None
                   ) -> tuple[str, ...]:
    """The per-token fields: `per_token` when given (a task whose per-example field happens to
    be as long as a row names them), else those whose second axis is the row length."""
    length = rows["input_ids"].shape[1]
    if per_token is not None:
        keys = tuple(sorted(set(per_token) | {"input_ids", "attention_mask"}))
        for k in keys:
            if k in rows and (rows[k].ndim < 2 or rows[k].shape[1] != length):
                raise ValueError(f"per-token field {k!r} has shape {rows[k].shape}, not "
                                 f"(examples, {length}, ...)")
        return tuple(k for k in keys if k in rows)
    return tuple(sorted(k for k, v in rows.items() if v.ndim >= 2 and v.shape[1] == length))


def example_lengths(rows: dict[str, np.ndarray]) -> np.ndarray:
    """Tokens of each example, checked to be a non-empty prefix of its row (packing copies
    that prefix)."""
    mask = np.asarray(rows["attention_mask"]) > 0
    lengths = mask.sum(axis=1)
    prefix = np.arange(mask.shape[1])[None, :] < lengths[:, None]
    bad = np.flatnonzero((mask != prefix).any(axis=1) | (lengths == 0))
    if bad.size:
        i = int(bad[0])
        what = "has no tokens" if lengths[i] == 0 else "has padding before its last token"
        raise ValueError(f"example {i} {what} (attention_mask); a packed row holds each "
                         "example's tokens as one run from its start")
    return lengths.astype(np.int64)


def layout(rows: dict[str, np.ndarray], per_token: Optional[Iterable[str]] = None) -> Layout:
    """The Layout of `rows`: per-token fields and their padding values (0 where no example has
    padding, which then never shows: every example fills its row)."""
    keys = per_token_keys(rows, per_token)
    pad = ~(np.asarray(rows["attention_mask"]) > 0)
    fills = {}
    for k in keys:
        values = np.unique(np.asarray(rows[k])[pad]) if pad.any() else np.zeros(1, rows[k].dtype)
        if len(values) > 1:
            raise ValueError(f"per-token field {k!r} holds several values on padding "
                             f"({values[:4].tolist()}); packing needs one padding value")
        fills[k] = values[0].item()
    return Layout(row_len=rows["input_ids"].shape[1], per_token=keys, fills=fills)


def assign(lengths: np.ndarray, global_counts: np.ndarray, *, seq_len: int,
           max_global_tokens: int, max_segments: int) -> list[list[int]]:
    """First-fit decreasing: the examples of each row, in row order (each exactly once).

    A row holds at most `seq_len` tokens, `max_global_tokens` global tokens (the model's static
    budget is per row) and `max_segments` examples (the heads' output slots). Longest first,
    ties by position; each goes to the first row it fits in.
    """
    if max_segments < 1:
        raise ValueError(f"max_segments must be >= 1, got {max_segments}")
    for i, (n, g) in enumerate(zip(lengths, global_counts)):
        if n > seq_len:
            raise ValueError(f"example {i} has {n} tokens but a packed row holds {seq_len} "
                             "(data.seq_len)")
        if g > max_global_tokens:
            raise ValueError(f"example {i} has {g} global tokens but a packed row holds "
                             f"{max_global_tokens} (model.max_global_tokens, the budget of a "
                             "whole row); raise it")
    n = len(lengths)
    order = np.lexsort((np.arange(n), -np.asarray(lengths)))
    room = np.empty(n, np.int64)  # per open row; at most one row per example
    budget = np.empty(n, np.int64)
    count = np.empty(n, np.int64)
    rows: list[list[int]] = []
    for i in order:
        used = len(rows)
        fits = ((room[:used] >= lengths[i]) & (budget[:used] >= global_counts[i])
                & (count[:used] < max_segments))
        r = int(fits.argmax()) if used and fits.any() else used
        if r == used:
            rows.append([])
            room[r], budget[r], count[r] = seq_len, max_global_tokens, 0
        rows[r].append(int(i))
        room[r] -= lengths[i]
        budget[r] -= global_counts[i]
        count[r] += 1
    return rows


def pack(rows: dict[str, np.ndarray], *, seq_len: int, max_global_tokens: int,
         max_segments: int, per_token: Optional[Iterable[str]] = None,
         fills: Optional[dict[str, Any]] = None) -> dict[str, np.ndarray]:
    """Encoded rows (one example each) -> packed rows of `seq_len` tokens.

    Per-token fields: the examples' tokens one after another, then padding (the field's
    padding value, `fills` or found in `rows`). Per-example fields (labels, `index`, `valid`,
    ...): (rows, max_segments, ...) slots in segment order; filler slots 0 (`index` -1).
    Added: `segment_ids` (rows, seq_len) 1..S per example, 0 padding; `slot_start` (rows,
    max_segments) where each example starts in its row (0 for filler slots).
    """
    if rows["input_ids"].ndim != 2:
        raise ValueError(f"packing takes rows of (examples, length) tokens, got input_ids "
                         f"{rows['input_ids'].shape}")
    lengths = example_lengths(rows)
    lay = layout(rows, per_token)
    fills = {**lay.fills, **(fills or {})}
    globals_ = (np.asarray(rows["global_attention_mask"]) > 0).sum(axis=1) \
        if "global_attention_mask" in rows else np.zeros_like(lengths)
    bins = assign(lengths, globals_, seq_len=seq_len, max_global_tokens=max_global_tokens,
                  max_segments=max_segments)
    out = {}
    for k, v in rows.items():
        if k in lay.per_token:
            out[k] = np.full((len(bins), seq_len) + v.shape[2:], fills[k], v.dtype)
        else:
            out[k] = np.full((len(bins), max_segments) + v.shape[1:], -1 if k == "index" else 0,
                             v.dtype)
    out[SEGMENT_IDS] = np.zeros((len(bins), seq_len), np.int32)
    out[SLOT_START] = np.zeros((len(bins), max_segments), np.int32)
    for r, members in enumerate(bins):
        at = 0
        for s, i in enumerate(members):
            n = lengths[i]
            for k, v in rows.items():
                if k in lay.per_token:
                    out[k][r, at:at + n] = v[i, :n]
                else:
                    out[k][r, s] = v[i]
            out[SEGMENT_IDS][r, at:at + n] = s + 1
            out[SLOT_START][r, s] = at
            at += n
    return out


# ----------------------------------------------------------------------------- unpacking (jnp)
def unpack_tokens(x, segment_ids, slot_start, fill=0, length: Optional[int] = None):
    """(rows, seq_len, ...) per token -> (rows * slots, length, ...): slot s of row r is its
    example's tokens from position 0, `fill` after its end (filler slots: all `fill`)."""
    segment_ids = jnp.asarray(segment_ids)
    batch, seq_len = segment_ids.shape
    slots = slot_start.shape[1]
    length = seq_len if length is None else length
    pos = jnp.asarray(slot_start)[:, :, None] + jnp.arange(length)  # (rows, slots, length)
    inside = pos < seq_len
    pos = jnp.minimum(pos, seq_len - 1)
    seg = jnp.take_along_axis(segment_ids, pos.reshape(batch, -1), axis=1).reshape(pos.shape)
    own = inside & (seg == jnp.arange(1, slots + 1)[None, :, None])
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.floating):  # -1e9 in float16 would be -inf: NaN softmaxes
        fill = max(fill, float(jnp.finfo(x.dtype).min))
    values = jax.vmap(lambda row, p: row[p])(x, pos)
    own = own.reshape(own.shape + (1,) * (x.ndim - 2))
    out = jnp.where(own, values, jnp.asarray(fill, x.dtype))
    return out.reshape((batch * slots, length) + x.shape[2:])


def unpack_slots(x):
    """(rows, slots, ...) per example -> (rows * slots, ...)."""
    x = jnp.asarray(x)
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def unpack_batch(batch: dict, lay: Layout) -> dict:
    """A packed batch in the per-example layout of its encoded rows (filler slots: `valid` 0,
    `index` -1); `segment_ids` and `slot_start` are dropped."""
    seg, start = batch[SEGMENT_IDS], batch[SLOT_START]
    out = {}
    for k, v in batch.items():
        if k in (SEGMENT_IDS, SLOT_START):
            continue
        out[k] = (unpack_tokens(v, seg, start, lay.fills[k], lay.row_len) if k in lay.per_token
                  else unpack_slots(v))
    return out


def unpack_outputs(out, batch: dict, *, slot_fields: Iterable[str] = (),
                   length: Optional[int] = None):
    """Head outputs of a packed batch per example: `slot_fields` (per-slot outputs such as the
    sequence classifier's logits) flattened, the other logits per token (`OUTPUT_FILLS` past
    each example). Hidden states and attentions stay packed."""
    slot_fields = set(slot_fields)
    seg, start = batch[SEGMENT_IDS], batch[SLOT_START]
    fields = {}
    for name in TOKEN_OUTPUTS:
        x = getattr(out, name, None)
        if x is None:
            continue
        fields[name] = (unpack_slots(x) if name in slot_fields else
                        unpack_tokens(x, seg, start, OUTPUT_FILLS.get(name, 0), length))
    if getattr(out, "segment_valid", None) is not None:
        fields["segment_valid"] = unpack_slots(out.segment_valid)
    return out.replace(**fields)
