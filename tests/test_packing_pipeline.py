"""Packed fine-tuning (`data.packing`): `packing.pack` on its own (deterministic, every example
once, the row's token, global and slot budgets, clear errors), then whole tasks: a packed eval
gives the unpacked eval's metrics and predictions, a packed batch's gradient is the sum of its
examples' gradients, and a packed run learns and resumes bit-exactly (tiny models, CPU)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import classify, multiple_choice, token_classify
from configs import qa as qa_config
from longformer import hf_checkpoint, packing, tasks, train_lib
from tests.test_tasks import tiny


# ----------------------------------------------------------------------------- pack
def _rows(n=40, length=48, seed=0, max_len=40, pad_id=1):
    """Rows as a task encodes them: random prefixes, per-token labels (-100 on padding),
    per-example labels and vectors, up to 3 global tokens per example, bookkeeping."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, n)
    real = np.arange(length)[None, :] < lengths[:, None]
    ids = np.where(real, rng.integers(3, 100, (n, length)), pad_id).astype(np.int32)
    glob = np.zeros((n, length), np.int32)
    for i, k in enumerate(rng.integers(0, 4, n)):
        glob[i, rng.choice(lengths[i], size=min(k, lengths[i]), replace=False)] = 1
    return {"input_ids": ids, "attention_mask": real.astype(np.int32),
            "global_attention_mask": glob,
            "labels": np.where(real, rng.integers(0, 5, (n, length)), -100).astype(np.int32),
            "label": rng.integers(0, 4, n).astype(np.int32),
            "vector": rng.normal(size=(n, 3)).astype(np.float32),
            "index": np.arange(n, dtype=np.int32), "valid": np.ones(n, np.int32)}


PACK = dict(seq_len=48, max_global_tokens=5, max_segments=4)


def test_pack_is_deterministic_and_places_every_example_once():
    rows = _rows()
    a, b = packing.pack(rows, **PACK), packing.pack(rows, **PACK)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert a["input_ids"].shape == (len(a["input_ids"]), 48) and a["label"].shape[1] == 4
    assert a["vector"].shape[1:] == (4, 3)
    placed = a["index"][a["valid"] > 0]
    assert sorted(placed.tolist()) == list(range(40))  # each exactly once
    assert np.all(a["index"][a["valid"] == 0] == -1)
    # First-fit decreasing needs fewer rows than one example per row, and the packing is the
    # same for the same rows however they were built.
    assert len(a["input_ids"]) < 30
    seg = a["segment_ids"]
    tokens = (seg > 0).sum(1)
    assert tokens.max() <= 48
    assert ((a["global_attention_mask"] > 0).sum(1) <= 5).all()
    assert ((a["valid"] > 0).sum(1) <= 4).all()
    assert np.array_equal(seg.max(1), (a["valid"] > 0).sum(1))
    assert np.all(a["global_attention_mask"][seg == 0] == 0)
    assert np.all(a["input_ids"][seg == 0] == 1) and np.all(a["labels"][seg == 0] == -100)


def test_pack_then_unpack_gives_the_rows_back():
    rows = _rows(seed=1)
    packed = packing.pack(rows, **PACK)
    back = packing.unpack_batch(packed, packing.layout(rows))
    keep = np.asarray(back["valid"]) > 0
    order = np.argsort(np.asarray(back["index"])[keep])
    for k, v in rows.items():
        np.testing.assert_array_equal(np.asarray(back[k])[keep][order], v, err_msg=k)
    assert np.all(np.asarray(back["input_ids"])[~keep] == 1)  # filler slots: padding


def test_pack_respects_max_segments_and_fills_rows_well():
    lengths = [30, 20, 18, 12, 10, 6]
    rows = {"input_ids": np.ones((6, 48), np.int32),
            "attention_mask": (np.arange(48) < np.asarray(lengths)[:, None]).astype(np.int32)}
    assert packing.assign(np.asarray(lengths), np.zeros(6), seq_len=48, max_global_tokens=0,
                          max_segments=4) == [[0, 2], [1, 3, 4, 5]]
    packed = packing.pack({**rows, "index": np.arange(6)}, seq_len=48, max_global_tokens=0,
                          max_segments=3)
    assert ((packed["index"] >= 0).sum(1) <= 3).all() and len(packed["index"]) == 3
    tiny_rows = _rows(n=50, max_len=3, seed=2)
    packed = packing.pack(tiny_rows, seq_len=48, max_global_tokens=200, max_segments=4)
    assert len(packed["input_ids"]) == 13 and packed["segment_ids"].max() == 4


