"""Packed rows (`segment_ids`): each example of a packed row gets what it gets alone.

The op is compared with itself on each segment run alone (which the other tests compare with
the reference), in both band layouts, with global tokens in some segments, dilation and causal
windows; the models with the per-example models, hidden states, logits and attention weights,
and gradients of a packed batch with the sum of the per-example gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longformer import (
    LongformerConfig,
    LongformerForMaskedLM,
    LongformerForQuestionAnswering,
    LongformerForSequenceClassification,
    LongformerForTokenClassification,
    LongformerModel,
)
from longformer import attention as attn

# Three segments (lengths 11, 6, 9) and 6 padding positions; globals at segment starts of
# segments 1 and 3, and one inside segment 3.
LENGTHS = (11, 6, 9)
PAD = 6
GLOBALS = {0: [0], 2: [0, 4]}  # segment index -> positions within it


def _segments():
    seg = np.concatenate([np.full(n, i + 1) for i, n in enumerate(LENGTHS)] + [np.zeros(PAD)])
    return seg.astype(np.int32)[None]


def _starts():
    return np.cumsum((0,) + LENGTHS[:-1])


def _globals_mask():
    mask = np.zeros(sum(LENGTHS) + PAD, bool)
    for s, positions in GLOBALS.items():
        mask[_starts()[s] + np.asarray(positions)] = True
    return mask[None]


def _qkv(key, length, heads=2, dim=4):
    ks = jax.random.split(key, 6)
    shape = (1, length, heads, dim)
    return [jax.random.normal(k, shape, jnp.float32) for k in ks]


@pytest.mark.parametrize("loop", [True, False], ids=["loop", "batched"])
@pytest.mark.parametrize("left,right,dilation", [(3, 3, 1), (4, 0, 1), (2, 2, (1, 2))],
                         ids=["band", "causal", "dilated"])
def test_op_packed_equals_each_segment_alone(loop, left, right, dilation):
    seg = jnp.asarray(_segments())
    length = seg.shape[1]
    real = seg > 0
    use_global = right > 0  # causal windows have no global attention
    q, k, v, qg, kg, vg = _qkv(jax.random.key(0), length)
    budget = 3

    def run(q, k, v, qg_full, kg, vg, real, gmask, segment_ids):
        globals_ = attn.global_token_indices(jnp.asarray(gmask) & real, budget) if use_global \
            else None
        q_global = attn.gather_rows(qg_full, globals_.index) if use_global else None
        return attn.longformer_attention(
            q, k, v, real, left=left, right=right, dilation=dilation, globals_=globals_,
            q_global=q_global, k_global=kg if use_global else None,
            v_global=vg if use_global else None, block=4, loop=loop, return_probs=True,
            segment_ids=segment_ids)

    out, probs, g_probs = run(q, k, v, qg, kg, vg, real, _globals_mask(), seg)
    for s, n in enumerate(LENGTHS):
        lo = _starts()[s]
        part = lambda x: x[:, lo:lo + n]  # noqa: E731
        gmask = _globals_mask()[:, lo:lo + n]
        alone = run(part(q), part(k), part(v), part(qg), part(kg), part(vg),
                    jnp.ones((1, n), bool), gmask, None)
        np.testing.assert_allclose(out[:, lo:lo + n], alone[0], atol=1e-6)
        # Local weights: global columns differ in slot order only when segments share slots.
        width = left + right + 1
        np.testing.assert_allclose(probs[:, :, lo:lo + n, -width:], alone[1][..., -width:],
                                   atol=1e-6)
        if use_global:
            used = sorted(GLOBALS.get(s, []))
            slots = [i for i, p in enumerate(np.flatnonzero(_globals_mask()[0]))
                     if lo <= p < lo + n]
            np.testing.assert_allclose(probs[:, :, lo:lo + n, slots],
                                       alone[1][:, :, :, :len(used)], atol=1e-6)
            np.testing.assert_allclose(g_probs[:, :, lo:lo + n][..., slots],
                                       alone[2][..., :len(used)], atol=1e-6)
    assert np.all(np.asarray(out[:, sum(LENGTHS):]) == 0)  # padding rows


@pytest.mark.parametrize("loop", [True, False], ids=["loop", "batched"])
def test_op_gradients_packed_equal_sum_of_alone(loop):
    seg = jnp.asarray(_segments())
    length = seg.shape[1]
    q, k, v, qg, kg, vg = _qkv(jax.random.key(1), length)
    weights = jax.random.normal(jax.random.key(2), q.shape)

    def loss(qkv, real, gmask, segment_ids):
        q, k, v, qg, kg, vg = qkv
        globals_ = attn.global_token_indices(jnp.asarray(gmask) & real, 3)
        out = attn.longformer_attention(
            q, k, v, real, left=2, right=2, globals_=globals_,
            q_global=attn.gather_rows(qg, globals_.index), k_global=kg, v_global=vg, block=4,
            loop=loop, segment_ids=segment_ids)
        return jnp.sum(out * weights)

    qkv = (q, k, v, qg, kg, vg)
    packed = jax.grad(loss)(qkv, seg > 0, _globals_mask(), seg)
    for s, n in enumerate(LENGTHS):
        lo = _starts()[s]
        part = [x[:, lo:lo + n] for x in qkv]

        def alone_loss(p, lo=lo, n=n):
            q, k, v, qg, kg, vg = p
            globals_ = attn.global_token_indices(jnp.asarray(_globals_mask()[:, lo:lo + n]), 3)
            out = attn.longformer_attention(
                q, k, v, jnp.ones((1, n), bool), left=2, right=2, globals_=globals_,
                q_global=attn.gather_rows(qg, globals_.index), k_global=kg, v_global=vg,
                block=4, loop=loop)
            return jnp.sum(out * weights[:, lo:lo + n])

        alone = jax.grad(alone_loss)(part)
        for g, a in zip(packed, alone):
            np.testing.assert_allclose(g[:, lo:lo + n], a, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- models
TINY = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=64, attention_window=(4, 6),
            max_global_tokens=4, max_segments=4, num_labels=3)


def _packed_row(seed=0):
    """Three `<s> question </s></s> context </s>` sequences and padding: (ids, segment ids,
    global mask, per-sequence (start, length, global positions))."""
    rng = np.random.default_rng(seed)
    pieces, seqs = [], []
    start = 0
    for n, q, glob in ((13, 3, [0]), (7, 2, []), (10, 2, [0, 5])):
        ids = rng.integers(3, 64, n)
        ids[0], ids[q], ids[q + 1], ids[-1] = 0, 2, 2, 2
        pieces.append(ids)
        seqs.append((start, n, glob))
        start += n
    ids = np.concatenate(pieces + [np.ones(5, int)])[None].astype(np.int32)
    seg = np.zeros_like(ids)
    glob = np.zeros_like(ids)
    for i, (s, n, g) in enumerate(seqs):
        seg[0, s:s + n] = i + 1
        glob[0, [s + p for p in g]] = 1
    return ids, seg, glob, seqs


@pytest.mark.parametrize("impl,scan", [("loop", False), ("batched", True)],
                         ids=["loop-unrolled", "batched-scan"])
def test_model_packed_equals_each_sequence_alone(impl, scan):
    cfg = LongformerConfig(**TINY, attention_impl=impl, scan_layers=scan)
    ids, seg, glob, seqs = _packed_row()
    model = LongformerModel(cfg)
    params = model.init(jax.random.key(0), ids, segment_ids=seg, global_attention_mask=glob)
    out = model.apply(params, ids, segment_ids=seg, global_attention_mask=glob,
                      output_hidden_states=True, output_attentions=True)
    slots = np.flatnonzero(glob[0])
    for s, n, _ in seqs:
        alone = model.apply(params, ids[:, s:s + n], global_attention_mask=glob[:, s:s + n],
                            output_hidden_states=True, output_attentions=True)
        for h, a in zip(out.hidden_states, alone.hidden_states):
            np.testing.assert_allclose(h[:, s:s + n], a, atol=1e-5)
        mine = [i for i, p in enumerate(slots) if s <= p < s + n]
        budget = cfg.max_global_tokens
        for p, a in zip(out.attentions, alone.attentions):  # band columns, then own slots
            np.testing.assert_allclose(p[:, :, s:s + n, budget:], a[..., budget:], atol=1e-5)
            np.testing.assert_allclose(p[:, :, s:s + n, mine], a[..., :len(mine)], atol=1e-5)
            others = [i for i in range(budget) if i not in mine]
            assert np.all(np.asarray(p[:, :, s:s + n, others]) == 0)
        for p, a in zip(out.global_attentions, alone.global_attentions):
            np.testing.assert_allclose(p[:, :, s:s + n][..., mine], a[..., :len(mine)],
                                       atol=1e-5)


def test_heads_packed_equal_each_sequence_alone():
    cfg = LongformerConfig(**{**TINY, "max_global_tokens": 8})  # QA: every question is global
    ids, seg, glob, seqs = _packed_row(1)
    for cls in (LongformerForMaskedLM, LongformerForTokenClassification,
                LongformerForSequenceClassification, LongformerForQuestionAnswering):
        model = cls(cfg)
        params = model.init(jax.random.key(1), ids, segment_ids=seg)
        out = model.apply(params, ids, segment_ids=seg)  # the heads' default global attention
        for i, (s, n, _) in enumerate(seqs):
            alone = model.apply(params, ids[:, s:s + n])
            if cls is LongformerForSequenceClassification:
                np.testing.assert_allclose(out.logits[:, i], alone.logits, atol=1e-5)
            elif cls is LongformerForQuestionAnswering:
                np.testing.assert_allclose(out.start_logits[:, s:s + n], alone.start_logits,
                                           atol=1e-5)
                np.testing.assert_allclose(out.end_logits[:, s:s + n], alone.end_logits,
                                           atol=1e-5)
            else:
                np.testing.assert_allclose(out.logits[:, s:s + n], alone.logits, atol=1e-5)
        if cls is LongformerForSequenceClassification:
            np.testing.assert_array_equal(out.segment_valid, [[True, True, True, False]])


def test_packed_gradients_equal_the_sum_over_sequences():
    """The classification loss of a packed row (the head's per-slot labels): the gradient of its
    sum over sequences equals the sum of each sequence's own gradient. (QA's per-slot loss is
    checked through the packed pipeline's eval, tests/test_packing_pipeline.py.)"""
    cfg = LongformerConfig(**{**TINY, "max_global_tokens": 8}, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)
    ids, seg, glob, seqs = _packed_row(2)
    cls_model = LongformerForSequenceClassification(cfg)
    params = cls_model.init(jax.random.key(2), ids, segment_ids=seg)
    labels = np.array([[2, 0, 1, -100]])

    def packed(p):  # the head's loss is a mean over counted slots: times 3 is their sum
        return 3 * cls_model.apply(p, ids, segment_ids=seg, labels=labels).loss

    def alone(p):
        return sum(cls_model.apply(p, ids[:, s:s + n], labels=labels[:, i]).loss
                   for i, (s, n, _) in enumerate(seqs))

    _assert_trees_close(jax.jit(jax.grad(packed))(params), jax.jit(jax.grad(alone))(params))


def _assert_trees_close(a, b):
    """Relative to the gradient's largest entry (entries that nearly cancel across sequences
    keep float32's absolute rounding, not its relative one)."""
    a, b = jax.tree.leaves(a), jax.tree.leaves(b)
    scale = max(float(jnp.max(jnp.abs(y))) for y in b)
    worst = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(a, b, strict=True))
    assert worst <= 1e-5 * scale, (worst, scale)


def test_char_lm_packed_equals_each_text_alone():
    """The causal, dilated char LM (rotary positions) on a packed row."""
    from longformer.charlm import CharLM
    cfg = LongformerConfig(vocab_size=256, hidden_size=16, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
                           attention_window=(4, 8), attention_dilation=(1, (1, 2)), causal=True,
                           max_global_tokens=0)
    ids = np.random.default_rng(5).integers(0, 256, (1, 30)).astype(np.int32)
    seg = np.array([[1] * 12 + [2] * 9 + [3] * 6 + [0] * 3], np.int32)
    model = CharLM(cfg)
    params = model.init(jax.random.key(0), ids)
    out = model.apply(params, ids, segment_ids=seg)
    for start, n in ((0, 12), (12, 9), (21, 6)):
        alone = model.apply(params, ids[:, start:start + n])
        np.testing.assert_allclose(out[:, start:start + n], alone, atol=1e-5)
