"""Fine-tuning tasks: label alignment and QA span mapping on tricky text, clear errors on bad
data, fine-tuning from our own MLM checkpoint, and a short run of every task that learns its
synthetic data well above chance (tiny models, CPU)."""

import json
import os

import ml_collections
import numpy as np
import pytest

from configs import classify, multiple_choice, token_classify
from configs import qa as qa_config
from longformer import tasks, train_lib
from longformer.tasks import finetune, qa
from longformer.tasks import token_classification as tc
from longformer.tokenizer import LongformerTokenizer

TRICKY_WORDS = ["Café", "naïve", "🙂🚀", "Größe", "日本語の文章", "x", "", "New York", "a—b",
                "São", "Paulo", "(", "U.S.", ")", "ångström", "\u00a0nbsp", "end."]


def tiny(module, total_steps=200, **overrides):
    """A task config with a tiny model (2 layers, hidden 32, windows 16, 128 tokens)."""
    c = module.get_config()
    c.model.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, attention_window=(16, 16), max_position_embeddings=130,
                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    c.data.seq_len = 128
    c.data.synthetic.update(num_train=1000, num_eval=64, num_words=100)
    c.update(batch_size=16, total_steps=total_steps)
    c.optimizer.learning_rate = 3e-3
    c.schedule.warmup_steps = 10
    c.checkpoint.update(every_steps=total_steps, async_save=False)
    c.logging.update(every_steps=50, eval_every_steps=total_steps)
    c.update_from_flattened_dict(overrides)  # dotted keys: 'model.attention_window'
    return c


@pytest.fixture(scope="module")
def tokenizer():
    from longformer.tasks import synthetic
    corpus = [" ".join(TRICKY_WORDS)] * 4 + [" ".join(synthetic.FILLER)] * 4
    return LongformerTokenizer.train(corpus, vocab_size=1000, min_frequency=2)


# ----------------------------------------------------------------------------- alignment
def test_word_labels_round_trip_on_tricky_text(tokenizer):
    words = TRICKY_WORDS
    text = " ".join(words)
    (ids, offsets), = finetune.encode_segments(tokenizer, [text])
    owner = tc.align(words, offsets)
    first = tc.first_subtokens(owner)
    for w, word in enumerate(words):
        pieces = np.flatnonzero(owner == w)
        if not word.strip():
            assert first[pieces].sum() <= 1
            continue
        assert first[pieces].sum() == 1, word  # exactly one labelled piece per word
        start = sum(len(x) + 1 for x in words[:w])
        covered = text[offsets[pieces, 0].min():offsets[pieces, 1].max()]
        assert covered == word.strip() or covered == word, (word, covered)
        assert offsets[pieces, 0].min() >= start and offsets[pieces, 1].max() <= start + len(word)
    # Labels put on first pieces come back per word; a word with no token reads as O.
    tags = [f"B-X{i}" for i in range(len(words))]
    token_tags = {int(t): tags[owner[t]] for t in np.flatnonzero(first)}
    back = [next((token_tags[int(t)] for t in np.flatnonzero((owner == w) & first)), "O")
            for w in range(len(words))]
    assert [b for b, w in zip(back, words) if w.strip()] == [
        t for t, w in zip(tags, words) if w.strip()]
    assert back[words.index("")] == "O"


def test_long_documents_are_windowed_with_max_context(tokenizer):
    words = (TRICKY_WORDS * 4)[:60]
    tags = ["B-PER" if i % 3 == 0 else "O" for i in range(len(words))]
    rec = {"tokens": words, "tags": tags, "_where": "test:1"}
    c = ml_collections.ConfigDict({"data": {"seq_len": 24, "window_overlap": 8}})
    rows, sources = tc.encode(c, tokenizer, [rec], {"labels": ["O", "B-PER"]}, "none")
    assert len(rows["input_ids"]) > 3  # several overlapping windows
    spans = finetune.windows(100, 22, 8)
    assert spans[0] == (0, 22) and spans[1][0] == 14 and spans[-1][1] == 100
    assert all(b[0] < a[1] for a, b in zip(spans, spans[1:]))  # consecutive ones overlap
    for w, (row, pos) in enumerate(sources[0]):
        if row < 0:
            assert not words[w].strip()
            continue
        assert rows["labels"][row, pos] == (1 if tags[w] == "B-PER" else 0)
        # The chosen window sees the word with context on both sides when one can.
        assert 1 <= pos <= 22


