"""Length buckets for evaluation: rows of similar length share a batch, cut to one of a few lengths.

A fine-tuning task's eval rows are each padded to `data.seq_len`, so a batch of short rows
costs as much as one of full rows. Packing (`data.packing`) removes that padding but changes
the rows; where it is off, eval.py can instead regroup the rows of one eval pass by their real
length and cut each batch's per-token fields to the smallest rung of a ladder that holds its
longest row: the largest attention window, twice that, four times, ... and `seq_len` last. A
multiple of the largest window is what the model pads a row to anyway, and the number of
compiled shapes is at most the ladder's length.

Why the scores do not change: the model never lets a token see padding (masked keys in the band
and the global attention, positions that count real tokens only), so cutting trailing padding
leaves every real token's output the same computation, up to float rounding (sums over fewer
masked terms). The per-token outputs of `eval_fn` are padded back to `seq_len` on the host with
values no metric reads (see `TASKS`), and each row keeps its `index` and `valid`, so
`summarize` and `predict` see what they see unbucketed, in another batch order (they sort by
`index`); QA's loss too, since the task masks padding out of its softmax.

Every host regroups its own rows; batch k then runs at the longest length any host needs for
its batch k, so all hosts compile and run the same shapes in the same order.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from longformer.packing import NO_SCORE

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
_INPUTS = ("input_ids", "attention_mask", "global_attention_mask")

# task -> (the per-token fields of its eval batches, {per-token eval output: padding value}).
# Classification and multiple choice read token 0 only; token classification's word predictions
# and QA's spans are read at real tokens only, so the padding values are never looked at.
# Positions that index into a row (answer spans, WikiHop's candidate markers, HotpotQA's
# sentence and paragraph markers) all point at real tokens, which a cut never removes; the
# fields holding them are per example (their last axis counts spans or slots, not tokens).
_SPANS = {"start_logits": NO_SCORE, "end_logits": NO_SCORE}
TASKS = {
    "classification": (_INPUTS, {}),
    "multiple_choice": (_INPUTS, {}),  # (batch, choices, seq_len): cut on the last axis
    "token_classification": (_INPUTS + ("labels",), {"predictions": 0}),
    "qa": (_INPUTS, _SPANS),
    "triviaqa": (_INPUTS, _SPANS),
    "hotpotqa": (_INPUTS, _SPANS),
    "wikihop": (_INPUTS, {}),  # (batch, chunks, seq_len): every chunk cut to the longest
}
# What a per-token field holds at padding; any other value marks a position in use. input_ids
# is not asked: a pad id under attention_mask 0 is padding whatever the id.
_PADDING = {"attention_mask": 0, "global_attention_mask": 0, "labels": IGNORE_INDEX}


@dataclasses.dataclass(frozen=True)
class Buckets:
    """The lengths a batch may be cut to (ascending, `seq_len` last), the per-token fields of the
    batches and the per-token outputs with their padding values."""

    lengths: tuple[int, ...]
    inputs: tuple[str, ...]
    outputs: dict

    @property
    def seq_len(self) -> int:
        return self.lengths[-1]


def ladder(seq_len: int, window: int) -> tuple[int, ...]:
    """window, 2 window, 4 window, ... below seq_len, then seq_len."""
    if window < 1 or seq_len < 1:
        raise ValueError(f"ladder needs positive lengths, got seq_len={seq_len}, window={window}")
    rungs, n = [], window
    while n < seq_len:
        rungs.append(n)
        n *= 2
    return tuple(rungs) + (seq_len,)


def for_task(config, task) -> Buckets | None:
    """The buckets of `config.task`'s eval batches, or None (with a log line saying why) where
    bucketing does not apply."""
    name = config.task
    if name not in TASKS:
        log.info("eval bucketing does not apply to task %r (its eval rows are packed to full "
                 "length): evaluating unbucketed", name)
        return None
    if config.data.get("packing", False):
        log.info("eval bucketing does not apply with data.packing (packed rows have no padding "
                 "to cut): evaluating unbucketed")
        return None
    inputs, outputs = TASKS[name]
    lengths = ladder(int(config.data.seq_len), int(task.model.config.max_window))
    return Buckets(lengths, inputs, dict(outputs))


def real_lengths(rows: dict, buckets: Buckets) -> np.ndarray:
    """(rows,) one past the last position any per-token field uses (over all choices)."""
    used = None
    for name in buckets.inputs:
        if name in _PADDING and name in rows:
            mark = rows[name] != _PADDING[name]
            used = mark if used is None else used | mark
    if used is None:
        raise ValueError(f"eval bucketing: the batches have none of {sorted(_PADDING)} to tell "
                         "padding from tokens")
    used = used.reshape(len(used), -1, used.shape[-1]).any(1)
    last = used.shape[-1] - np.argmax(used[:, ::-1], axis=-1)
    return np.where(used.any(-1), last, 0)


def _agree(lengths: np.ndarray) -> np.ndarray:
    """Per batch, the longest length any host needs (every host runs the same shapes)."""
    import jax
    if jax.process_count() == 1:
        return lengths
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(lengths)).max(axis=0)


def plan(lengths: np.ndarray, per_batch: int, buckets: Buckets
         ) -> tuple[np.ndarray, np.ndarray]:
    """(rows of each batch (batches, per_batch), each batch's length): rows sorted by length,
    so a batch's longest row decides its rung."""
    if len(lengths) % per_batch:
        raise ValueError(f"{len(lengths)} eval rows are not whole batches of {per_batch}")
    order = np.argsort(lengths, kind="stable").reshape(-1, per_batch)
    rungs = np.asarray(buckets.lengths)
    need = np.maximum(lengths[order].max(axis=1), 1)
    return order, _agree(rungs[np.searchsorted(rungs, need)])


def _unknown_token_fields(rows: dict, buckets: Buckets) -> list[str]:
    return [k for k, v in rows.items() if k not in buckets.inputs and v.ndim >= 2
            and v.shape[-1] == buckets.seq_len]


def regroup(batches: list[dict], buckets: Buckets) -> list[dict]:
    """The rows of `batches` (one eval pass of this host), regrouped by length and cut to their
    batch's rung. Batches with a field of row length that the task table does not name are
    returned as they are (with a warning): cutting it could drop what a metric reads."""
    if not batches:
        return []
    rows = {k: np.concatenate([np.asarray(b[k]) for b in batches]) for k in batches[0]}
    missing = [k for k in buckets.inputs if k in rows and rows[k].shape[-1] != buckets.seq_len]
    unknown = _unknown_token_fields(rows, buckets)
    if missing or unknown:
        log.warning("eval bucketing: fields %s are not of seq_len=%d per token as the task "
                    "table says, or %s are of row length but not in it; evaluating unbucketed",
                    missing, buckets.seq_len, unknown)
        return batches
    order, cut = plan(real_lengths(rows, buckets), len(next(iter(batches[0].values()))),
                      buckets)
    return [{k: v[picked][..., :n] if k in buckets.inputs else v[picked]
             for k, v in rows.items()} for picked, n in zip(order, cut)]


def restore(output: dict, buckets: Buckets) -> dict:
    """A bucketed batch's host outputs with the per-token ones padded back to seq_len."""
    out = dict(output)
    for name, fill in buckets.outputs.items():
        if name not in out:
            continue
        x = np.asarray(out[name])
        short = buckets.seq_len - x.shape[-1]
        if short > 0:
            out[name] = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, short)], constant_values=fill)
    return out
