"""HotpotQA: the native reader, the encoded rows (markers, labels, global attention, truncation)
against positions worked out by hand, the head's loss against its four terms computed here, the
constrained decoding and the official metrics on hand-scored cases."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from longformer import LongformerConfig, LongformerForHotpotQA, metrics
from longformer.tasks import finetune, hotpotqa
from longformer.tokenizer import LongformerTokenizer

# "Bob" answers A twice over: first in a sentence that is no supporting fact (P0 s1), then in
# one that is (P1 s0); ["Ann", 5] points past Ann's two sentences, as some real facts do.
A = {"_id": "a", "question": "who met Ann", "answer": "Bob", "type": "bridge", "level": "easy",
     "supporting_facts": [["Bob", 0], ["Ann", 0], ["Ann", 5]],
     "context": [["Ann", ["Ann likes red .", "Bob likes blue ."]],
                 ["Bob", ["Bob met Ann .", "Bob is tall ."]]]}
B = {"_id": "b", "question": "Which café did Pina dance in?", "answer": "Café Müller",
     "type": "bridge", "level": "hard", "supporting_facts": [["Café Müller", 0]],
     "context": [["Café Müller", ["Pina Bausch danced in Café Müller .", "日本語 text 🙂 ."]]]}
C = {**A, "_id": "c", "question": "did Ann meet Bob", "answer": "yes", "type": "comparison"}
D = {**A, "_id": "d", "question": "is Bob red", "answer": "no", "type": "comparison"}


def _config(seq_len=40, **data):
    return ml_collections.ConfigDict({"data": {"seq_len": seq_len, "max_question_tokens": 8,
                                               "max_sentences": 0, "max_answer_tokens": 10,
                                               **data}})


@pytest.fixture(scope="module")
def tokenizer():
    texts = [t for r in (A, B, C, D) for t in [r["question"]] + [
        x for title, sents in r["context"] for x in [title, *sents]]]
    return LongformerTokenizer.train(texts * 20, vocab_size=400, min_frequency=1)


@pytest.fixture()
def records(tmp_path):
    path = tmp_path / "hotpot_dev_distractor_v1.json"
    path.write_text(json.dumps([A, B, C, D], ensure_ascii=False), encoding="utf-8")
    return hotpotqa.read_hotpot(str(path))


def _encode(records, tokenizer, config=None, mode="default"):
    config = config or _config()
    facts = hotpotqa.prepare(config, records, None)
    return (*hotpotqa.encode(config, tokenizer, records, facts, mode), facts)


# ----------------------------------------------------------------------------- reading, encoding
def test_rows_by_hand(records, tokenizer):
    # Every word of A is one token here, so its row can be written out by hand:
    #  0 <s>  1-3 who met Ann  4 </s> | 5 <unk> 6 Ann 7 </s> | 8-11 Ann likes red . 12 </s>
    #  13-16 Bob likes blue . 17 </s> | 18 <unk> 19 Bob 20 </s> | 21-24 Bob met Ann . 25 </s>
    #  26-29 Bob is tall . 30 </s>
    for text in [A["question"], "Ann", "Bob", *A["context"][0][1], *A["context"][1][1]]:
        (ids, _), = finetune.encode_segments(tokenizer, [text])
        assert len(ids) == len(text.split()), text
    rows, _, facts = _encode(records, tokenizer)
    assert facts == {"max_sentences": 4, "max_paragraphs": 2}
    ids = rows["input_ids"][0]
    bos, sep, unk = tokenizer.bos_token_id, tokenizer.sep_token_id, tokenizer.unk_token_id
    assert ids[[0, 4, 5, 7, 12, 17, 18, 20, 25, 30]].tolist() == [bos, sep, unk, sep, sep, sep,
                                                                   unk, sep, sep, sep]
    assert rows["attention_mask"][0].sum() == 31
    assert rows["sentence_positions"][0].tolist() == [12, 17, 25, 30]
    assert rows["paragraph_positions"][0].tolist() == [5, 18]
    # ("Bob", 0) and ("Ann", 0) label their sentences; ("Ann", 5) labels nothing.
    assert rows["sentence_labels"][0].tolist() == [1, 0, 1, 0]
    assert rows["paragraph_labels"][0].tolist() == [1, 1]
    # The answer's occurrence in a supporting sentence (21), not the first in the row (13).
    assert (rows["start_positions"][0], rows["end_positions"][0], rows["answer_type"][0]) == (
        21, 21, 0)
    assert np.flatnonzero(rows["global_attention_mask"][0]).tolist() == [0, 1, 2, 3, 4, 5, 12,
                                                                         17, 18, 25, 30]
    # yes / no: the type, no span; "question": <s>, the question and its </s> only.
    assert rows["answer_type"][2:].tolist() == [1, 2]
    assert (rows["start_positions"][2:] == -100).all() and (rows["end_positions"][2:] == -100
                                                            ).all()
    plain, _, _ = _encode(records, tokenizer, mode="question")
    assert np.flatnonzero(plain["global_attention_mask"][0]).tolist() == [0, 1, 2, 3, 4]
    # B (one paragraph, two sentences): the empty slots are -1 / ignored.
    assert rows["sentence_positions"][1, 2:].tolist() == [-1, -1]
    assert rows["paragraph_positions"][1, 1] == -1 and rows["paragraph_labels"][1, 1] == -100


def test_truncation_keeps_whole_sentences(records, tokenizer):
    # 20 tokens hold the question, Ann's header and both her sentences (18 tokens); Bob's header
    # (3 more) does not fit, so the answer falls back to its occurrence outside the facts.
    rows, _, _ = _encode(records[:1], tokenizer, _config(seq_len=20))
    assert rows["attention_mask"][0].sum() == 18
    assert rows["sentence_positions"][0].tolist() == [12, 17, -1, -1]
    assert rows["paragraph_positions"][0].tolist() == [5, -1]
    assert rows["sentence_labels"][0].tolist() == [1, 0, -100, -100]
    assert rows["paragraph_labels"][0].tolist() == [1, -100]
    assert (rows["start_positions"][0], rows["end_positions"][0]) == (13, 13)


def test_decoding_round_trips_unicode_spans(records, tokenizer):
    config = _config(seq_len=64)
    rows, extra, _ = _encode(records, tokenizer, config)
    n, length = rows["input_ids"].shape
    start, end = np.full((n, length), -10.0), np.full((n, length), -10.0)
    start[np.arange(n), np.maximum(rows["start_positions"], 0)] = 5.0
    end[np.arange(n), np.maximum(rows["end_positions"], 0)] = 5.0
    types = np.eye(3)[np.maximum(rows["answer_type"], 0)] * 4
    outputs = [{"index": np.arange(n), "valid": np.ones(n, np.int32), "start_logits": start,
                "end_logits": end, "type_logits": types, "loss": np.zeros(n),
                "sentence_logits": np.where(rows["sentence_labels"] == 1, 2.0, -2.0),
                "paragraph_logits": np.where(rows["paragraph_labels"] == 1, 1.0, -1.0)}]
    evals = finetune.EvalSet(records, rows, extra)
    answers, sp, _ = hotpotqa.decode(outputs, config=config, evals=evals)
    assert answers == {"a": "Bob", "b": "Café Müller", "c": "yes", "d": "no"}
    assert sp["a"] == [["Ann", 0], ["Bob", 0]] and sp["b"] == [["Café Müller", 0]]
    scores = hotpotqa.summarize(outputs, config=config, facts={}, evals=evals)
    # Every answer right; A, C, D miss the unanswerable ("Ann", 5): sp precision 1, recall 2/3.
    assert scores["em"] == 100.0 and scores["sp_em"] == 25.0
    assert scores["sp_f1"] == pytest.approx(100 * (3 * 0.8 + 1) / 4)
    assert hotpotqa.official_predictions(hotpotqa.predict(outputs, config=config, facts={}, evals=evals)
                             )["answer"] == answers


def test_bad_records_name_file_and_id(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([A, {k: v for k, v in B.items() if k != "question"}]))
    records = hotpotqa.read_hotpot(str(path))
    with pytest.raises(finetune.DataError,
                       match=r"train.json \(item 1, _id 'b'\): missing field 'question'"):
        hotpotqa.prepare(_config(), records, None)
    bad = {**A, "supporting_facts": [["Ann", "0"]]}
    with pytest.raises(finetune.DataError, match=r"supporting fact \['Ann', '0'\] is not"):
        hotpotqa.check_record({**bad, "_where": "x"}, need_labels=True)
    test_set = {k: v for k, v in A.items() if k not in ("answer", "supporting_facts")}
    hotpotqa.check_record({**test_set, "_where": "x"}, need_labels=False)  # the test set's
    with pytest.raises(finetune.DataError, match="missing field 'answer'"):
        hotpotqa.check_record({**test_set, "_where": "x"}, need_labels=True)


# ----------------------------------------------------------------------------- the head
def test_head_loss_is_its_four_terms(records, tokenizer):
    rows, _, _ = _encode(records, tokenizer, _config(seq_len=48))
    cfg = LongformerConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=32,
                           max_position_embeddings=50, attention_window=(8,),
                           max_global_tokens=16, num_labels=3)
    model = LongformerForHotpotQA(cfg)
    batch = {k: jnp.asarray(v) for k, v in rows.items()}

    @jax.jit
    def run(batch):
        params = model.init(jax.random.key(0), batch["input_ids"],
                            sentence_positions=batch["sentence_positions"],
                            paragraph_positions=batch["paragraph_positions"])
        out = finetune.apply(model, params, batch, inputs=hotpotqa.SPEC.model_inputs)
        labelled = model.apply(params, batch["input_ids"], attention_mask=batch["attention_mask"],
                               global_attention_mask=batch["global_attention_mask"],
                               **{k: batch[k] for k in (
                                   "sentence_positions", "paragraph_positions", "start_positions",
                                   "end_positions", "answer_type", "sentence_labels",
                                   "paragraph_labels")})
        return out, labelled.loss, hotpotqa.score(out, batch, {})[0]

    out, loss, per_example = run(batch)
    o = jax.tree.map(np.asarray, out)
    assert (o.start_logits[rows["attention_mask"] == 0] == -1e9).all()
    assert (o.sentence_logits[rows["sentence_positions"] < 0] == -1e9).all()

    def ce(logits, label):
        if label < 0:
            return 0.0
        z = logits.astype(np.float64)
        return float(np.log(np.exp(z - z.max()).sum()) + z.max() - z[label])

    def bce(logits, labels):
        keep = labels >= 0
        x, y = logits[keep].astype(np.float64), labels[keep]
        return float(np.mean(np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0) - x * y))

    want = [(ce(o.start_logits[i], rows["start_positions"][i])
             + ce(o.end_logits[i], rows["end_positions"][i])) / 2
            + ce(o.type_logits[i], rows["answer_type"][i])
            + bce(o.sentence_logits[i], rows["sentence_labels"][i])
            + bce(o.paragraph_logits[i], rows["paragraph_labels"][i]) for i in range(4)]
    np.testing.assert_allclose(np.asarray(per_example), want, rtol=1e-5)
    np.testing.assert_allclose(float(loss), np.mean(want), rtol=1e-5)
    with pytest.raises(ValueError, match="packed rows"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), batch["input_ids"],
                                          segment_ids=batch["attention_mask"]))


# ----------------------------------------------------------------------------- decoding, metrics
def test_spans_stay_in_one_sentence_and_facts_in_two_paragraphs():
    group = np.array([-1, 0, 0, -1, 1, 1, -1])
    start = np.array([9, 0, 4, 9, 0, 1, 0], float)  # 9s: markers, never in a span
    end = np.array([9, 1, 0, 9, 5, 0, 9], float)
    # (2, 4) = 4 + 5 would cross the marker at 3; within one sentence (4, 4) = 0 + 5 beats
    # (2, 2) = 4 + 0 and (1, 1) = 0 + 1.
    assert hotpotqa.best_span(start, end, group, max_tokens=10) == (4, 4)
    assert hotpotqa.best_span(np.zeros(3), np.zeros(3), -np.ones(3, int), 5) == (-1, -1)
    sentence_paragraph = np.array([0, 0, 1, 1, 2])
    picked = hotpotqa.supporting(np.array([3.0, -1, -2, 0.5, -4]), np.array([2.0, 1, 5]),
                                 sentence_paragraph)
    assert picked == [0, 4]  # paragraphs 2 and 0; paragraph 2 has no positive: its best


def test_official_metrics_by_hand():
    assert metrics.hotpot_answer_scores("yes", "yes") == (1.0, 1.0, 1.0, 1.0)
    assert metrics.hotpot_answer_scores("yes it is", "yes") == (0.0, 0.0, 0.0, 0.0)
    assert metrics.f1("yes it is", "yes") == 0.5  # SQuAD's F1 gives credit where HotpotQA's not
    em, f1, p, r = metrics.hotpot_answer_scores("the Eiffel Tower", "Eiffel Tower in Paris")
    assert (em, p, r) == (0.0, 1.0, 0.5) and f1 == pytest.approx(2 / 3)
    gold_sp = [["A", 0], ["B", 1], ["A", 5], ["A", 0]]  # a duplicate counts once
    em, f1, p, r = metrics.hotpot_sp_scores([["A", 0], ["B", 1], ["C", 2]], gold_sp)
    assert em == 0.0 and p == r == f1 == pytest.approx(2 / 3)
    assert metrics.hotpot_sp_scores([], []) == (1.0, 0.0, 0.0, 0.0)
    gold = [{"_id": "1", "answer": "Eiffel Tower in Paris", "supporting_facts": gold_sp},
            {"_id": "2", "answer": "no", "supporting_facts": [["A", 0]]}]
    scores = metrics.hotpot_scores({"1": "the Eiffel Tower"}, {"1": [["A", 0], ["B", 1],
                                                                      ["C", 2]]}, gold)
    # Question 1: joint precision 1 x 2/3, recall 1/2 x 2/3, F1 4/9; question 2 is missing: 0.
    assert scores["f1"] == pytest.approx(100 * (2 / 3) / 2)
    assert scores["sp_f1"] == pytest.approx(100 * (2 / 3) / 2)
    assert scores["joint_prec"] == pytest.approx(100 * (2 / 3) / 2)
    assert scores["joint_recall"] == pytest.approx(100 * (1 / 3) / 2)
    assert scores["joint_f1"] == pytest.approx(100 * (4 / 9) / 2)
    assert scores["em"] == scores["sp_em"] == scores["joint_em"] == 0.0
    perfect = metrics.hotpot_scores({"2": "No"}, {"2": [["A", 0]]}, gold[1:])
    assert perfect["joint_em"] == perfect["joint_f1"] == 100.0


def test_synthetic_records_are_native_and_their_facts_the_evidence():
    records = hotpotqa.synthetic_records(20, 3)
    assert records == hotpotqa.synthetic_records(20, 3)  # a function of the seed
    for r in records:
        hotpotqa.check_record({**r, "_where": "synthetic"}, need_labels=True)
        context = dict((title, sents) for title, sents in r["context"])
        evidence = [context[title][j] for title, j in r["supporting_facts"]]
        assert evidence[0].startswith("the secret colour is ")
        assert evidence[1].startswith("the secret is ")
        want = {"kept": "yes", "lost": "no"}[evidence[1].split()[3]]
        assert r["answer"] == (evidence[0].split()[4] if "colour" in r["question"] else want)
