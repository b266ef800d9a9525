"""One document over many devices: per-device memory and bytes moved per layer, by devices.

    python -m bench.sequence_parallel                       # the table, 8 fake CPU devices
    python -m bench.sequence_parallel --million             # + run a 1,048,576-token document
    python -m bench.sequence_parallel --per-device 16384 --model small

Runs on 8 fake CPU devices (it sets XLA_FLAGS itself before JAX starts), where timings mean
nothing: what it reports is what the compiler says. For 1, 2, 4 and 8 devices on the `sequence`
axis, at a fixed number of tokens per device (weak scaling) and at a fixed document (strong
scaling): the per-device compiled memory (`memory_analysis()`: arguments + outputs +
temporaries) of the forward and of a train step (loss and gradients), and the bytes that the
compiled forward's collectives move per layer per device (collective-permutes: the band's
halo; all-reduces and all-gathers: the global tokens' rows and softmax statistics, a few
numbers per shard).

`--million` then runs, for real, the forward and a train step of the model on a document of
1,048,576 tokens split over the 8 devices, and compiles the same model on one device at growing
lengths to find the longest document whose one-device memory fits in this machine's RAM.
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse
import json
import re
import time

import numpy as np

MODELS = {  # rotary positions: no position table to outgrow
    "tiny": dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=256, attention_window=256),
    "small": dict(vocab_size=8192, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                  intermediate_size=1024, attention_window=512),
}

_BYTES = {"f32": 4, "bf16": 2, "s32": 4, "u32": 4, "pred": 1, "f16": 2, "s8": 1, "u8": 1}


def collectives(hlo: str) -> list[dict]:
    """Every collective of an HLO module: its kind and its operands' (dtype, dims)."""
    found = []
    for line in hlo.splitlines():
        m = re.search(r"= (.+?) (collective-permute|all-gather|all-reduce|all-to-all|"
                      r"reduce-scatter)(?:-start)?\(", line)
        if m:
            shapes = re.findall(r"([a-z]+\d*)\[([\d,]*)\]", m.group(1))
            found.append({"kind": m.group(2), "shapes": [
                [dtype, [int(d) for d in dims.split(",") if d]] for dtype, dims in shapes]})
    return found


def moved_bytes(found: list[dict]) -> dict[str, int]:
    """Bytes per kind of collective (the result's size: what each device receives)."""
    out: dict[str, int] = {}
    for c in found:
        size = sum(_BYTES.get(dtype, 4) * int(np.prod(dims)) for dtype, dims in c["shapes"])
        out[c["kind"]] = out.get(c["kind"], 0) + size
    return out


def _setup(model_name: str, length: int, remat: str = "none"):
    import jax
    import jax.numpy as jnp

    from longformer import LongformerConfig, LongformerForMaskedLM

    cfg = LongformerConfig(**MODELS[model_name], max_position_embeddings=514,
                           position_embedding_type="rotary", max_global_tokens=4, remat=remat,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = LongformerForMaskedLM(cfg)

    def forward(params, ids):
        glob = jnp.zeros_like(ids).at[:, 0].set(1)
        return model.apply(params, ids, global_attention_mask=glob).logits

    def loss(params, ids):
        logits = forward(params, ids).astype(jnp.float32)
        picked = jnp.take_along_axis(jax.nn.log_softmax(logits), ids[..., None], axis=-1)
        return -jnp.mean(picked)

    params = model.init(jax.random.key(0), jnp.ones((1, cfg.max_window), jnp.int32))
    return cfg, model, params, forward, jax.value_and_grad(loss)


def _compiled(fn, params, ids, mesh):
    import jax

    from longformer import sharding

    with sharding.activation_context(mesh):
        return jax.jit(fn, in_shardings=(sharding.replicated(mesh), sharding.replicated(mesh))
                       ).lower(params, ids).compile()


def _memory(compiled) -> int:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


def table(model_name: str, per_device: int, document: int) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from longformer import sharding

    rows = []
    for scaling, lengths in (("weak", lambda s: per_device * s), ("strong", lambda s: document)):
        for shards in (1, 2, 4, 8):
            length = lengths(shards)
            cfg, _, params, forward, train = _setup(model_name, length)
            mesh = sharding.make_mesh((1, 1, shards, 1), devices=jax.devices()[:shards])
            ids = jax.ShapeDtypeStruct((1, length), jnp.int32)
            fwd = _compiled(forward, params, ids, mesh)
            step = _compiled(train, params, ids, mesh)
            moved = {k: v // cfg.num_hidden_layers
                     for k, v in moved_bytes(collectives(fwd.as_text())).items()}
            rows.append(dict(scaling=scaling, devices=shards, length=length,
                             forward_mb=_memory(fwd) / 2**20, train_mb=_memory(step) / 2**20,
                             moved_per_layer=moved))
            print(f"{scaling:6s} {shards} devices {length:>9,d} tokens: forward "
                  f"{rows[-1]['forward_mb']:8.1f} MB, train step {rows[-1]['train_mb']:8.1f} MB "
                  f"per device; per layer moved {moved}", flush=True)
    return rows


def million(model_name: str) -> dict:
    """The forward and a train step (`remat='full'`) on 1,048,576 tokens over 8 devices, run;
    and the longest document one device could hold in this machine's RAM (compiled memory
    only). The 8 fake devices share this machine's RAM, so the run needs 8 x per-device."""
    import jax
    import jax.numpy as jnp

    from longformer import sharding

    length = 1 << 20
    cfg, _, params, forward, train = _setup(model_name, length, remat="full")
    ids = jnp.asarray(np.random.RandomState(0).randint(3, cfg.vocab_size, (1, length)),
                      jnp.int32)
    mesh = sharding.make_mesh((1, 1, 8, 1))
    out = {"length": length, "model": model_name}
    for name, fn in (("forward", forward), ("train", train)):
        compiled = _compiled(fn, params, ids, mesh)
        start = time.perf_counter()
        result = jax.block_until_ready(compiled(params, ids))
        value = result[0] if name == "train" else result[0, :4, 0]
        out[name] = dict(per_device_mb=_memory(compiled) / 2**20,
                         seconds_on_fake_devices=time.perf_counter() - start,
                         finite=bool(jnp.all(jnp.isfinite(value))))
        print(f"1,048,576 tokens on 8 devices, {name}: {out[name]}", flush=True)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    one = jax.devices()[:1]
    fits, length = 0, 1 << 16
    while length <= 1 << 20:
        mesh1 = sharding.make_mesh((1, 1, 1, 1), devices=one)
        need = _memory(_compiled(train, params, jax.ShapeDtypeStruct((1, length), jnp.int32),
                                 mesh1))
        print(f"one device, {length:,d} tokens: train step {need / 2**30:.2f} GiB "
              f"(RAM {ram / 2**30:.1f} GiB)", flush=True)
        if need > ram:
            break
        fits, length = length, length * 2
    out["one_device"] = dict(longest_train_length_fitting_ram=fits, ram_gib=ram / 2**30)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", choices=sorted(MODELS))
    parser.add_argument("--per-device", type=int, default=8192)
    parser.add_argument("--document", type=int, default=65536)
    parser.add_argument("--million", action="store_true")
    parser.add_argument("--no-table", action="store_true", help="only the --million run")
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    from bench.run import cpu_name

    result = {"machine": cpu_name(), "model": MODELS[args.model], "table": [] if args.no_table
              else table(args.model, args.per_device, args.document)}
    if args.million:
        result["million"] = million(args.model)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
