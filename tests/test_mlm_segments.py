"""MLM with documents kept apart (data.separate_documents): segment ids follow the documents,
the default pipeline is untouched, no attention crosses a document, and a tiny run trains."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mlm_tiny
from longformer import data, losses, train_lib
from longformer.modeling import LongformerForMaskedLM
from longformer.tasks import init_from
from longformer.tokenizer import LongformerTokenizer

BOS, PAD, EOS = 0, 1, 2


@pytest.fixture(scope="module")
def tokenizer():
    return LongformerTokenizer.train(data.default_corpus_documents()[:300], vocab_size=512,
                                     min_frequency=2)


def short_docs(n, seed=0):
    """Documents of 3 to 60 random words: most rows of 64 tokens hold several of them."""
    words = sorted({w for doc in data.default_corpus_documents()[:50] for w in doc.split()
                    if w.isalpha()})
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=int(rng.integers(3, 60)))) for _ in range(n)]


def config(**overrides):
    cfg = data.default_data_config()
    cfg.update(seq_len=64, eval_fraction=0.2, worker_threads=1, prefetch_batches=2, **overrides)
    return cfg


def originals(batch):
    return np.where(batch["labels"] != data.IGNORE_INDEX, batch["labels"], batch["input_ids"])


def expected_segments(token_lists, seq_len):
    """Segment ids built from the documents themselves: the piece number of each token's
    document within its row (`<s>` with the first piece, the row's `</s>` with the last)."""
    owner = np.concatenate([np.full(len(t) + 1, d) for d, t in enumerate(token_lists)])
    content = seq_len - 2
    rows = []
    for start in range(0, len(owner), content):
        chunk = owner[start:start + content]
        row = np.zeros(seq_len, np.int32)
        row[1:1 + len(chunk)] = chunk - chunk[0] + 1
        row[0], row[1 + len(chunk)] = 1, row[len(chunk)]
        rows.append(row)
    return np.stack(rows)


def test_segments_change_exactly_at_document_boundaries():
    rng = np.random.default_rng(0)
    docs = [rng.integers(5, 100, size=int(rng.integers(1, 90))) for _ in range(300)]
    rows = data.pack_sequences(docs, 32, bos_id=BOS, eos_id=EOS, pad_id=PAD, pad_remainder=True)
    got = data.document_segments(rows, eos_id=EOS, pad_id=PAD)
    want = expected_segments(docs, 32)
    assert got.shape == want.shape == rows.shape
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(got > 0, rows != PAD)
    # The corner cases occur: a chunk ending with a document's </s> (the row's </s> joins that
    # piece), one starting with it (a piece of only that </s> after <s>), and one-token pieces.
    assert np.any(rows[:, -2] == EOS) and np.any(rows[:, 1] == EOS)
    assert np.any(got[:, -2] != got[:, -3])
    # One row alone is segmented the same way.
    np.testing.assert_array_equal(data.document_segments(rows[3], eos_id=EOS, pad_id=PAD),
                                  got[3])


def _batches(cfg, tokenizer, docs, n_train=6):
    d = data.make_mlm_datasets(cfg, tokenizer, seed=5, global_batch_size=4, documents=docs)
    return [next(d.train) for _ in range(n_train)], list(d.eval)


def test_default_batches_unchanged_and_the_option_only_adds_segment_ids(tokenizer):
    docs = short_docs(120)
    absent = {k: v for k, v in config().items() if k != "separate_documents"}
    train_a, eval_a = _batches(absent, tokenizer, docs)  # the option not there at all
    train_d, eval_d = _batches(config(), tokenizer, docs)
    train_s, eval_s = _batches(config(separate_documents=True), tokenizer, docs)
    assert len(eval_a) == len(eval_d) == len(eval_s) > 0
    for a, d, s in zip(train_a + eval_a, train_d + eval_d, train_s + eval_s):
        assert set(a) == set(d) == {"input_ids", "attention_mask", "labels"}
        assert set(s) == set(a) | {"segment_ids"}
        for k in a:
            np.testing.assert_array_equal(a[k], d[k])
            np.testing.assert_array_equal(a[k], s[k])
        seg = s["segment_ids"]
        assert seg.dtype == np.int32 and seg.shape == a["input_ids"].shape
        np.testing.assert_array_equal(
            seg, data.document_segments(originals(s), eos_id=tokenizer.eos_token_id,
                                        pad_id=tokenizer.pad_token_id))
        np.testing.assert_array_equal(seg > 0, s["attention_mask"] > 0)
    assert max(int(b["segment_ids"].max()) for b in train_s) >= 3  # rows hold several documents


def test_rows_of_the_pipeline_match_the_documents(tokenizer):
    """The eval pass is in corpus order: its segment ids are the documents' own."""
    docs = short_docs(120)
    _, eval_docs = data.split_documents(docs, 0.2, seed=0)
    tokens = data.tokenize_documents(tokenizer, eval_docs)
    want = expected_segments(tokens, 64)
    _, evals = _batches(config(separate_documents=True), tokenizer, docs, n_train=0)
    got = np.concatenate([b["segment_ids"] for b in evals])[:len(want)]
    np.testing.assert_array_equal(got, want)


def _token_losses(model, params, rows):
    @jax.jit
    def run(params, rows):
        out = model.apply(params, rows["input_ids"], attention_mask=rows["attention_mask"],
                          segment_ids=rows.get("segment_ids"))
        return losses.cross_entropy(out.logits.astype(jnp.float32), rows["labels"])[0]

    return np.asarray(run(params, {k: jnp.asarray(v) for k, v in rows.items()}))


def _alone(batch):
    """Every document piece of every row as a row of its own, padded to the same length, and
    where each piece sits: (rows, [(row, start, stop)])."""
    length = batch["input_ids"].shape[1]
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    where = []
    for r, seg in enumerate(batch["segment_ids"]):
        for s in range(1, int(seg.max()) + 1):
            at = np.flatnonzero(seg == s)
            lo, hi = int(at[0]), int(at[-1]) + 1
            assert hi - lo == len(at)  # one contiguous run
            for k, fill in (("input_ids", PAD), ("attention_mask", 0),
                            ("labels", data.IGNORE_INDEX)):
                row = np.full(length, fill, np.int32)
                row[:hi - lo] = batch[k][r, lo:hi]
                rows[k].append(row)
            where.append((r, lo, hi))
    return {k: np.stack(v) for k, v in rows.items()}, where


def test_mlm_loss_of_a_row_is_the_sum_over_its_documents_alone(tokenizer):
    cfg = mlm_tiny.get_config()
    model = LongformerForMaskedLM(init_from.config_model(cfg))
    d = data.make_mlm_datasets(config(separate_documents=True), tokenizer, seed=1,
                               global_batch_size=4, documents=short_docs(120))
    batch = next(d.train)
    params = model.init(jax.random.key(0), jnp.asarray(batch["input_ids"]))
    packed = _token_losses(model, params, batch)
    rows, where = _alone(batch)
    alone = _token_losses(model, params, rows)
    assert len(where) > len(batch["input_ids"])  # rows hold several documents
    for i, (r, lo, hi) in enumerate(where):
        np.testing.assert_allclose(packed[r, lo:hi], alone[i, :hi - lo], atol=1e-5)
    per_row = np.zeros(len(packed))
    np.add.at(per_row, [r for r, _, _ in where], alone.sum(-1))
    np.testing.assert_allclose(packed.sum(-1), per_row, atol=1e-5, rtol=1e-6)
    # Without the segment ids the same rows attend across documents, and the loss differs.
    crossing = _token_losses(model, params, {k: v for k, v in batch.items()
                                             if k != "segment_ids"})
    assert np.abs(crossing.sum(-1) - per_row).max() > 1e-3


def test_tiny_mlm_run_with_separate_documents_trains(tmp_path):
    c = mlm_tiny.get_config()
    c.checkpoint.async_save = False
    c.update_from_flattened_dict({"data.separate_documents": True, "total_steps": 16,
                                  "optimizer.learning_rate": 1e-2, "schedule.warmup_steps": 2,
                                  "logging.every_steps": 4, "logging.eval_every_steps": 16,
                                  "checkpoint.every_steps": 16})
    last = train_lib.train_and_evaluate(c, str(tmp_path))
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    train = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(train) == 4 and train[-1] < train[0] - 0.3, train
    assert np.isfinite(last["eval"]["loss"])