# ----------------------------------------------------------------------------- QA spans
def _qa_config(seq_len=24, overlap=6, question=4):
    return ml_collections.ConfigDict({"data": {"seq_len": seq_len, "window_overlap": overlap,
                                               "max_question_tokens": question}})


def _fake_outputs(rows, hits):
    """Eval outputs whose logits pick (start, end) in the rows of `hits` {row: (s, e)}."""
    n, length = rows["input_ids"].shape
    start = np.full((n, length), -10.0, np.float32)
    end = np.full((n, length), -10.0, np.float32)
    for r, (s, e) in hits.items():
        start[r, s], end[r, e] = 5.0, 5.0
    return [{"index": np.arange(n), "valid": np.ones(n, np.int32), "start_logits": start,
             "end_logits": end, "loss": np.zeros(n)}]


def test_qa_answers_map_through_offsets_and_back(tokenizer):
    context = " ".join(TRICKY_WORDS)
    for answer in ["Café", "🙂🚀", "Größe", "日本語の文章", "New York", "São Paulo", "U.S.", "end."]:
        s = context.index(answer)
        (_, offsets), = finetune.encode_segments(tokenizer, [context])
        first, last = qa.char_span_to_tokens(offsets, s, s + len(answer))
        assert context[offsets[first, 0]:offsets[last, 1]] == answer
        rec = {"question": "where ?", "context": context, "_where": "t:1",
               "answers": [{"text": answer, "answer_start": s}]}
        rows, (examples, feature_offsets, golds) = qa.encode(
            _qa_config(seq_len=96, question=8), tokenizer, [rec], {}, "question")
        inside = np.flatnonzero(rows["start_positions"] > 0)
        assert len(inside) >= 1
        r = int(inside[0])
        hits = {r: (rows["start_positions"][r], rows["end_positions"][r])}
        decoded, _ = qa.decode(_fake_outputs(rows, hits), feature_example=examples,
                               feature_offsets=feature_offsets, records=[rec], max_tokens=30)
        assert decoded[0][0] == answer


def test_qa_answers_at_window_boundaries(tokenizer):
    from longformer.tasks import synthetic
    words = list(synthetic.FILLER[:40])
    context = " ".join(words)
    c = _qa_config()
    (q, _), (ids, offsets) = finetune.encode_segments(tokenizer, ["where ?", context])
    q = q[:c.data.max_question_tokens]  # the question is cut to its budget
    room = c.data.seq_len - len(q) - 4
    spans = finetune.windows(len(ids), room, c.data.window_overlap)
    assert len(spans) >= 3
    starts = np.cumsum([0] + [len(w) + 1 for w in words])

    def word_at(token):
        return int(np.searchsorted(starts, offsets[token, 0], side="right") - 1)

    boundary = word_at(spans[0][1] - 1)  # the word that ends window 0's context
    assert word_at(spans[0][1]) == boundary + 1

    def record(first_word, n_words):
        answer = " ".join(words[first_word:first_word + n_words])
        start = len(" ".join(words[:first_word])) + (1 if first_word else 0)
        assert context[start:start + len(answer)] == answer
        return {"question": "where ?", "context": context, "_where": "t:1",
                "answers": [{"text": answer, "answer_start": start}]}, answer

    for first_word, n_words, in_window_0 in [(boundary, 1, True), (boundary, 2, False),
                                             (word_at(spans[1][0]), 1, True), (0, 1, True),
                                             (len(words) - 1, 1, False)]:
        rec, answer = record(first_word, n_words)
        rows, (examples, feature_offsets, _) = qa.encode(c, tokenizer, [rec], {}, "question")
        assert (rows["start_positions"][0] > 0) == in_window_0, (first_word, n_words)
        inside = np.flatnonzero(rows["start_positions"] > 0)
        assert len(inside), answer  # the overlap always holds it whole somewhere
        for r in inside:
            offs = feature_offsets[r]
            s, e = rows["start_positions"][r], rows["end_positions"][r]
            assert context[offs[s, 0]:offs[e, 1]] == answer
        # The best span over windows is found whichever window scores it.
        r = int(inside[-1])
        decoded, _ = qa.decode(
            _fake_outputs(rows, {r: (rows["start_positions"][r], rows["end_positions"][r])}),
            feature_example=examples, feature_offsets=feature_offsets, records=[rec],
            max_tokens=30)
        assert decoded[0][0] == answer
        # Global attention: <s> and the question, in every window.
        assert (rows["global_attention_mask"].sum(1) == len(q) + 1).all()


