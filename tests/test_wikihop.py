"""WikiHop: the native file reader, the rows (token positions, markers, global attention, chunks),
the candidate-scoring head against numpy, the chunk averaging, accuracy and the leaderboard
file, and clear errors on bad records."""

import json

import jax
import ml_collections
import numpy as np
import pytest

from configs import wikihop as wikihop_config
from longformer import LongformerConfig, LongformerForCandidateScoring, files, tasks
from longformer.hf_checkpoint import init_params
from longformer.modeling import candidate_logits
from longformer.packing import NO_SCORE
from longformer.tasks import finetune, wikihop
from longformer.tokenizer import LongformerTokenizer

# Two questions: one whose answer ("york") is inside another candidate ("new york"), with
# candidates sharing words, a unicode subject and a support long enough for two chunks; one
# with two candidates whose supports fit one chunk.
RECORDS = [
    {"id": "WH_dev_0", "query": "country_of_citizenship zoë", "answer": "york",
     "candidates": ["new york", "york", "são paulo"],
     "supports": ["zoë lives in york , not new york .", "são paulo is big ."]},
    {"id": "WH_dev_1", "query": "country_of_citizenship ann", "answer": "lima",
     "candidates": ["oslo", "lima"], "supports": ["ann ( born 1950 ) lives in lima ."]},
]
ZOE, SAO = "Ġzo\u00c3\u00ab", "Ġs\u00c3\u00a3o"  # " zoë", " são" as byte-level tokens
WORDS = ("country _ of citizenship zoë ann new york são paulo oslo lima lives in not is big born "
         "1950 . , ( )")


@pytest.fixture(scope="module")
def tokenizer():
    # Every word above is one token (the corpus repeats each often enough for BPE to merge it).
    corpus = [" " + " ".join(WORDS.split()), "country_of_citizenship", "(born", "1950)", "york,",
              "york."] * 30
    return LongformerTokenizer.train(corpus, vocab_size=400, min_frequency=2)


def _encode(records, seq_len, slots, max_chunks=2, mode="question", tokenizer=None):
    config = ml_collections.ConfigDict({"data": {"seq_len": seq_len}})
    facts = {"max_candidates": slots, "max_chunks": max_chunks}
    return wikihop.encode(config, tokenizer, [dict(r) for r in records], facts, mode)[0]


def test_reader_tags_records_and_checks_answers(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(RECORDS, ensure_ascii=False), encoding="utf-8")
    records = wikihop.read_wikihop(str(path))
    assert records[1]["_where"] == f"{path} (record 1, id 'WH_dev_1')"
    assert [wikihop.check_record(r) for r in records] == [1, 1]
    bad = {**RECORDS[1], "answer": "rome"}
    path.write_text(json.dumps([RECORDS[0], bad]))
    with pytest.raises(finetune.DataError,
                       match=r"dev.json \(record 1, id 'WH_dev_1'\): answer 'rome' is not one"):
        wikihop.check_record(wikihop.read_wikihop(str(path))[1])
    path.write_text(json.dumps([RECORDS[0], ["not", "a", "record"]]))
    with pytest.raises(finetune.DataError, match=r"dev.json: record 1 is an array, not an object"):
        wikihop.read_wikihop(str(path))
    path.write_text(json.dumps({"data": RECORDS}))
    with pytest.raises(files.FileFormatError, match=r"dev.json: holds an object, not an array"):
        wikihop.read_wikihop(str(path))
    with pytest.raises(finetune.DataError, match=r"candidates must be at least two"):
        wikihop.check_record({**RECORDS[1], "candidates": ["lima"], "_where": "f (record 0)"})


