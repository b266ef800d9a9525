"""eval.py / longformer.evaluation: a checkpoint scored again gives the metrics training reported,
for a fine-tuning task (with predictions) and for MLM (loss, perplexity, bits per character)."""

import json
import math
import os
import subprocess
import sys

import pytest

from configs import mlm_tiny, multiple_choice
from longformer import evaluation, train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _small(config, steps):
    config.update(total_steps=steps, grad_accum_steps=1)
    config.checkpoint.update(every_steps=steps, async_save=False)
    config.logging.update(every_steps=steps, eval_every_steps=steps)
    return config


@pytest.fixture(scope="module")
def mc_run(tmp_path_factory):
    """A few steps of multiple choice on a one-layer model, and the metrics it reported."""
    c = _small(multiple_choice.get_config(), 4)
    c.model.update(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                   attention_window=(16,), max_position_embeddings=66)
    c.data.update(seq_len=64)
    c.data.synthetic.update(num_train=32, num_eval=12, num_words=40)
    c.batch_size = 8  # 12 eval examples: the last batch is half filler
    workdir = str(tmp_path_factory.mktemp("mc"))
    last = train_lib.train_and_evaluate(c, workdir)
    return c, workdir, last["eval"]


def test_eval_reproduces_training_metrics(mc_run, tmp_path):
    config, workdir, reported = mc_run
    result = evaluation.evaluate_checkpoint(config, workdir, output_dir=str(tmp_path))
    assert result["step"] == 4
    assert result["metrics"] == pytest.approx(reported, rel=1e-6)
    saved = json.loads(open(result["metrics_file"]).read())
    assert saved["metrics"] == pytest.approx(reported, rel=1e-6)
    rows = [json.loads(line) for line in open(result["predictions_file"])]
    assert len(rows) == 12 and {"id", "label", "predicted", "scores"} <= set(rows[0])
    accuracy = sum(r["predicted"] == r["label"] for r in rows) / len(rows)
    assert accuracy == pytest.approx(reported["accuracy"])


def test_eval_py_command_line_uses_the_saved_config(mc_run):
    _, workdir, reported = mc_run
    step_dir = os.path.join(workdir, "checkpoints", "4")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "eval.py"), f"--checkpoint={step_dir}"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = proc.stdout.strip().splitlines()[-1]
    assert path == os.path.join(workdir, "eval_step_4.json")
    assert json.load(open(path))["metrics"] == pytest.approx(reported, rel=1e-6)
    assert os.path.isfile(os.path.join(workdir, "predictions_step_4.jsonl"))


def test_eval_of_an_exported_transformers_folder(mc_run, tmp_path):
    """save_hf_checkpoint of the run (head included) + its tokenizer scores the same."""
    from longformer import checkpoints, hf_checkpoint, tasks
    config, workdir, reported = mc_run
    task = tasks.build(config, workdir)
    params = checkpoints.restore_params(workdir)
    folder = tmp_path / "hf"
    hf_checkpoint.save_hf_checkpoint(folder, task.model, params)
    task.tokenizer.save(folder)
    result = evaluation.evaluate_checkpoint(config, str(folder))
    assert result["metrics"] == pytest.approx(reported, rel=1e-5)
    assert result["metrics_file"] == str(folder / "eval" / "eval_step_0.json")


def test_eval_refuses_a_checkpoint_of_another_model(mc_run, tmp_path):
    config, workdir, _ = mc_run
    other = multiple_choice.get_config()
    other.update(config.to_dict())
    other.model.hidden_size = 64
    with pytest.raises(ValueError, match="hidden_size"):
        evaluation.evaluate_checkpoint(other, workdir, output_dir=str(tmp_path))


def test_eval_of_an_mlm_checkpoint(tmp_path):
    c = _small(mlm_tiny.get_config(), 2)
    c.model.update(num_hidden_layers=1, attention_window=(16,))
    reported = train_lib.train_and_evaluate(c, str(tmp_path))["eval"]
    result = evaluation.evaluate_checkpoint(c, str(tmp_path))
    metrics = result["metrics"]
    assert metrics == pytest.approx(reported, rel=1e-6)
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]), rel=1e-6)
    assert metrics["bits_per_char"] > 0
    assert "predictions_file" not in result