def test_best_span_respects_length_and_order():
    offsets = np.array([[-1, -1]] + [[i, i + 1] for i in range(6)], np.int32)
    start = np.array([9, 0, 5, 0, 0, 0, 0], np.float32)  # the <s> score is never used
    end = np.array([9, 4, 0, 0, 0, 3, 0], np.float32)  # end 1 is before the best start
    assert qa.best_span(start, end, offsets, max_tokens=30)[1:] == (2, 5)
    assert qa.best_span(start, end, offsets, max_tokens=3)[1:] == (2, 2)  # end 5 is too far


# ----------------------------------------------------------------------------- bad data
def _write(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                            for line in lines))
    return str(path)


def _build_with(tmp_path, module, train, evals, **overrides):
    c = tiny(module, **overrides)
    c.data.train_file = _write(tmp_path / "train.jsonl", train)
    c.data.eval_file = _write(tmp_path / "dev.jsonl", evals)
    return tasks.build(c, str(tmp_path / "run"))


def test_bad_classification_data_names_file_and_line(tmp_path):
    good = [{"text": "good film", "label": "pos"}, {"text": "bad film", "label": "neg"}]
    with pytest.raises(finetune.DataError, match=r"train.jsonl:2: missing field 'text'"):
        _build_with(tmp_path, classify, [good[0], {"label": "pos"}], good)
    with pytest.raises(finetune.DataError, match=r"dev.jsonl:3: label 'meh' is not one of"):
        _build_with(tmp_path, classify, good, good + [{"text": "so so", "label": "meh"}])
    with pytest.raises(finetune.DataError, match=r"train.jsonl:2: not valid JSON"):
        _build_with(tmp_path, classify, [good[0], '{"text": "oops"'], good)
    with pytest.raises(finetune.DataError, match=r"dev.jsonl:1: field 'label' must be a number"):
        _build_with(tmp_path, classify, [{"text": "a", "label": 1.5}],
                    [{"text": "b", "label": "high"}], **{"data.problem": "regression"})
    task = _build_with(tmp_path, classify, good * 8, good)  # and good data builds
    assert task.info["labels"] == 2


def test_bad_token_classification_data(tmp_path):
    good = {"tokens": ["Ann", "lives", "here"], "tags": ["B-PER", "O", "O"]}
    with pytest.raises(finetune.DataError, match=r"train.jsonl:2: 2 tokens but 3 tags"):
        _build_with(tmp_path, token_classify, [good, {"tokens": ["a", "b"], "tags": ["O"] * 3}],
                    [good])
    with pytest.raises(finetune.DataError, match=r"dev.jsonl:1: tag 'B-LOC' is not in the tag"):
        _build_with(tmp_path, token_classify, [good],
                    [{"tokens": ["Rome"], "tags": ["B-LOC"]}])


def test_bad_multiple_choice_data(tmp_path):
    good = {"question": "q?", "context": "c", "choices": ["a", "b"], "label": 1}
    with pytest.raises(finetune.DataError, match=r"dev.jsonl:2: label 2 is outside the 2 choices"):
        _build_with(tmp_path, multiple_choice, [good], [good, {**good, "label": 2}])
    with pytest.raises(finetune.DataError, match=r"train.jsonl:1: missing field 'choices'"):
        _build_with(tmp_path, multiple_choice, [{"question": "q", "context": "c", "label": 0}],
                    [good])


