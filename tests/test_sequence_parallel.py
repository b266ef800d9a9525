"""Sequence parallelism: one document over the mesh's `sequence` axis equals one device.

The comparisons need 8 devices, so they run once in a fresh Python with 8 fake CPU devices
(`tests/sequence_parallel_checks.py`); the tests assert on what it reports. Timings on fake
devices mean nothing: what is checked is equality, the collectives in the compiled HLO and
per-device compiled memory.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longformer import sharding
from longformer.config import LongformerConfig
from longformer.modeling import LongformerForMaskedLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("sequence") / "report.json"
    env = {**os.environ, "PYTHONPATH": ROOT,
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests/sequence_parallel_checks.py"),
                           str(out)], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_outputs_and_gradients_equal_one_device(report):
    """The op on sequence 2, 4 and 8 (halos of two hops, dilation, causal windows); MLM on
    sequence 8, data 2 x sequence 4 and fsdp 2 x sequence 2 x tensor 2; at sequence 4 a model
    with the accelerators' band layout, dilation per head, rotary positions, scan + remat and
    the attention weights, bfloat16 compute, the QA head and the char LM.
    Per-layer windows, padding, global tokens on several shards (the first and the last);
    gradients of every parameter."""
    cases = report["equality"]
    assert report["devices"] == 8 and len(cases) == 11, sorted(cases)
    for shape in ("(1, 1, 8, 1)", "(2, 1, 4, 1)", "(1, 2, 2, 2)"):
        assert f"mlm {shape}" in cases
    # float32 rounding: the largest gradient difference, in the case with per-head dilation,
    # rotary positions, scan + remat and the batched layout, was 1.4e-5 on an AMD EPYC and
    # 2.1e-5 on an Intel Xeon (XLA:CPU's code follows the CPU's vector units); the others
    # stay at or below 2.2e-6.
    float32 = {name: diffs for name, diffs in cases.items() if not name.startswith("bfloat16")}
    bad = {name: diffs for name, diffs in float32.items()
           if diffs.get("loss", 0) > 1e-5 or diffs["outputs"] > 1e-5
           or diffs["grads"] > (4e-5 if name.startswith("features") else 2e-5)}
    assert not bad, bad
    # bfloat16 compute: test_modeling's tolerance between two bfloat16 layouts of one model.
    bf16 = cases["bfloat16 (1, 1, 4, 1)"]
    assert bf16["loss"] < 1e-3 and bf16["outputs"] < 2e-2 and bf16["grads"] < 2e-2, bf16


def test_refusals_name_the_problem(report):
    assert "segment_ids" in report["refusals"]["segment_ids"]
    assert "sequence" in report["refusals"]["dense"] and "'dense'" in report["refusals"]["dense"]


@pytest.mark.parametrize("platform", ["cpu", "gpu"])
def test_collectives_move_only_the_halo_and_the_global_rows(report, platform):
    """In one layer's compiled train step (built for the CPU and for GPUs): the
    collective-permutes carry exactly the halo (keys and values: left + right rows per shard,
    times batch and width, once forward and once back; and the key mask), and no collective
    moves anything as long as a shard, let alone the document."""
    hlo = report["hlo"][platform]
    batch, length, shards, hidden = hlo["batch"], hlo["length"], hlo["shards"], hlo["hidden"]
    halo = hlo["left"] + hlo["right"]
    for step, passes in (("train", 2),):
        found = hlo[step]
        permuted = [tuple(s[1]) for c in found if c["kind"] == "collective-permute"
                    for s in c["shapes"] if s[0] == "f32"]
        rows = sum(np.prod(s) for s in permuted) // hidden
        assert rows == passes * 2 * batch * halo, (step, permuted)  # k and v, each way
        assert all(s[1] in (hlo["left"], hlo["right"]) for s in permuted)
        for c in found:
            for _, dims in c["shapes"]:
                assert length // shards not in dims and length not in dims, (step, c)


def test_per_device_memory_stays_flat(report):
    """Weak scaling: the same tokens per device on 1 and 8 devices, train step (loss and
    gradients; `bench.sequence_parallel` prints the forward too), per-device compiled memory
    within 10% of one device's."""
    memory = report["memory"]
    for step in ("train",):
        one = memory["1"][step]
        assert abs(memory["8"][step] - one) <= 0.1 * one, (step, memory)


def test_old_mesh_shapes_read_with_sequence_one():
    assert sharding.mesh_shape((-1, 1, 1), 8) == (8, 1, 1, 1)
    assert sharding.mesh_shape((1, 1, -1, 1), 8) == (1, 1, 8, 1)
    with pytest.raises(ValueError, match="4 entries"):
        sharding.mesh_shape((8, 1), 8)


def test_rotary_positions_have_no_length_limit():
    """A rotary model with a position table too short for the input (absolute positions would
    refuse it) runs it; only relative positions matter inside a window: a token's output does
    not change when the document is shifted right by padding-free tokens outside its window."""
    cfg = LongformerConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=4, intermediate_size=64,
                           max_position_embeddings=34, attention_window=8, max_global_tokens=0,
                           position_embedding_type="rotary")
    model = LongformerForMaskedLM(cfg)
    ids = np.random.RandomState(0).randint(3, 64, (1, 300))
    params = model.init(jax.random.key(0), ids[:, :8])
    assert "position_embeddings" not in params["params"]["longformer"]["embeddings"]
    logits = model.apply(params, ids).logits
    shifted = model.apply(params, np.concatenate([ids[:, :40], ids], axis=1)).logits
    np.testing.assert_allclose(shifted[0, 60:300], logits[0, 20:260], atol=2e-5)
    with pytest.raises(ValueError, match="too long|longer"):
        LongformerForMaskedLM(cfg.replace(position_embedding_type="absolute")).apply(
            params, ids)
    with pytest.raises(ValueError, match="rotary"):
        cfg.to_hf_dict()
    assert jnp.isfinite(logits).all()
