"""Compiled memory of the base model's train step for each attention layout, read from XLA.

    python -m bench.layout_memory --lengths 4096,16384 --remat none,minimal

Each layout is compiled here, on the CPU, without running: the batched layout is what GPUs and
TPUs run, and `compiled.memory_analysis()` gives its buffers as XLA plans them (temporaries,
arguments, outputs). What this checks is that the accelerator layout's backward recomputes its
scores: its memory grows linearly with the length and stays within 2x the CPU loop's.
"""

from __future__ import annotations

import argparse
import json

from bench import cases


def compiled_memory(length: int, impl: str, remat: str, dtype: str = "float32") -> dict:
    import jax
    import jax.numpy as jnp
    from flax import traverse_util

    from longformer.hf_checkpoint import abstract_params
    from longformer.modeling import LongformerModel

    cfg = cases._jax_config(length, dtype, remat, False, attention_impl=impl)
    model = LongformerModel(cfg, add_pooling_layer=False)
    params = {"params": traverse_util.unflatten_dict(abstract_params(model))}
    step, state = cases.jax_train_step(model, params)
    state = jax.eval_shape(lambda s: s, state)
    ids = jax.ShapeDtypeStruct((1, length), jnp.int32)
    compiled = jax.jit(step, donate_argnums=0).lower(state, ids, ids).compile()
    return cases._analysis(compiled)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--lengths", default="4096,16384")
    p.add_argument("--impls", default="loop,batched")
    p.add_argument("--remat", default="none,minimal")
    p.add_argument("--dtype", default="float32")
    args = p.parse_args(argv)
    rows = []
    for remat in args.remat.split(","):
        for length in map(int, args.lengths.split(",")):
            row = {"length": length, "remat": remat}
            for impl in args.impls.split(","):
                m = compiled_memory(length, impl, remat, args.dtype)
                row[impl] = {"temp_gb": m["temp"] / 1e9, "total_gb": m["total"] / 1e9}
            if "loop" in row and "batched" in row:
                row["batched/loop total"] = row["batched"]["total_gb"] / row["loop"]["total_gb"]
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
