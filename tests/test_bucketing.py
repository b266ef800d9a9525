"""Eval in length buckets (longformer/bucketing.py): the same metrics and predictions as the
unbucketed pass, with at most as many batch shapes as the ladder has rungs."""

import functools
import json

import jax
import numpy as np
import pytest

from configs import classify, hotpotqa, multiple_choice, qa, token_classify, triviaqa, wikihop
from longformer import bucketing, evaluation, hf_checkpoint, sharding, tasks
from longformer.tasks import hotpotqa as hotpotqa_task
from longformer.tasks import synthetic
from longformer.tasks import triviaqa as triviaqa_task
from longformer.tasks import wikihop as wikihop_task

SEQ_LEN, WINDOW = 128, 16
TAGS = "O,B-PER,I-PER,B-LOC,I-LOC,B-ORG,I-ORG"


def test_ladder():
    assert bucketing.ladder(4096, 512) == (512, 1024, 2048, 4096)
    assert bucketing.ladder(4000, 512) == (512, 1024, 2048, 4000)
    assert bucketing.ladder(256, 512) == (256,)


def _records(task, sizes, seed=7):
    """Eval records of mixed lengths: a few of each document size."""
    make = {"classification": synthetic.classification,
            "token_classification": functools.partial(synthetic.token_classification,
                                                      entities_per_paragraph=1, max_distance=6),
            "multiple_choice": synthetic.multiple_choice,
            "qa": synthetic.question_answering,
            "wikihop": wikihop_task.synthetic_records,
            # size = paragraphs (of two or three 4-word sentences)
            "hotpotqa": lambda n, seed, num_words: hotpotqa_task.synthetic_records(
                n, seed, num_paragraphs=num_words, num_sentences=seed % 2)}[task]
    out = []
    for i, n in enumerate(sizes):
        out += make(3, seed + i, num_words=n)
    return out


def _eval_file(name, sizes, folder):
    """The eval set in the task's own file format."""
    if name == "triviaqa":  # the release's layout: qa/<file> and evidence/wikipedia/<Filename>
        (folder / "evidence" / "wikipedia").mkdir(parents=True)
        (folder / "qa").mkdir()
        items = []
        for i, n in enumerate(sizes):
            more, texts = triviaqa_task.synthetic_items(2, 7 + i, num_words=n, num_categories=1)
            items += more
            for filename, text in texts.items():
                (folder / "evidence" / "wikipedia" / filename).write_text(text)
        path = folder / "qa" / "wikipedia-dev.json"
        path.write_text(json.dumps({"Data": items, "Domain": "Wikipedia"}))
    elif name == "wikihop":  # one JSON list
        path = folder / "dev.json"
        path.write_text(json.dumps(_records(name, sizes)))
    else:  # JSON lines (HotpotQA's objects one per line)
        path = folder / "eval.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in _records(name, sizes)))
    return str(path)


CASES = {  # task -> (config module, overrides, document sizes in words)
    "classification": (classify, {"data.labels": "red,green,blue,gold"},
                       (6, 12, 20, 30, 45, 60, 90, 140)),
    "token_classification": (token_classify, {"data.labels": TAGS, "data.window_overlap": 16},
                             (5, 10, 20, 40, 60, 100, 150)),
    "multiple_choice": (multiple_choice, {}, (5, 10, 20, 40, 60, 100)),
    "qa": (qa, {"data.window_overlap": 16, "data.max_question_tokens": 4,
                "model.max_global_tokens": 5}, (12, 20, 30, 45, 70, 110, 150)),
    # windows of pages, answer spans (rows, max_answer_spans) per row
    "triviaqa": (triviaqa, {"data.window_overlap": 16, "data.max_answer_spans": 4},
                 (9, 16, 30, 50, 80, 140)),
    # (examples, 2 chunks, seq_len) rows, candidate markers in the prefix
    "wikihop": (wikihop, {"data.max_chunks": 2}, (20, 24, 30, 40, 60, 100)),
    # marker positions (sentences, paragraphs) into the row; the larger ones cut at seq_len
    "hotpotqa": (hotpotqa, {"data.synthetic.num_words": 4}, (2, 2, 2, 2, 4, 10)),
}


def _task(name, tmp_path):
    module, overrides, sizes = CASES[name]
    c = module.get_config()
    c.model.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, attention_window=(WINDOW, WINDOW),
                   max_position_embeddings=SEQ_LEN + 2)
    c.data.seq_len = SEQ_LEN
    c.data.synthetic.update(num_train=24, num_eval=8, num_words=60)
    c.batch_size = 4
    c.data.eval_file = _eval_file(name, sizes, tmp_path)
    c.update_from_flattened_dict(overrides)
    return c, tasks.build(c, str(tmp_path / "work"))