def test_rows_by_hand(tokenizer):
    t = tokenizer.token_to_id
    assert all(t(w) is not None for w in ("Ġcountry", "citizenship", ZOE, SAO))
    prefix = ["<s>", "Ġcountry", "_", "of", "_", "citizenship", ZOE, "</s>",
              "<mask>", "Ġnew", "Ġyork", "<mask>", "Ġyork", "<mask>", SAO, "Ġpaulo"]
    # The supports as cleaned: " zoë lives in york, not new york." and " são paulo is big."
    supports = ["</s>", ZOE, "Ġlives", "Ġin", "Ġyork", ",", "Ġnot", "Ġnew", "Ġyork",
                ".", "</s>", "</s>", SAO, "Ġpaulo", "Ġis", "Ġbig", ".", "</s>"]
    seq_len = len(prefix) + 10  # 16 + 10: the 18 support tokens take two chunks, cut at 10
    rows = _encode(RECORDS, seq_len, 4, tokenizer=tokenizer)
    ids = rows["input_ids"]
    assert ids.shape == (2, 2, seq_len)
    assert ids[0, 0].tolist() == [t(w) for w in prefix + supports[:10]]
    tail = [t(w) for w in prefix + supports[10:]]
    assert ids[0, 1].tolist() == tail + [tokenizer.pad_token_id] * (seq_len - len(tail))
    # The markers before "new york", "york" and "são paulo", the same in both chunks; slot 4 is
    # filler.
    assert rows["candidate_positions"][0].tolist() == [[8, 11, 13, -1], [8, 11, 13, -1]]
    glob = rows["global_attention_mask"][0]
    assert (glob[:, :16] == 1).all() and (glob[:, 16:] == 0).all()  # the prefix, in each chunk
    assert rows["attention_mask"][0].sum(-1).tolist() == [seq_len, len(tail)]
    # Question 2: " ann (born 1950) lives in lima." fits one chunk; chunk 2 is filler.
    prefix2 = ["<s>", "Ġcountry", "_", "of", "_", "citizenship", "Ġann", "</s>", "<mask>",
               "Ġoslo", "<mask>", "Ġlima"]
    support2 = ["</s>", "Ġann", "Ġ(", "born", "Ġ1950", ")", "Ġlives", "Ġin", "Ġlima", ".",
                "</s>"]
    row = [t(w) for w in prefix2 + support2]
    assert ids[1, 0, :len(row)].tolist() == row
    assert rows["attention_mask"][1, 0].sum() == len(row)
    assert rows["candidate_positions"][1].tolist() == [[8, 10, -1, -1], [-1, -1, -1, -1]]
    assert ids[1, 1, :3].tolist() == [t("<s>"), t("</s>"), tokenizer.pad_token_id]
    assert rows["global_attention_mask"][1, 0].sum() == 12
    assert rows["global_attention_mask"][1, 1].sum() == 0
    assert rows["label"].tolist() == [1, 1]
    # One chunk allowed: question 1 loses the rest of its supports; 'none': nothing global.
    rows = _encode(RECORDS[:1], seq_len, 3, max_chunks=1, mode="none", tokenizer=tokenizer)
    assert rows["input_ids"].shape == (1, 1, seq_len) and rows["global_attention_mask"].sum() == 0
    assert rows["input_ids"][0, 0].tolist() == [t(w) for w in prefix + supports[:10]]
    with pytest.raises(finetune.DataError, match=r"WH_dev_0.*16 tokens, which leaves no room"):
        rec = {**RECORDS[0], "_where": "dev.json (record 0, id 'WH_dev_0')"}
        _encode([rec], 16, 3, tokenizer=tokenizer)


def test_chunk_average_by_hand():
    scores = np.arange(30, dtype=np.float32).reshape(1, 3, 10)  # chunk k, token j: 10 k + j
    positions = np.array([[[2, 5, -1, -1], [2, 5, 7, -1], [-1, -1, -1, -1]]])
    got = np.asarray(candidate_logits(scores, positions))
    # Candidate 0: (2 + 12) / 2; candidate 1: (5 + 15) / 2; candidate 2 only in chunk 2: 17;
    # candidate 3 in no chunk: NO_SCORE. Chunk 3 (filler) counts for nothing.
    np.testing.assert_allclose(got, [[7.0, 10.0, 17.0, NO_SCORE]])
    np.testing.assert_allclose(candidate_logits(scores[:, 0], positions[:, 0]),
                               [[2.0, 5.0, NO_SCORE, NO_SCORE]])


