"""The byte-level autoregressive model, its task (data, sliding BPC evaluation) and sampling.

One short training run on the default corpus (module fixture) is shared by the learning,
checkpoint-loading and generation tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import charlm_enwik8, charlm_text8, charlm_tiny
from longformer import charlm, train_lib
from longformer.tasks import charlm as task_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
    c = charlm_tiny.get_config()
    c.checkpoint.async_save = False
    c.update_from_flattened_dict(overrides)  # dotted keys: 'model.attention_window'
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """charlm_tiny trained on the default corpus: (workdir, train_and_evaluate's result)."""
    workdir = tmp_path_factory.mktemp("charlm")
    config = tiny_config(**{"logging.every_steps": 5})  # the first window: ~8 bits, uniform
    return str(workdir), train_lib.train_and_evaluate(config, str(workdir))


def metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


# ----------------------------------------------------------------------------- the model
def test_changing_a_byte_never_changes_earlier_outputs():
    """Causality through the whole model (dilated heads, a window longer than the input)."""
    cfg = task_lib.model_config(tiny_config(), attention_window=(8, 64))
    model = charlm.CharLM(cfg)
    length = 41
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, length)), jnp.int32)
    params = model.init(jax.random.key(0), ids)
    apply = jax.jit(model.apply)
    base = np.asarray(apply(params, ids))
    for t in (0, 1, 6, 17, 40):
        changed = np.asarray(apply(params, ids.at[:, t].set((ids[:, t] + 101) % 256)))
        np.testing.assert_array_equal(changed[:, :t], base[:, :t], err_msg=f"t={t}")
        assert np.abs(changed[:, t] - base[:, t]).max() > 1e-4, t  # and t itself does react


def test_global_tokens_are_refused():
    cfg = task_lib.model_config(tiny_config())
    model = charlm.CharLM(cfg)
    ids = jnp.zeros((1, 8), jnp.int32)
    with pytest.raises(ValueError, match="global"):
        model.init(jax.random.key(0), ids, global_attention_mask=jnp.ones_like(ids))
    with pytest.raises(ValueError, match="causal"):
        charlm.CharLM(cfg.replace(causal=False)).init(jax.random.key(0), ids)


def test_paper_configs_are_valid():
    """Every phase of both paper configs builds; the small model has the paper's size."""
    for get in (charlm_text8.get_config, charlm_enwik8.get_config):
        for phase in "12345":
            c = get(phase)
            cfg = task_lib.model_config(c)
            assert cfg.causal and cfg.max_global_tokens == 0
            assert list(cfg.layer_windows) == sorted(cfg.layer_windows)  # growing upwards
            assert max(cfg.layer_windows) <= c.data.seq_len
            assert c.batch_size % c.grad_accum_steps == 0
            assert sum(d != 1 for d in cfg.layer_dilations[-1]) == 2  # 2 dilated heads on top
            assert cfg.layer_dilations[0] == (1,) * 8
    c = charlm_text8.get_config("1")
    assert c.data.seq_len == 2048 and c.model.attention_window[0] == 32
    assert charlm_text8.get_config("5").data.seq_len == 23040
    assert charlm_enwik8.get_config("2").init_from == "runs/charlm_enwik8_p1"
    shapes = jax.eval_shape(lambda: charlm.CharLM(task_lib.model_config(c)).init(
        jax.random.key(0), jnp.zeros((1, 16), jnp.int32)))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    assert 37e6 < count < 39e6, count  # 12 x 512 hidden, 8 heads: ~38M parameters


# ----------------------------------------------------------------------------- data
def test_split_and_zip(tmp_path):
    raw = np.random.default_rng(0).integers(0, 256, 1000).astype(np.uint8)
    path = tmp_path / "enwik8"
    path.write_bytes(raw.tobytes())
    with zipfile.ZipFile(tmp_path / "enwik8.zip", "w") as z:
        z.write(path, "enwik8")
    for p in (path, tmp_path / "enwik8.zip"):
        splits = task_lib.split_corpus(task_lib.read_corpus(str(p)))
        assert [len(splits[k]) for k in task_lib.SPLITS] == [900, 50, 50]
        np.testing.assert_array_equal(np.concatenate([splits[k] for k in task_lib.SPLITS]), raw)
    with pytest.raises(FileNotFoundError):
        task_lib.read_corpus(str(tmp_path / "missing"))