def _pass(task, params, buckets):
    mesh = sharding.make_mesh((-1, 1, 1))
    shapes = []
    jitted = jax.jit(task.eval_fn)

    def eval_fn(params, batch):
        shapes.append(tuple(batch["input_ids"].shape))
        return jitted(params, batch)

    outputs = evaluation.eval_outputs(eval_fn, params, task.eval_data,
                                      sharding.batch_sharding(mesh), buckets=buckets)
    return outputs, shapes


@pytest.mark.parametrize("name", sorted(CASES))
def test_bucketed_eval_scores_as_unbucketed(name, tmp_path):
    config, task = _task(name, tmp_path)
    params = hf_checkpoint.init_params(task.model, jax.random.key(0))
    buckets = bucketing.for_task(config, task)
    assert buckets.lengths == (16, 32, 64, 128)
    plain, plain_shapes = _pass(task, params, None)
    bucketed, shapes = _pass(task, params, buckets)
    assert {(s[0], s[-1]) for s in plain_shapes} == {(4, SEQ_LEN)}
    assert len(shapes) == len(plain_shapes)
    assert {s[-1] for s in shapes} <= set(buckets.lengths)
    assert len(set(shapes)) <= len(buckets.lengths)
    # The eval set's lengths are mixed: the buckets are used (HotpotQA's shortest rows, two
    # paragraphs, and WikiHop's prefix of query and candidates take over 32 tokens).
    assert len(set(shapes)) >= (2 if name in ("hotpotqa", "wikihop") else 3)
    assert sum(s[-1] for s in shapes) < 0.8 * sum(s[-1] for s in plain_shapes)  # tokens run

    metrics, bucketed_metrics = task.summarize(plain), task.summarize(bucketed)
    assert bucketed_metrics == pytest.approx(metrics, rel=1e-5, abs=1e-6)
    rows, bucketed_rows = task.predict(plain), task.predict(bucketed)
    assert len(rows) == len(bucketed_rows) > 0
    for row, other in zip(rows, bucketed_rows):
        assert row.keys() == other.keys()
        for key in row:
            if isinstance(row[key], float) or key in ("probabilities", "scores"):
                assert other[key] == pytest.approx(row[key], rel=1e-4, abs=1e-5), key
            else:
                assert other[key] == row[key], key


def test_bucketing_leaves_out_what_it_cannot_cut(caplog):
    from ml_collections import ConfigDict
    caplog.set_level("INFO", logger="longformer.bucketing")
    assert bucketing.for_task(ConfigDict({"task": "mlm", "data": {"seq_len": 64}}), None) is None
    packed = ConfigDict({"task": "classification", "data": {"seq_len": 64, "packing": True}})
    assert bucketing.for_task(packed, None) is None
    assert "mlm" in caplog.text and "data.packing" in caplog.text
    # A field of row length the table does not name: the batches go through as they are.
    buckets = bucketing.Buckets((16, 32), bucketing.TASKS["classification"][0], {})
    batch = {"input_ids": np.ones((2, 32), np.int32), "attention_mask": np.ones((2, 32)),
             "global_attention_mask": np.zeros((2, 32)), "mystery": np.zeros((2, 32))}
    assert bucketing.regroup([batch], buckets) == [batch]
    assert "mystery" in caplog.text


def test_eval_of_a_checkpoint_in_buckets(tmp_path):
    """evaluate_checkpoint with data.eval_bucketing writes the metrics and predictions of the
    plain pass (a transformers folder of random weights: no training needed)."""
    config, task = _task("classification", tmp_path)
    folder = tmp_path / "hf"
    hf_checkpoint.save_hf_checkpoint(folder, task.model,
                                     hf_checkpoint.init_params(task.model, jax.random.key(1)))
    task.tokenizer.save(folder)
    plain = evaluation.evaluate_checkpoint(config, str(folder), output_dir=str(tmp_path / "a"))
    config.data.eval_bucketing = True  # what the config field turns on
    bucketed = evaluation.evaluate_checkpoint(config, str(folder), output_dir=str(tmp_path / "b"))
    assert bucketed["metrics"] == pytest.approx(plain["metrics"], rel=1e-5)
    rows = [json.loads(line) for line in open(plain["predictions_file"])]
    other = [json.loads(line) for line in open(bucketed["predictions_file"])]
    assert len(rows) == 24
    assert [(r["id"], r["predicted"]) for r in rows] == [(r["id"], r["predicted"]) for r in other]
