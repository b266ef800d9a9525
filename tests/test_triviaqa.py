"""TriviaQA (Wikipedia setting): the native files read into (question, page) records, every answer
occurrence encoded at its token positions in every window, the distant-supervision loss, the
official EM/F1, and predictions per question over its pages. A tiny tokenizer makes each word one
token, so every expected position below is counted by hand."""

import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import triviaqa as triviaqa_config
from longformer import losses, metrics, tasks
from longformer.tasks import finetune, triviaqa

WORDS = ("which river city where alpha beta gamma delta Nile nile Nilesh São Paulo SÃO PAULO sao "
         "paulo Sao the of and is big").split()
EVIDENCE = {
    # words 0..14; the answer at words 1-2, 5-6, 8-9 and 13-14 (as written, upper, lower)
    "Sao_Paulo.txt": "alpha São Paulo is big SÃO PAULO and sao paulo beta gamma delta Sao Paulo",
    "Brazil.txt": "alpha beta gamma delta the city",  # no answer; two questions share it
    "Nile.txt": "alpha Nile beta Nilesh gamma nile delta",  # Nilesh is not the Nile
}
SAO_PAULO = {"Value": "São Paulo", "Aliases": ["São Paulo", "Sao Paulo"],
             "NormalizedValue": "são paulo", "NormalizedAliases": ["são paulo", "sao paulo"]}
ITEMS = [
    {"Question": "which city", "QuestionId": "tc_1", "Answer": SAO_PAULO,
     "EntityPages": [{"Filename": "Sao_Paulo.txt", "Title": "São Paulo"},
                     {"Filename": "Brazil.txt", "Title": "Brazil"}]},
    {"Question": "which river", "QuestionId": "tc_2",  # one alias only
     "Answer": {"Value": "Nile", "Aliases": ["Nile"], "NormalizedAliases": ["nile"]},
     "EntityPages": [{"Filename": "Nile.txt", "Title": "Nile"}]},
    {"Question": "where is the city", "QuestionId": "tc_3",  # its answer is nowhere
     "Answer": {"Value": "Lima", "Aliases": ["Lima"], "NormalizedAliases": ["lima"],
                "HumanAnswers": ["Lima, Peru"]},
     "EntityPages": [{"Filename": "Brazil.txt", "Title": "Brazil"}]},
]