def test_pack_errors_name_the_example():
    rows = _rows(max_len=48)
    long = int(np.flatnonzero(rows["attention_mask"].sum(1) > 40)[0])  # the first too long
    n = int(rows["attention_mask"][long].sum())
    with pytest.raises(ValueError, match=f"example {long} has {n} tokens but a packed row "
                                         f"holds 40"):
        packing.pack(rows, seq_len=40, max_global_tokens=5, max_segments=4)
    rows = _rows()
    rows["global_attention_mask"][7] = np.arange(48) < 4
    rows["attention_mask"][7] = np.arange(48) < max(4, rows["attention_mask"][7].sum())
    with pytest.raises(ValueError, match="example 7 has 4 global tokens but a packed row holds "
                                         "3 .model.max_global_tokens"):
        packing.pack(rows, seq_len=48, max_global_tokens=3, max_segments=4)
    rows = _rows()
    rows["attention_mask"][3] = 0
    with pytest.raises(ValueError, match="example 3 has no tokens"):
        packing.pack(rows, **PACK)
    rows = _rows()
    rows["attention_mask"][5, 0] = 0
    rows["attention_mask"][5, 1] = 1
    with pytest.raises(ValueError, match="example 5 has padding before its last token"):
        packing.pack(rows, **PACK)
    with pytest.raises(ValueError, match="per-token field 'label' has shape"):
        packing.pack(_rows(), per_token=("label",), **PACK)


def test_multiple_choice_refuses_packing(tmp_path):
    c = tiny(multiple_choice, **{"data.packing": True})
    with pytest.raises(ValueError, match="multiple choice does not pack: each example is "
                                         "already one row per choice"):
        tasks.build(c, str(tmp_path))


# ----------------------------------------------------------------------------- whole tasks
def _config(module, **overrides):
    """test_tasks' tiny config with room for several examples' global tokens per row and short
    synthetic sets."""
    return tiny(module, **{"model.max_global_tokens": 32, "model.max_segments": 8,
                           "data.synthetic.num_train": 64, "data.synthetic.num_eval": 40,
                           **overrides})


def _tasks(tmp_path, module, **overrides):
    """(unpacked, packed) tasks of one config and tokenizer, and random parameters."""
    plain = tasks.build(_config(module, **overrides), str(tmp_path))
    packed = tasks.build(_config(module, **overrides, **{"data.packing": True}), str(tmp_path))
    return plain, packed, _random_params(plain.model)


def _random_params(model, seed=0):
    """Random weights (normal, std initializer_range; LayerNorm scales 1) without compiling the
    model's init, the slowest compile of these tests."""
    shapes = jax.eval_shape(lambda r: hf_checkpoint.init_params(model, r), jax.random.key(0))
    rng = np.random.default_rng(seed)
    std = model.config.initializer_range

    def one(path, leaf):
        if jax.tree_util.keystr(path).endswith("['scale']"):
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.asarray(rng.normal(0, std, leaf.shape), leaf.dtype)
    return jax.tree_util.tree_map_with_path(one, shapes)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """case -> (unpacked, packed, params), each built once for the module."""
    cache = {}

    def get(case):
        if case not in cache:
            module, overrides = CASES[case]
            cache[case] = _tasks(tmp_path_factory.mktemp(case), module, **overrides)
        return cache[case]
    return get


def _eval(task, params):
    fn = jax.jit(task.eval_fn)
    return [jax.tree.map(np.asarray, jax.device_get(fn(params, b))) for b in task.eval_data]


