"""Eval in length buckets (longformer/bucketing.py): the same metrics and predictions as the
unbucketed pass, with at most as many batch shapes as the ladder has rungs."""

import functools
import json

import jax
import numpy as np
import pytest

from configs import classify, multiple_choice, qa, token_classify
from longformer import bucketing, evaluation, hf_checkpoint, sharding, tasks
from longformer.tasks import synthetic

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
            "qa": synthetic.question_answering}[task]
    out = []
    for i, n in enumerate(sizes):
        out += make(3, seed + i, num_words=n)
    return out


CASES = {  # task -> (config module, overrides, document sizes in words)
    "classification": (classify, {"data.labels": "red,green,blue,gold"},
                       (6, 12, 20, 30, 45, 60, 90, 140)),
    "token_classification": (token_classify, {"data.labels": TAGS, "data.window_overlap": 16},
                             (5, 10, 20, 40, 60, 100, 150)),
    "multiple_choice": (multiple_choice, {}, (5, 10, 20, 40, 60, 100)),
    "qa": (qa, {"data.window_overlap": 16, "data.max_question_tokens": 4,
                "model.max_global_tokens": 5}, (12, 20, 30, 45, 70, 110, 150)),
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
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in _records(name, sizes)))
    c.data.eval_file = str(eval_file)
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
    assert len(set(shapes)) >= 3  # the eval set's lengths are mixed: the buckets are used
    assert sum(s[-1] for s in shapes) < 0.8 * sum(s[-1] for s in plain_shapes)  # tokens run

    metrics, bucketed_metrics = task.summarize(plain), task.summarize(bucketed)
    assert bucketed_metrics == pytest.approx(metrics, rel=1e-5, abs=1e-6)
    rows, bucketed_rows = task.predict(plain), task.predict(bucketed)
    assert len(rows) == len(bucketed_rows) > 0
    for row, other in zip(rows, bucketed_rows):
        assert row.keys() == other.keys()
        for key in row:
            if isinstance(row[key], float) or key == "probabilities":
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
