"""The reference's default global attention rules, written once for the heads, the tokenizer
helpers and the fine-tuning tasks, so the three can never disagree about which tokens are global.

The rules read the layout `<s> question </s></s> context </s>` (multiple choice: one such row per
choice): sequence classification makes `<s>` global, question answering every token before the
first `</s>`, multiple choice every token after the first `</s></s>` pair to the end of the row,
padding included (the reference's code does this; the model never attends to padding, and the
tasks, which count global tokens against a budget, mask it out).

They take numpy arrays (the data pipeline, the tokenizer) or jax arrays (the heads, also under
jit) and return the same kind. When the token values are known (anything but a traced array),
a row without exactly three separators is refused: the rules would silently mark the wrong
tokens there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from longformer import segments

__all__ = ["classification", "question_answering", "multiple_choice"]


def _rows(input_ids):
    """(array module, ids) with ids of shape (batch, seq) or (batch, choices, seq)."""
    xp = jnp if isinstance(input_ids, jax.Array) else np
    ids = input_ids if xp is jnp else np.asarray(input_ids)
    if ids.ndim < 2:
        raise ValueError(f"input_ids must be (batch, seq) or (batch, choices, seq), got shape "
                         f"{tuple(ids.shape)}")
    return xp, ids


def _first_separator(xp, ids, sep_token_id: int, what: str):
    if not isinstance(ids, jax.core.Tracer):
        counts = (np.asarray(ids) == sep_token_id).sum(axis=-1)
        bad = np.argwhere(counts != 3)
        if len(bad):
            at = tuple(int(i) for i in bad[0])
            raise ValueError(
                f"{what}: example {at[0] if len(at) == 1 else at} has {int(counts[at])} separator "
                f"tokens (id {sep_token_id}); with no global_attention_mask given, the default "
                "rule needs the layout `<s> question </s></s> context </s>` with exactly three "
                "separator tokens per example. Pass global_attention_mask explicitly for other "
                "layouts.")
    return xp.argmax(ids == sep_token_id, axis=-1)


def classification(input_ids):
    """`<s>` (position 0) global, int32, the shape of `input_ids`."""
    xp, ids = _rows(input_ids)
    return xp.broadcast_to(xp.arange(ids.shape[-1]) == 0, ids.shape).astype(xp.int32)


def question_answering(input_ids, sep_token_id: int, segment_ids=None):
    """`<s>` and the question global: every position before the first separator (of its own
    sequence, in a packed row)."""
    xp, ids = _rows(input_ids)
    if segment_ids is not None:
        seg = xp.asarray(segment_ids)
        is_sep = (ids == sep_token_id).astype(xp.int32)
        seps = segments.count_within(is_sep, seg)
        if not isinstance(ids, jax.core.Tracer) and not isinstance(seg, jax.core.Tracer):
            last = np.asarray(seps)[np.asarray(segments.ends(seg))]
            if np.any(last != 3):
                raise ValueError("question answering: a packed sequence does not have exactly "
                                 "three separator tokens (`<s> question </s></s> context </s>`)"
                                 "; pass global_attention_mask explicitly for other layouts")
        return ((seps == 0) & (seg > 0)).astype(xp.int32)
    first = _first_separator(xp, ids, sep_token_id, "question answering")
    return (xp.arange(ids.shape[-1]) < first[..., None]).astype(xp.int32)


def multiple_choice(input_ids, sep_token_id: int):
    """Every position after the first `</s></s>` pair global, to the end of the row."""
    xp, ids = _rows(input_ids)
    first = _first_separator(xp, ids, sep_token_id, "multiple choice")
    return (xp.arange(ids.shape[-1]) > first[..., None] + 1).astype(xp.int32)