def test_bad_qa_data(tmp_path):
    good = {"id": "q1", "question": "who?", "context": "Ann met Bob.",
            "answers": [{"text": "Bob", "answer_start": 8}]}
    with pytest.raises(finetune.DataError,
                       match=r"dev.jsonl:2: answer 'Bob' is not at answer_start=4"):
        _build_with(tmp_path, qa_config, [good],
                    [good, {**good, "answers": [{"text": "Bob", "answer_start": 4}]}])
    with pytest.raises(finetune.DataError, match=r"train.jsonl:1: no answer occurs in the context"):
        _build_with(tmp_path, qa_config, [{**good, "answers": ["Carl"]}], [good])
    with pytest.raises(finetune.DataError, match=r"train.jsonl:1: missing field 'question'"):
        _build_with(tmp_path, qa_config, [{k: v for k, v in good.items() if k != "question"}],
                    [good])
    # SQuAD-format JSON: the error names the line of the question's id.
    squad = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{
        "context": "Ann met Bob.", "qas": [
            {"id": "ok", "question": "who?", "answers": [{"text": "Bob", "answer_start": 8}]},
            {"id": "bad", "question": "who?", "answers": [{"text": "Carl", "answer_start": 0}]},
        ]}]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad, indent=2))
    line = json.dumps(squad, indent=2).splitlines().index('              "id": "bad",') + 1
    records = qa.read_squad(str(path))
    assert [r["id"] for r in records] == ["ok", "bad"]
    qa.answer_spans(records[0])
    with pytest.raises(finetune.DataError, match=rf"squad.json:{line} .*id 'bad'.*'Carl'"):
        qa.answer_spans(records[1])
    # TriviaQA-style aliases without positions: found ones train, all count when scoring.
    golds, spans = qa.answer_spans({**good, "answers": ["Robert", "Bob"]})
    assert golds == ["Robert", "Bob"] and spans == [(8, 11)]


# ----------------------------------------------------------------------------- learning
def _run(config, workdir):
    last = train_lib.train_and_evaluate(config, str(workdir))
    return last["eval"]


@pytest.mark.parametrize("mode", ["default", "none"])
def test_classification_learns_the_distant_phrase_with_global_attention(tmp_path, mode):
    # The phrase is 30-60 tokens in, beyond what <s> sees locally (2 layers of 8 each side):
    # with <s> global (the default) the run learns it, without global attention it cannot.
    config = tiny(classify, total_steps=300, global_attention=mode,
                  **{"data.synthetic.num_words": 60, "data.synthetic.distractors": 0})
    scores = _run(config, tmp_path)
    if mode == "default":
        assert scores["accuracy"] > 0.6  # 4 labels: chance is 0.25
    else:
        assert scores["accuracy"] < 0.45


@pytest.mark.parametrize("problem, steps", [("multi_label", 400), ("regression", 120)])
def test_multi_label_and_regression_train(tmp_path, problem, steps):
    config = tiny(classify, total_steps=steps, **{"data.problem": problem,
                                                  "data.synthetic.num_words": 60,
                                                  "data.synthetic.distractors": 0})
    scores = _run(config, tmp_path)
    if problem == "multi_label":  # 1-3 of 4 colours; the untrained loss is ln 2 = 0.69
        assert scores["loss"] < 0.6 and scores["micro_f1"] > 0.6
    else:  # the number of `code` phrases, 0-4: predicting the mean gives an MSE of 2
        assert scores["mse"] < 0.5 and scores["pearson"] > 0.9


def test_token_classification_learns_types_from_declarations(tmp_path):
    config = tiny(token_classify, total_steps=400, **{"optimizer.learning_rate": 5e-3,
                                                     "data.synthetic.max_distance": 12})
    scores = _run(config, tmp_path)
    assert scores["entity_f1"] > 0.45  # right boundaries with guessed types: about 1/3


def test_multiple_choice_learns(tmp_path):
    config = tiny(multiple_choice, total_steps=300, batch_size=8,
                  **{"data.synthetic.num_words": 60, "data.seq_len": 80,
                     "model.max_position_embeddings": 82})
    scores = _run(config, tmp_path)
    assert scores["accuracy"] > 0.6  # 4 choices: chance is 0.25


def test_qa_learns_across_windows(tmp_path):
    config = tiny(qa_config, total_steps=500, **{"data.synthetic.num_words": 160,
                                                "optimizer.learning_rate": 5e-3})
    scores = _run(config, tmp_path)
    assert scores["exact_match"] > 50  # ignoring the question: 25 (one of four items)