def test_head_against_numpy():
    cfg = LongformerConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=32,
                           max_position_embeddings=34, attention_window=4, max_global_tokens=6,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = LongformerForCandidateScoring(cfg)
    params = init_params(model, jax.random.key(0))
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 40, size=(2, 2, 12)).astype(np.int32)
    ids[:, :, 0] = 0
    ids[1, 1, 2:] = 1  # a filler chunk: <s> </s> then padding
    ids[1, 1, 1] = 2
    glob = np.zeros_like(ids)
    glob[:, :, :5] = 1
    glob[1, 1] = 0
    positions = np.array([[[1, 3, 4], [1, 3, 4]], [[2, 4, -1], [-1, -1, -1]]], np.int32)
    labels = np.array([2, 0], np.int32)
    out = model.apply(params, ids, attention_mask=(ids != 1).astype(np.int32),
                      global_attention_mask=glob, candidate_positions=positions, labels=labels,
                      output_hidden_states=True)
    h = np.asarray(out.hidden_states[-1]).reshape(2, 2, 12, 16)  # the encoder's output, per row
    w = params["params"]["answer_score"]
    token = h @ np.asarray(w["kernel"])[:, 0] + np.asarray(w["bias"])[0]
    want = np.stack([(token[0, 0, [1, 3, 4]] + token[0, 1, [1, 3, 4]]) / 2,
                     np.r_[token[1, 0, [2, 4]], NO_SCORE]])
    np.testing.assert_allclose(out.logits, want, rtol=1e-5, atol=1e-6)
    z = want - want.max(-1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
    np.testing.assert_allclose(out.loss, -(log_probs[0, 2] + log_probs[1, 0]) / 2, rtol=1e-5)
    # Without positions the head gives the per-token scores.
    np.testing.assert_allclose(model.apply(params, ids, attention_mask=(ids != 1).astype(
        np.int32), global_attention_mask=glob).logits, token, rtol=1e-5, atol=1e-6)
    # The task's path: the fine-tuning loop hands the head its `model_inputs`.
    batch = {"input_ids": ids, "attention_mask": (ids != 1).astype(np.int32),
             "global_attention_mask": glob, "candidate_positions": positions, "label": labels}
    out = finetune.apply(model, params, batch, inputs=wikihop.SPEC.model_inputs)
    loss, hits, _ = wikihop.score(out, batch, {})
    np.testing.assert_allclose(loss, [-log_probs[0, 2], -log_probs[1, 0]], rtol=1e-5)
    assert np.asarray(hits["accuracy"]).tolist() == [float(want[0].argmax() == 2),
                                                     float(want[1].argmax() == 0)]
    with pytest.raises(ValueError, match="does not take packed rows"):
        model.apply(params, ids[:, 0], segment_ids=np.ones_like(ids[:, 0]))


def test_accuracy_and_leaderboard_file(tokenizer):
    records = [dict(r) for r in RECORDS] + [{**RECORDS[1], "id": "WH_dev_2", "answer": "oslo"}]
    rows = _encode(records, 64, 3, tokenizer=tokenizer)
    evals = finetune.EvalSet(records, rows, None)
    logits = np.array([[0.1, 2.0, 0.3], [1.0, 0.5, NO_SCORE], [0.2, 0.1, NO_SCORE]], np.float32)
    outputs = [{"index": np.array([2, 0]), "valid": np.ones(2, np.int32),
                "logits": logits[[2, 0]], "loss": np.zeros(2)},
               {"index": np.array([1, -1]), "valid": np.array([1, 0]),
                "logits": logits[[1, 1]], "loss": np.zeros(2)}]
    result = wikihop.summarize(outputs, config=None, facts={}, evals=evals)
    # Right: question 0 (york) and question 2 (oslo); wrong: question 1 (oslo, not lima).
    assert result["accuracy"] == pytest.approx(2 / 3) and result["examples"] == 3
    assert result["chance"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)
    predictions = wikihop.predict(outputs, config=None, facts={}, evals=evals)
    assert predictions[1] == {"id": "WH_dev_1", "answer": "lima", "predicted": "oslo",
                              "scores": [1.0, 0.5]}
    assert wikihop.official_predictions(predictions) == {"WH_dev_0": "york", "WH_dev_1": "oslo",
                                                "WH_dev_2": "oslo"}


def test_builds_from_native_files_and_refuses_packing(tmp_path):
    c = wikihop_config.get_config()
    c.model.update(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                   attention_window=(16,), max_position_embeddings=66, vocab_size=400)
    c.data.seq_len = 64
    for split in ("train", "eval"):
        (tmp_path / f"{split}.json").write_text(json.dumps(RECORDS * 3, ensure_ascii=False))
        c.data[f"{split}_file"] = str(tmp_path / f"{split}.json")
    task = tasks.build(c, str(tmp_path / "run"))
    assert task.info["candidate slots"] == 3 and task.info["train questions"] == 6
    assert task.batch_spec["candidate_positions"][0] == (c.batch_size, 2, 3)
    c.data.max_candidates = 2
    with pytest.raises(finetune.DataError, match=r"id 'WH_dev_0'\): 3 candidates, more than"):
        tasks.build(c, str(tmp_path / "run2"))
    c.data.update(max_candidates=0, packing=True)
    with pytest.raises(ValueError, match="wikihop does not pack"):
        tasks.build(c, str(tmp_path / "run3"))


@pytest.mark.parametrize("mention_others", [True, False])
def test_synthetic_evidence(mention_others):
    for rec in wikihop.synthetic_records(20, 3, num_words=40, num_candidates=4, num_supports=2,
                                         mention_others=mention_others):
        words = " ".join(rec["supports"]).split()
        # `code` once, right before the answer; each other candidate once, or never.
        assert words.count("code") == 1 and words[words.index("code") + 1] == rec["answer"]
        assert words.count(rec["answer"]) == 1
        others = [c for c in rec["candidates"] if c != rec["answer"]]
        assert [words.count(c) for c in others] == [int(mention_others)] * len(others)
