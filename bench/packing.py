"""Real (non-padding) tokens per second of a fine-tuning step, packed rows against padded ones.

    python -m bench.packing                      # base model, seq_len 4096 and 1024
    python -m bench.packing --lengths 1024 --steps 2 --model small

Each case draws example lengths from a length distribution like a real collection's (below),
makes a classification fine-tuning step (forward, backward, AdamW) on rows of `seq_len`, and
times it two ways in the same run: padded (one example per row, as every Longformer
implementation people use does it) and packed (`longformer.packing.pack`: first-fit decreasing,
`segment_ids`, one prediction per example). Both steps get the same rows per step, and each
example its `<s>` as the one global token; tokens past `seq_len` are cut in both. The figure is
real tokens processed per second (truncated examples count their kept tokens).

Length distributions (tokens, RoBERTa BPE), log-normal, seeded:
* hyperpartisan: median 520, sigma 0.75 (mean about 690; Hyperpartisan articles average about
  700 tokens, with a long tail past 4096);
* imdb: median 220, sigma 0.75 (mean about 290; IMDB reviews average about 300 tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench.run import cpu_name
from longformer import LongformerConfig, LongformerForSequenceClassification, packing

DISTRIBUTIONS = {"hyperpartisan": (520.0, 0.75), "imdb": (220.0, 0.75)}
MODELS = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, attention_window=512),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                  intermediate_size=1024, attention_window=256),
}


def draw_lengths(name: str, count: int, seed: int = 0) -> np.ndarray:
    median, sigma = DISTRIBUTIONS[name]
    rng = np.random.default_rng(seed)
    return np.maximum(rng.lognormal(np.log(median), sigma, count).astype(np.int64), 8)


def example_rows(lengths: np.ndarray, seq_len: int, vocab: int, seed: int = 1) -> dict:
    """One example per row, padded: `<s> tokens </s>`, `<s>` global, a binary label."""
    rng = np.random.default_rng(seed)
    n = len(lengths)
    ids = np.ones((n, seq_len), np.int32)  # pad id 1
    mask = np.zeros((n, seq_len), np.int32)
    for i, length in enumerate(np.minimum(lengths, seq_len)):
        ids[i, :length] = rng.integers(3, vocab, length)
        ids[i, 0], ids[i, length - 1] = 0, 2
        mask[i, :length] = 1
    glob = np.zeros_like(mask)
    glob[:, 0] = 1
    return {"input_ids": ids, "attention_mask": mask, "global_attention_mask": glob,
            "labels": rng.integers(0, 2, n).astype(np.int32)}


def make_step(model, tx):
    def loss_fn(params, batch, rng):
        kwargs = {k: batch[k] for k in ("attention_mask", "global_attention_mask",
                                        "segment_ids") if k in batch}
        return model.apply(params, batch["input_ids"], labels=batch["labels"],
                           deterministic=False, rngs={"dropout": rng}, **kwargs).loss

    def step(params, opt_state, batch, rng):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, rng)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def time_steps(cfg, batches, steps: int) -> float:
    """Seconds per step over `steps` steps after one that compiles."""
    model = LongformerForSequenceClassification(cfg)
    b0 = batches[0]
    params = model.init(jax.random.key(0), b0["input_ids"][:1],
                        **({"segment_ids": b0["segment_ids"][:1]} if "segment_ids" in b0 else {}))
    tx = optax.adamw(1e-5)
    opt_state = tx.init(params)
    step = make_step(model, tx)
    rng = jax.random.key(1)
    params, opt_state, loss = step(params, opt_state, batches[0], rng)
    loss.block_until_ready()
    start = time.perf_counter()
    for i in range(steps):
        params, opt_state, loss = step(params, opt_state, batches[1 + i], jax.random.fold_in(rng, i))
    loss.block_until_ready()
    return (time.perf_counter() - start) / steps


def batches_of(rows: dict, per_step: int, count: int) -> tuple[list[dict], list[int]]:
    """`count` batches of `per_step` rows (cycling), and the real tokens in each."""
    n = len(rows["input_ids"])
    out, real = [], []
    for b in range(count):
        take = np.arange(b * per_step, (b + 1) * per_step) % n
        batch = {k: jnp.asarray(v[take]) for k, v in rows.items()
                 if k in ("input_ids", "attention_mask", "global_attention_mask", "labels",
                          "segment_ids")}
        out.append(batch)
        real.append(int(np.asarray(rows["attention_mask"])[take].sum()))
    return out, real


def run_case(dist: str, seq_len: int, args) -> dict:
    per_step = max(1, 4096 // seq_len)  # the same row capacity per step at every length
    lengths = draw_lengths(dist, args.examples)
    rows = example_rows(lengths, seq_len, args.vocab)
    base = LongformerConfig(vocab_size=args.vocab, max_position_embeddings=seq_len + 2,
                            num_labels=2, remat=args.remat, scan_layers=True,
                            **MODELS[args.model])
    result = {"distribution": dist, "seq_len": seq_len, "rows_per_step": per_step,
              "examples": int(len(lengths)),
              "mean_length": float(np.minimum(lengths, seq_len).mean())}

    padded, padded_real = batches_of(rows, per_step, args.steps + 1)
    t = time_steps(base.replace(max_global_tokens=1), padded, args.steps)
    result["padded_s_per_step"] = t
    result["padded_real_tokens_per_s"] = float(np.mean(padded_real[1:]) / t)

    cfg = base
    packed_rows = None
    for slots in (8, 16, 32, 64):  # the fewest slots that pack as tightly as unlimited ones
        trial = packing.pack(rows, seq_len=seq_len, max_global_tokens=slots, max_segments=slots)
        if packed_rows is None or len(trial["input_ids"]) < len(packed_rows["input_ids"]):
            packed_rows, cfg = trial, base.replace(max_global_tokens=slots, max_segments=slots)
        else:
            break
    packed, packed_real = batches_of(packed_rows, per_step, args.steps + 1)
    t = time_steps(cfg, packed, args.steps)
    result.update(packed_s_per_step=t, packed_real_tokens_per_s=float(np.mean(packed_real[1:]) / t),
                  packed_rows=int(len(packed_rows["input_ids"])), max_segments=cfg.max_segments,
                  fill=float(np.asarray(packed_rows["attention_mask"]).mean()))
    result["ratio"] = result["packed_real_tokens_per_s"] / result["padded_real_tokens_per_s"]
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="4096,1024")
    parser.add_argument("--dists", default="hyperpartisan,imdb")
    parser.add_argument("--model", default="base", choices=sorted(MODELS))
    parser.add_argument("--remat", default="minimal")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--vocab", type=int, default=50265)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    print(f"{cpu_name()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, model "
          f"{args.model}, remat {args.remat}")
    results = []
    for seq_len in [int(x) for x in args.lengths.split(",")]:
        for dist in args.dists.split(","):
            r = run_case(dist, seq_len, args)
            results.append(r)
            print(f"{dist:14s} {seq_len:5d}  padded {r['padded_real_tokens_per_s']:8.0f} tok/s "
                  f"({r['padded_s_per_step']:.2f} s/step)  packed "
                  f"{r['packed_real_tokens_per_s']:8.0f} tok/s ({r['packed_s_per_step']:.2f} "
                  f"s/step, {r['max_segments']} slots, fill {r['fill']:.2f})  "
                  f"ratio {r['ratio']:.2f}x", flush=True)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"machine": cpu_name(), "cores": os.cpu_count(),
                       "date": time.strftime("%Y-%m-%d"), "model": args.model,
                       "remat": args.remat, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
