"""The sequence-parallel comparisons, run in one Python with 8 fake CPU devices.

`tests/test_sequence_parallel.py` starts this file once (`python tests/sequence_parallel_checks.py
OUT.json`, XLA_FLAGS set before JAX starts) and asserts on what it writes: for each case the
largest difference of outputs and gradients between one device and a mesh with a `sequence`
axis, the collectives of one compiled sequence-parallel layer, and per-device compiled memory at a
fixed per-device length.
"""

from __future__ import annotations

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench.sequence_parallel import collectives
from longformer import sharding
from longformer.config import LongformerConfig
from longformer.modeling import (
    LongformerForMaskedLM,
    LongformerForQuestionAnswering,
    LongformerModel,
)

BASE = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=520, attention_window=(8, 32),
            max_global_tokens=6, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
START = time.perf_counter()
BATCH, LENGTH = 2, 500  # padded to 512; example 1 ends in padding


def inputs(seed=0, global_positions=((0, 130, 257, 499), (0, 64, 300)), length=LENGTH):
    """Ids, a padded second example, global tokens on several shards (the first and the last)."""
    r = np.random.RandomState(seed)
    ids = r.randint(3, 64, (BATCH, length)).astype(np.int32)
    ids[1, length - 90:] = 1  # padding
    mask = (ids != 1).astype(np.int32)
    glob = np.zeros((BATCH, length), np.int32)
    for b, where in enumerate(global_positions):
        glob[b, list(where)] = 1
    labels = np.where(r.rand(BATCH, length) < 0.3, ids, -100).astype(np.int32)
    return ids, mask, glob, labels


def mesh_of(shape):
    count = int(np.prod(shape))
    return sharding.make_mesh(shape, devices=jax.devices()[:count])


def max_diff(a, b) -> float:
    """Largest |a - b| over two trees, relative to the largest |b| when that is above 1."""
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
        worst = max(worst, float(np.abs(x - y).max()) / max(1.0, float(np.abs(y).max())))
    return worst


def compare(name, model, meshes, fields, loss_of, **kw) -> dict:
    """fields and d loss / d params on one device, then on each mesh (sequence split)."""
    ids, mask, glob, labels = inputs()
    if model.config.max_global_tokens == 0:
        glob = np.zeros_like(glob)
    params = model.init(jax.random.key(0), ids[:, :32], global_attention_mask=glob[:, :32])

    def run(p):
        out = model.apply(p, ids, attention_mask=mask, global_attention_mask=glob, **kw)
        return loss_of(out, labels), {f: getattr(out, f) for f in fields}

    step = jax.value_and_grad(run, has_aux=True)
    (ref_loss, ref_out), ref_grad = jax.jit(step)(params)
    results = {}
    for shape in meshes:
        with sharding.activation_context(mesh_of(shape)):
            (loss, out), grad = jax.jit(step)(params)
        print(name, shape, f"{time.perf_counter() - START:.0f} s", flush=True)
        results[f"{name} {shape}"] = dict(
            loss=max_diff(loss, ref_loss), outputs=max_diff(out, ref_out),
            grads=max_diff(grad, ref_grad))
    return results


def mlm_loss(out, labels):
    logits = out.logits.astype(jnp.float32)
    picked = jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.maximum(labels, 0)[..., None],
                                 axis=-1)[..., 0]
    return -jnp.sum(jnp.where(labels >= 0, picked, 0.0)) / jnp.sum(labels >= 0)


def hidden_loss(out, labels):
    del labels
    return jnp.sum(out.last_hidden_state.astype(jnp.float32) ** 2)