def test_fine_tunes_from_our_mlm_run(tmp_path):
    """init_from=a train.py MLM workdir: encoder restored, global projections copied, head new."""
    from configs import mlm_tiny
    mlm = mlm_tiny.get_config()
    mlm.update(total_steps=1, grad_accum_steps=1)
    mlm.data.max_documents = 40
    mlm.model.update(num_hidden_layers=1, attention_window=(16,))
    mlm.checkpoint.update(every_steps=1, async_save=False)
    mlm.logging.update(eval_every_steps=100)
    source = train_lib.train_and_evaluate(mlm, str(tmp_path / "mlm"))
    c = tiny(classify, total_steps=1, init_from=str(tmp_path / "mlm"))
    c.data.synthetic.update(num_train=32, num_eval=16)
    task = tasks.build(c, str(tmp_path / "cls"))
    assert task.model.config.hidden_size == 32 and task.model.config.num_hidden_layers == 1
    assert task.model.config.vocab_size == 512  # the architecture is the checkpoint's
    params = task.initial_params()
    report = json.loads((tmp_path / "cls" / "init_from_report.json").read_text())
    assert "longformer/encoder/layer_0/attention/self/query/kernel" in report["loaded"]
    assert any(r.endswith("-> query_global") for r in report["copied"])
    assert sorted(report["initialised"]) == [
        "classifier/dense/bias", "classifier/dense/kernel", "classifier/out_proj/bias",
        "classifier/out_proj/kernel"]
    assert "lm_head/bias" not in report["unused"]  # only the encoder is read
    layer = ("longformer", "encoder", "layer_0", "attention", "self")
    got = params["params"]
    # The run holds its own layout (stacked when it scans its layers); compare one per layer.
    from longformer.layout import unstack_layers
    from longformer.tasks import init_from
    src = unstack_layers(source["params"],
                         init_from.run_model_config(str(tmp_path / "mlm")))["params"]
    for name in ("query", "key"):
        np.testing.assert_array_equal(got[layer[0]][layer[1]][layer[2]][layer[3]][layer[4]][
            name]["kernel"], np.asarray(src[layer[0]][layer[1]][layer[2]][layer[3]][layer[4]][
                name]["kernel"]))
    np.testing.assert_array_equal(
        got["longformer"]["encoder"]["layer_0"]["attention"]["self"]["query_global"]["kernel"],
        got["longformer"]["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"])
    assert os.path.isfile(tmp_path / "cls" / "tokenizer" / "tokenizer.json")


def test_fine_tunes_from_a_transformers_folder(tmp_path, tokenizer):
    """init_from=a transformers folder: its architecture and tokenizer, its encoder, a new head."""
    import jax

    from longformer import LongformerConfig, LongformerForMaskedLM, hf_checkpoint
    folder = tmp_path / "hf"
    cfg = LongformerConfig(vocab_size=tokenizer.vocab_size, hidden_size=48, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=96,
                           max_position_embeddings=130, attention_window=(16, 32),
                           max_global_tokens=8)
    mlm = LongformerForMaskedLM(cfg)
    source = hf_checkpoint.init_params(mlm, jax.random.key(3))
    hf_checkpoint.save_hf_checkpoint(folder, mlm, source)
    tokenizer.save(folder)
    c = tiny(qa_config, init_from=str(folder))
    c.data.synthetic.update(num_train=8, num_eval=4, num_words=40)
    task = tasks.build(c, str(tmp_path / "qa"))
    assert task.model.config.hidden_size == 48
    assert task.model.config.layer_windows == (16, 32)
    assert task.tokenizer.get_vocab() == tokenizer.get_vocab()
    params = task.initial_params()
    report = json.loads((tmp_path / "qa" / "init_from_report.json").read_text())
    assert report["initialised"] == ["qa_outputs/bias", "qa_outputs/kernel"]
    assert not report["copied"] and not report["unused"]
    q = ("longformer", "encoder", "layer_1", "attention", "self", "query_global", "kernel")
    got, want = params["params"], source["params"]
    for key in q:
        got, want = got[key], want[key]
    np.testing.assert_array_equal(got, want)