def _same(a, b, skip=(), tol=1e-6, where="") -> None:
    """Equal metrics or predictions: floats (averages, scores) to `tol`, the rest exactly."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            if k not in skip:
                _same(a[k], b[k], tol=tol, where=f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, tol=tol, where=f"{where}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=tol, abs=tol), where
    else:
        assert a == b, where


CASES = {
    "classification": (classify, {"data.synthetic.num_words": 20}),
    # Larger weights: predictions that differ between examples (else Pearson's r is noise).
    "regression": (classify, {"data.synthetic.num_words": 30, "data.problem": "regression",
                              "model.initializer_range": 0.2}),
    "token_classification": (token_classify, {"data.synthetic.num_words": 30}),
    # Contexts of 120 words: one or two windows each, the second ones short.
    "qa": (qa_config, {"data.synthetic.num_words": 120, "data.window_overlap": 16}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_packed_eval_equals_unpacked_eval(built, case):
    plain, packed, params = built(case)
    rows = packed.info["packed train rows"]
    assert rows <= 0.75 * packed.info.get("train windows", packed.info.get("train examples"))
    a, b = _eval(plain, params), _eval(packed, params)
    assert len(b) < len(a)  # fewer eval batches
    spec = packed.batch_spec  # describes the packed batches
    assert spec["segment_ids"] == ((16, 128), np.int32) and spec["slot_start"][0] == (16, 8)
    train = next(packed.train_data)
    assert {k: (v.shape, v.dtype) for k, v in train.items()} == spec
    _same(plain.summarize(a), packed.summarize(b))  # QA's loss too: padding is no answer
    _same(plain.predict(a), packed.predict(b), tol=3e-6)  # rounded to 6 places: one unit off


def test_packed_gradient_is_the_sum_of_example_gradients(built):
    plain, packed, params = built("classification")
    batch = {k: v[:3] for k, v in next(iter(packed.eval_data)).items()}  # three packed rows
    members = batch["index"][batch["valid"] > 0]
    assert len(members) > 6
    singles = {}
    for b in plain.eval_data:
        for j, i in enumerate(b["index"]):
            if i in members and b["valid"][j]:
                singles[int(i)] = {k: v[j:j + 1] for k, v in b.items()}
    loss = lambda task: jax.jit(jax.grad(lambda p, b: task.loss_fn(p, b, None)[0]))
    together = loss(packed)(params, batch)
    one = loss(plain)
    alone = jax.tree.map(jnp.zeros_like, together)
    for i in members:
        alone = jax.tree.map(jnp.add, alone, one(params, singles[int(i)]))
    assert packed.weight_fn(batch) == len(members)
    # Per tensor, relative; key biases get no gradient (softmax ignores shifts): rounding only.
    off = jax.tree.map(lambda g, s: float(jnp.linalg.norm(g - s) - 1e-5 * jnp.linalg.norm(s)),
                       together, alone)
    assert max(jax.tree.leaves(off)) <= 1e-9, off


def _train_losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def test_packed_run_learns_and_resumes_bit_exactly(tmp_path):
    # No distractors: the label is the one colour in a short text, learnt in a few steps.
    common = {"data.packing": True, "data.synthetic.num_words": 12, "batch_size": 4,
              "data.synthetic.distractors": 0, "logging.every_steps": 1,
              "checkpoint.every_steps": 20, "data.synthetic.num_train": 200,
              "optimizer.learning_rate": 1e-2}
    straight = train_lib.train_and_evaluate(_config(classify, total_steps=40, **common),
                                            str(tmp_path / "a"))
    losses = _train_losses(tmp_path / "a")
    assert np.mean([losses[s] for s in range(31, 41)]) < np.mean([losses[s] for s in
                                                                  range(1, 11)]) - 0.3, losses
    assert straight["eval"]["examples"] == 40
    first = train_lib.train_and_evaluate(
        _config(classify, total_steps=40, stop_after_steps=20, **common), str(tmp_path / "b"))
    assert first["step"] == 20
    resumed = train_lib.train_and_evaluate(_config(classify, total_steps=40, **common),
                                           str(tmp_path / "b"))
    b = _train_losses(tmp_path / "b")
    assert [losses[s] for s in sorted(losses)] == [b[s] for s in sorted(b)]
    same = jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), straight["params"],
                        resumed["params"])
    assert all(jax.tree.leaves(same))