def equality_cases() -> dict:
    cfg = LongformerConfig(**BASE)
    four = [(1, 1, 4, 1)]
    out = {}
    out.update(compare("mlm", LongformerForMaskedLM(cfg), [(1, 1, 8, 1), (2, 1, 4, 1),
                                                           (1, 2, 2, 2)], ["logits"], mlm_loss))
    # The accelerators' band layout, dilation per head, rotary positions, scan + remat and the
    # attention weights, in one model.
    features = cfg.replace(attention_impl="batched", attention_dilation=((1, 2, 2, 4), 1),
                           position_embedding_type="rotary", scan_layers=True, remat="minimal")
    out.update(compare("features", LongformerModel(features, add_pooling_layer=False), four,
                       ["last_hidden_state", "attentions", "global_attentions"], hidden_loss,
                       output_attentions=True))
    out.update(compare("bfloat16", LongformerForMaskedLM(cfg.replace(dtype="bfloat16")), four,
                       ["logits"], mlm_loss))
    out.update(compare("qa", LongformerForQuestionAnswering(cfg), four,
                       ["start_logits", "end_logits"],
                       lambda o, _: jnp.sum(jax.nn.log_softmax(o.start_logits)[:, 40]
                                            + jax.nn.log_softmax(o.end_logits)[:, 45])))
    out.update(charlm_case())
    return out


def charlm_case() -> dict:
    """The causal, dilated char LM (its own layers and rotary positions) on sequence 4."""
    from longformer.charlm import CharLM

    cfg = LongformerConfig(**{**BASE, "vocab_size": 256, "causal": True, "max_global_tokens": 0,
                              "attention_dilation": (1, 2)})
    model = CharLM(cfg)
    ids = np.random.RandomState(0).randint(0, 256, (BATCH, 512)).astype(np.int32)
    params = model.init(jax.random.key(0), ids[:, :32])

    def run(p):
        logits = model.apply(p, ids)
        return mlm_loss(type("Out", (), {"logits": logits}), ids), logits

    step = jax.value_and_grad(run, has_aux=True)
    (ref_loss, ref_out), ref_grad = jax.jit(step)(params)
    with sharding.activation_context(mesh_of((1, 1, 4, 1))):
        (loss, out), grad = jax.jit(step)(params)
    return {"charlm (1, 1, 4, 1)": dict(loss=max_diff(loss, ref_loss),
                                        outputs=max_diff(out, ref_out),
                                        grads=max_diff(grad, ref_grad))}


def op_cases() -> dict:
    """The op alone, on 2, 4 and 8 shards, with halos longer than a shard (several hops: a
    window of 12 + 12 and a causal dilated one on shards of 8 rows)."""
    from jax.sharding import PartitionSpec as P

    from longformer import attention as attn
    from longformer import sequence_parallel as sp

    out = {}
    for name, left, right, dilation, shards in (
            ("two hops", 12, 12, 1, 8), ("causal dilated", 10, 0, 2, 8), ("band", 4, 4, 1, 2),
            ("dilated", 3, 3, (1, 2), 4)):
        r = np.random.RandomState(1)
        q, k, v, kg, vg = (jnp.asarray(r.randn(2, 64, 2, 8), jnp.float32) for _ in range(5))
        mask = jnp.asarray(np.arange(64)[None, :] < np.array([[64], [51]]))
        is_global = np.zeros((2, 64), bool)
        is_global[0, [0, 33, 63]] = is_global[1, [5, 40]] = True
        is_global = jnp.asarray(is_global) & mask
        use_global = right > 0
        budget = 4 if use_global else 0

        def one(q, k, v, kg, vg, mask, is_global):
            g = attn.global_token_indices(is_global, budget) if use_global else None
            return attn.longformer_attention(
                q, k, v, mask, left=left, right=right, dilation=dilation, globals_=g,
                q_global=g and attn.gather_rows(q, g.index), k_global=kg, v_global=vg,
                loop=True)

        def split(q, k, v, kg, vg, mask, is_global):
            g = (sp.over_sequence(lambda m: attn.global_token_indices(m, budget, sp.AXIS),
                                  (sp.along(1),), P())(is_global) if use_global else None)
            q_global = g and sp.over_sequence(lambda x, i: sp.gather_rows(x, i, sp.AXIS, varying=False),
                                              (sp.along(1), P()), P())(q, g.index)
            return attn.sharded_longformer_attention(
                q, k, v, mask, left=left, right=right, dilation=dilation, globals_=g,
                q_global=q_global, k_global=kg, v_global=vg, loop=True)

        args = (q, k, v, kg, vg, mask, is_global)
        grads = lambda f: jax.grad(lambda *a: jnp.sum(f(*a) ** 2), argnums=range(5))  # noqa: E731
        ref, ref_grad = jax.jit(one)(*args), jax.jit(grads(one))(*args)
        with sharding.activation_context(mesh_of((1, 1, shards, 1))):
            got, got_grad = jax.jit(split)(*args), jax.jit(grads(split))(*args)
        out[f"op {name} (1, 1, {shards}, 1)"] = dict(outputs=max_diff(got, ref),
                                                     grads=max_diff(got_grad, ref_grad))
    return out