def write_release(root, items, name="wikipedia-dev.json", **top):
    """The release's layout: qa/<name> and evidence/wikipedia/<Filename>."""
    (root / "qa").mkdir(exist_ok=True)
    (root / "evidence" / "wikipedia").mkdir(parents=True, exist_ok=True)
    for filename, text in EVIDENCE.items():
        (root / "evidence" / "wikipedia" / filename).write_text(text, encoding="utf-8")
    path = root / "qa" / name
    path.write_text(json.dumps({"Data": items, "Domain": "Wikipedia", "Version": 1.0, **top},
                               ensure_ascii=False, indent=2), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def tokenizer():
    from longformer.tokenizer import LongformerTokenizer
    tok = LongformerTokenizer.train([" ".join(WORDS)] * 20 + WORDS * 20, vocab_size=400,
                                    min_frequency=2)
    for text in list(EVIDENCE.values()) + [item["Question"] for item in ITEMS]:
        (ids, _), = finetune.encode_segments(tok, [text])
        assert len(ids) == len(text.split()), text  # one token per word: positions by hand
    return tok


def _config(**data):
    return ml_collections.ConfigDict({"data": {
        "seq_len": 16, "window_overlap": 4, "max_question_tokens": 8, "max_answer_spans": 3,
        "max_doc_tokens": 0, "max_answer_tokens": 30, **data}})


# ----------------------------------------------------------------------------- reading
def test_reads_one_record_per_question_and_page(tmp_path):
    records = triviaqa.read_wikipedia(write_release(tmp_path, ITEMS))
    assert [r["id"] for r in records] == ["tc_1--Sao_Paulo.txt", "tc_1--Brazil.txt",
                                          "tc_2--Nile.txt", "tc_3--Brazil.txt"]
    assert records[0]["context"] == EVIDENCE["Sao_Paulo.txt"]  # unicode intact
    assert records[0]["ground_truths"] == ["são paulo", "sao paulo"]
    assert records[3]["ground_truths"] == ["lima", "lima peru"]  # HumanAnswers normalised
    assert "tc_3" in records[3]["_where"] and "EntityPages[0]" in records[3]["_where"]
    # A verified file keeps only the questions marked as verified.
    marked = [{**item, "QuestionPartOfVerifiedEval": i == 1} for i, item in enumerate(ITEMS)]
    verified = triviaqa.read_wikipedia(
        write_release(tmp_path, marked, "verified-wikipedia-dev.json", VerifiedEval=True))
    assert [r["id"] for r in verified] == ["tc_2--Nile.txt"]


def test_bad_files_name_the_question_and_the_file(tmp_path):
    missing = {**ITEMS[1], "QuestionId": "tc_9", "EntityPages": [{"Filename": "Missing.txt"}]}
    path = write_release(tmp_path, [ITEMS[0], missing])
    with pytest.raises(finetune.DataError,
                       match=r"wikipedia-dev.json \(Data\[1\], QuestionId 'tc_9', EntityPages\[0\]"
                             r"\): evidence file 'Missing.txt': .*Missing.txt is missing"):
        triviaqa.read_wikipedia(path)
    with pytest.raises(finetune.DataError, match=r"Data\[0\], QuestionId 'tc_1'\): missing field "
                                                 r"'Question'"):
        triviaqa.read_wikipedia(write_release(tmp_path, [{k: v for k, v in ITEMS[0].items()
                                                          if k != "Question"}]))
    with pytest.raises(finetune.DataError, match="Domain is 'Web'"):
        triviaqa.read_wikipedia(write_release(tmp_path, ITEMS, Domain="Web"))
    # The test set has no answers: fine to predict, refused for training.
    test = triviaqa.read_wikipedia(write_release(tmp_path, [{k: v for k, v in ITEMS[1].items()
                                                             if k != "Answer"}]))
    assert test[0]["ground_truths"] is None and test[0]["aliases"] == []
    with pytest.raises(finetune.DataError, match=r"QuestionId 'tc_2'.*no Answer"):
        triviaqa.prepare(None, test, None)


# ----------------------------------------------------------------------------- answers and rows
def test_occurrences_are_case_insensitive_whole_words():
    text = "Sao\n Paulo and são paulo; campus US-based us."
    assert triviaqa.occurrences(text, ["São Paulo", "sao paulo", "us", "US", " "]) == [
        (0, 10), (15, 24), (33, 35), (42, 44)]  # not the "us" of "campus"


def test_every_answer_occurrence_in_every_window(tmp_path, tokenizer):
    records = triviaqa.read_wikipedia(write_release(tmp_path, ITEMS))
    rows, (examples, offsets, recs) = triviaqa.encode(_config(), tokenizer, records, {},
                                                      "question")
    # 15 words in windows of 16 - 2 (question) - 4 = 10 overlapping by 4: words 0-9 and 6-14;
    # the others fit in one window. Row position = 2 + 3 + word index - window start.
    assert examples.tolist() == [0, 0, 1, 2, 3]
    np.testing.assert_array_equal(rows["start_positions"], [
        [6, 10, 13], [7, 12, -1],  # words 1, 5, 8; then 8 and 13 (5-6 is cut by the window)
        [-1, -1, -1],  # Brazil: no answer, kept for evaluation
        [6, 10, -1],  # Nile at words 1 and 5, not Nilesh
        [-1, -1, -1]])
    np.testing.assert_array_equal(rows["end_positions"], [
        [7, 11, 14], [8, 13, -1], [-1, -1, -1], [6, 10, -1], [-1, -1, -1]])
    bos, sep, pad = tokenizer.bos_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    ids = rows["input_ids"][1]
    vocab = tokenizer.get_vocab()
    assert ids[:5].tolist() == [bos, vocab["which"], vocab["Ġcity"], sep, sep]
    assert ids[5 + 9:].tolist() == [sep, pad]  # words 6-14, then </s>
    text = recs[0]["context"]
    assert [text[offsets[1][p, 0]:offsets[1][q, 1]] for p, q in [(7, 8), (12, 13)]] == [
        "sao paulo", "Sao Paulo"]
    # Global attention: <s> and the question (2 words; 4 for "where is the city").
    np.testing.assert_array_equal(rows["global_attention_mask"][:, :6],
                                  [[1, 1, 1, 0, 0, 0]] * 4 + [[1, 1, 1, 1, 1, 0]])
    assert rows["global_attention_mask"][:, 6:].sum() == 0
    np.testing.assert_array_equal(rows["attention_mask"].sum(1), [16, 15, 12, 13, 14])

    # At most max_answer_spans per window (the first ones); max_doc_tokens cuts the document.
    few, _ = triviaqa.encode(_config(max_answer_spans=2), tokenizer, records[:1], {}, "question")
    np.testing.assert_array_equal(few["start_positions"], [[6, 10], [7, 12]])
    cut, _ = triviaqa.encode(_config(max_doc_tokens=8), tokenizer, records[:1], {}, "question")
    np.testing.assert_array_equal(cut["start_positions"], [[6, 10, -1]])  # words 0-7 only
    # Training leaves out the windows in which no answer occurs.
    triviaqa.prepare(None, records, None)
    train, (examples, _, _) = triviaqa.encode(_config(), tokenizer, records, {}, "question")
    assert examples.tolist() == [0, 0, 2]
    np.testing.assert_array_equal(train["start_positions"][:, 0], [6, 7, 6])


# ----------------------------------------------------------------------------- loss
def test_distant_supervision_loss_sums_the_occurrences():
    log = np.log
    start = jnp.asarray(log([[.1, .2, .3, .4]] * 3), jnp.float32)
    end = jnp.asarray(log([[.4, .3, .2, .1]] * 3), jnp.float32)
    starts = jnp.asarray([[1, 3, 1, -1], [-1] * 4, [4, 99, -1, -1]])  # a repeat; none; outside
    ends = jnp.asarray([[0, -1, -1, -1], [-1] * 4, [-1] * 4])
    loss = losses.distant_supervision_losses(start, end, starts, ends)
    want = (-math.log(.2 + .4) - math.log(.4)) / 2  # p(start in {1, 3}), p(end = 0)
    np.testing.assert_allclose(loss, [want, 0.0, 0.0], rtol=1e-6)
    grad = jax.grad(lambda s: losses.distant_supervision_losses(s, end, starts, ends).sum())(start)
    assert np.isfinite(grad).all() and not np.asarray(grad[1:]).any()
    # d/ds_i of -log sum_{k in S} p_k = p_i - [i in S] p_i / p(S), halved
    np.testing.assert_allclose(grad[0], np.array([.1, .2 - 1 / 3, .3, .4 - 2 / 3]) / 2,
                               atol=1e-6)
    # One occurrence: the usual QA cross-entropy.
    one = losses.distant_supervision_losses(start[:1], end[:1], jnp.asarray([[2, -1]]),
                                            jnp.asarray([[1, -1]]))
    np.testing.assert_allclose(one, losses.question_answering_losses(start[:1], end[:1], [2],
                                                                     [1]), rtol=1e-6)


# ----------------------------------------------------------------------------- metrics
def test_official_normalisation_and_scores():
    assert metrics.triviaqa_normalize("The Jean-Paul_Sartre!") == "jean paul sartre"
    assert metrics.normalize_answer("The Jean-Paul_Sartre!") == "jeanpaulsartre"  # SQuAD's
    assert metrics.triviaqa_normalize("\u2018Nile\u2019 (an Egyptian river)") == (
        "nile egyptian river")
    assert metrics.triviaqa_normalize("São  Paulo") == "são paulo"
    for text in ["The Jean-Paul_Sartre!", "a, b; an´the`c", "İstanbul — “x”"]:
        norm = metrics.triviaqa_normalize(text)
        assert metrics.normalize_answer(norm) == norm  # what lets squad_scores compare them
    scores = metrics.triviaqa_scores(
        ["Sao Paulo city", "the Nile", "Cairo", "jean paul"],
        [["são paulo", "sao paulo"], ["nile"], ["giza"], ["jean-paul sartre", "sartre"]])
    # EM: 0, 1, 0, 0. F1: 2 of 3 predicted words in 2 gold ones: 2 * (2/3) * 1 / (2/3 + 1) =
    # 0.8; 1; 0; "jean paul" against "jean paul sartre": 2 * 1 * (2/3) / (1 + 2/3) = 0.8.
    assert scores["exact_match"] == pytest.approx(25.0)
    assert scores["f1"] == pytest.approx(100 * (0.8 + 1 + 0 + 0.8) / 4)
    assert metrics.triviaqa_ground_truths({"NormalizedAliases": ["us", "usa"],
                                           "HumanAnswers": ["U.S.A."]}) == ["us", "usa", "u s"]
    # (the official rule really does read the last "a" of "U.S.A." as an article)


# ----------------------------------------------------------------------------- predictions
def test_predicts_per_question_the_best_span_over_its_pages(tmp_path, tokenizer):
    records = triviaqa.read_wikipedia(write_release(tmp_path, ITEMS))
    config = _config()
    rows, extra = triviaqa.encode(config, tokenizer, records, {}, "question")
    evals = finetune.EvalSet(records, rows, extra)
    n, length = rows["input_ids"].shape
    start = np.full((n, length), -10.0, np.float32)
    end = np.full((n, length), -10.0, np.float32)
    for row, s, e, logit in [(1, 12, 13, 6.0),  # tc_1: "Sao Paulo" in the second window
                             (0, 9, 9, 4.0),  # a worse span in its first window ("big")
                             (2, 10, 10, 5.0),  # and in the Brazil page ("city")
                             (3, 10, 10, 5.0),  # tc_2: "nile"
                             (4, 7, 8, 5.0)]:  # tc_3: "alpha beta", wrong
        start[row, s], end[row, e] = logit, logit
    outputs = [{"index": np.arange(n), "valid": np.ones(n, np.int32), "start_logits": start,
                "end_logits": end, "loss": np.arange(n, dtype=np.float32),
                "answered": (rows["start_positions"] >= 0).any(1).astype(np.int32)}]
    result = triviaqa.summarize(outputs, config=config, facts={}, evals=evals)
    assert result["questions"] == 3 and result["loss"] == pytest.approx((0 + 1 + 3) / 3)
    assert result["exact_match"] == pytest.approx(200 / 3)
    assert result["f1"] == pytest.approx(200 / 3)
    predicted = triviaqa.predict(outputs, config=config, facts={}, evals=evals)
    assert triviaqa.official_predictions(predicted) == {"tc_1": "Sao Paulo", "tc_2": "nile",
                                                        "tc_3": "alpha beta"}
    assert predicted[0]["document"] == "Sao_Paulo.txt" and predicted[0]["score"] == 12.0
    # A question some of whose windows were not evaluated gets no prediction.
    part = [{k: v[1:] for k, v in outputs[0].items()}]
    assert [p["id"] for p in triviaqa.predict(part, config=config, facts={}, evals=evals)] == [
        "tc_2", "tc_3"]


def test_the_config_builds_on_native_files(tmp_path, tokenizer):
    tokenizer.save(tmp_path / "tokenizer")
    c = triviaqa_config.get_config()
    c.tokenizer = str(tmp_path / "tokenizer")
    c.data.train_file = write_release(tmp_path, ITEMS, "wikipedia-train.json")
    c.data.eval_file = write_release(tmp_path, ITEMS)
    c.data.update(seq_len=16, max_question_tokens=8, window_overlap=4)
    c.model.update(max_position_embeddings=18, attention_window=(4, 4, 4), max_global_tokens=9)
    task = tasks.build(c, str(tmp_path / "run"))
    assert task.info["train question-page pairs"] == 4 and task.info["eval windows"] == 5
    assert task.info["train windows"] == 3  # the answerless ones left out
    assert task.info["global attention"] == "question"