@pytest.mark.parametrize("num_bytes,seq_len,stride", [(100, 16, 5), (100, 16, 16), (10, 16, 4),
                                                      (17, 16, 1), (2, 4, 2)])
def test_sliding_windows_score_every_byte_once(num_bytes, seq_len, stride):
    stream = np.arange(num_bytes, dtype=np.uint8)
    windows = task_lib.SlidingWindow(stream, seq_len, stride)
    seen = np.zeros(num_bytes, int)
    for k in range(windows.count + 3):  # whole windows past the end score nothing
        w = windows.map(k)
        start = k * stride
        for j in np.flatnonzero(w["mask"]):
            assert w["inputs"][j] == stream[start + j] and w["targets"][j] == stream[start + j + 1]
            seen[start + j + 1] += 1  # position start + j predicts byte start + j + 1
            if k > 0:
                assert j >= seq_len - stride  # at least seq_len - stride bytes of left context
    np.testing.assert_array_equal(seen[1:], 1)  # every byte but the first, exactly once
    assert seen[0] == 0


def test_train_crops_are_reproducible():
    c = tiny_config()
    splits = task_lib.split_corpus(np.frombuffer(bytes(range(256)) * 40, np.uint8))
    it1, _, _ = task_lib.make_datasets(c.data, splits, seed=3, batch_size=4)
    first = [next(it1) for _ in range(3)]
    state = it1.get_state()
    later = next(it1)
    it2, _, _ = task_lib.make_datasets(c.data, splits, seed=3, batch_size=4)
    it2.set_state(state)
    np.testing.assert_array_equal(next(it2)["inputs"], later["inputs"])
    for b in first:
        assert b["inputs"].shape == (4, c.data.seq_len)
        np.testing.assert_array_equal(b["targets"][:, :-1], b["inputs"][:, 1:])


# ----------------------------------------------------------------------------- training
def test_learns_on_default_corpus(trained):
    """Bits per character fall from ~8 (uniform bytes) to about 4 in 200 tiny steps."""
    workdir, last = trained
    rows = metrics(workdir)
    train_bpc = [r["train/bits_per_char"] for r in rows if "train/bits_per_char" in r]
    evals = [r for r in rows if "eval/bits_per_char" in r]
    assert train_bpc[0] > 7.0, train_bpc
    assert last["eval"]["bits_per_char"] < 4.6, evals
    assert last["eval"]["bits_per_char"] < train_bpc[0] - 2.5
    assert last["eval"]["chars"] == 4095  # max_eval_bytes - 1 bytes scored, each once
    assert evals[-1]["eval/bits_per_char"] <= evals[0]["eval/bits_per_char"]


def test_load_params_for_the_next_phase(trained):
    """A later phase (longer sequence, other windows) starts from a workdir's parameters."""
    workdir, last = trained
    c = tiny_config(**{"init_from": workdir, "data.seq_len": 128,
                       "model.attention_window": (16, 32)})
    model = charlm.CharLM(task_lib.model_config(c))
    params = task_lib.load_params(workdir, model)
    jax.tree.map(np.testing.assert_array_equal, params, jax.device_get(last["params"]))


def test_sampling(trained):
    workdir, last = trained
    model = charlm.CharLM(task_lib.model_config(tiny_config()))
    params = last["params"]
    # context shorter than prompt + length: the window slides
    a = charlm.sample(model, params, b"The ", 80, context=32, temperature=0.0)
    b = charlm.sample(model, params, b"The ", 80, context=32, temperature=0.0)
    assert a == b and len(a) == 80
    c = charlm.sample(model, params, b"The ", 20, context=64, temperature=1.0, top_k=5, seed=1)
    assert len(c) == 20


def test_eval_reports_the_runs_bits_per_char(trained):
    """eval.py's library call rebuilds the task and reproduces the run's last sliding eval."""
    from longformer import evaluation  # pylint: disable=import-outside-toplevel
    workdir, last = trained
    result = evaluation.evaluate_checkpoint(evaluation.load_run_config(workdir), workdir)
    np.testing.assert_allclose(result["metrics"]["bits_per_char"],
                               last["eval"]["bits_per_char"], rtol=1e-5)


def test_generate_cli(trained):
    """Without --config the run's saved config is used."""
    workdir, _ = trained
    cmd = [sys.executable, "-m", "longformer.generate", f"--checkpoint={workdir}",
           "--prompt=import ", "--length=40", "--temperature=0.7", "--top_k=10"]
    proc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("import ") and len(proc.stdout) > 20