def refusals() -> dict:
    """What a sequence-parallel mesh refuses, with the error's text."""
    cfg = LongformerConfig(**BASE)
    ids, mask, glob, _ = inputs()
    found = {}
    cases = {"segment_ids": (LongformerModel(cfg), dict(segment_ids=np.ones_like(ids))),
             "dense": (LongformerModel(cfg.replace(attention_impl="dense")), {})}
    for name, (model, extra) in cases.items():
        params = model.init(jax.random.key(0), ids[:, :32], global_attention_mask=glob[:, :32])
        try:
            with sharding.activation_context(mesh_of((1, 1, 4, 1))):
                jax.jit(lambda p: model.apply(p, ids, global_attention_mask=glob, **extra)
                        .last_hidden_state)(params)
            found[name] = ""
        except ValueError as e:
            found[name] = str(e)
    return found


def layer_hlo(platform: str) -> dict:
    """One layer's train step (forward and backward) at sequence 8, built for `platform`
    (compiled for these CPU devices either way): what its collectives move."""
    cfg = LongformerConfig(**{**BASE, "num_hidden_layers": 1, "attention_window": 16,
                              "max_position_embeddings": 2100, "max_global_tokens": 4,
                              "platform": platform})
    model = LongformerModel(cfg, add_pooling_layer=False)
    ids = np.random.RandomState(0).randint(3, 64, (BATCH, 2048)).astype(np.int32)
    glob = np.zeros_like(ids)
    glob[:, 0] = 1
    params = model.init(jax.random.key(0), ids[:, :16])

    def loss(p):
        return jnp.sum(model.apply(p, ids, global_attention_mask=glob).last_hidden_state ** 2)

    with sharding.activation_context(mesh_of((1, 1, 8, 1))):
        train = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    return dict(train=collectives(train), batch=BATCH, length=2048, shards=8,
                hidden=cfg.hidden_size, left=8, right=8, budget=4)


def weak_scaling(per_device=4096) -> dict:
    """Per-device compiled memory of the forward and of a train step (loss and gradients), at
    `per_device` tokens per device, on 1 and 8 devices (`bench.sequence_parallel` prints 2 and
    4 as well)."""
    from configs import mlm_tiny
    from longformer import train_lib

    cfg = LongformerConfig(**{**BASE, "max_position_embeddings": 8 * per_device + 2,
                              "max_global_tokens": 4})
    model = LongformerForMaskedLM(cfg)
    c = mlm_tiny.get_config()
    tx = train_lib.make_optimizer(c)
    out = {}
    for shards in (1, 8):
        length = per_device * shards
        ids = jax.ShapeDtypeStruct((1, length), jnp.int32)
        mesh = mesh_of((1, 1, shards, 1))
        state, _ = train_lib.create_train_state(model, tx, mesh, jax.random.key(0))
        params = state["params"]

        def train(p, ids):
            def loss(p):
                return mlm_loss(model.apply(p, ids, global_attention_mask=jnp.zeros_like(ids)
                                            .at[:, 0].set(1)), ids)
            return jax.value_and_grad(loss)(p)

        with sharding.activation_context(mesh):
            sh = sharding.NamedSharding(mesh, sharding.P())
            row = {}
            for name, fn in (("train", train),):  # bench.sequence_parallel: the forward too
                mem = jax.jit(fn, in_shardings=(None, sh)).lower(params, ids).compile(
                ).memory_analysis()
                row[name] = int(mem.temp_size_in_bytes + mem.output_size_in_bytes
                                + mem.argument_size_in_bytes)
        out[str(shards)] = row
    return out


def main(path):
    results = {"devices": jax.device_count(),
               "equality": {**op_cases(), **equality_cases()}, "refusals": refusals(),
               "hlo": {p: layer_hlo(p) for p in ("cpu", "gpu")}, "memory": weak_scaling()}
    print(f"done in {time.perf_counter() - START:.0f} s", flush=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
