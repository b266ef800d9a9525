"""Micro-benchmark of the attention op alone (one layer, base shapes), variants interleaved.

    python -m bench.op_bench --length 4096 --blocks 0,64,128,256 --rounds 5

Each variant is compiled once; the rounds then call every variant in turn (interleaved, so
background load hits all of them alike) and the best time of each is compared with the first
variant. A dense (4096 x 768) @ (768 x 768) projection is timed alongside as a yardstick.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from longformer import attention as A


def make_inputs(length, heads=12, dim=64, global_tokens=1, budget=1, dtype=jnp.float32):
    rng = np.random.RandomState(0)
    def r(*shape):
        return jnp.asarray(rng.randn(*shape), dtype)
    q, k, v, kg, vg = (r(1, length, heads, dim) for _ in range(5))
    qg = r(1, budget, heads, dim)
    am = jnp.ones((1, length), bool)
    gl = jnp.zeros((1, length), bool).at[:, :global_tokens].set(True)
    return q, k, v, qg, kg, vg, am, gl


def op(q, k, v, qg, kg, vg, am, gl, *, window, block, budget, module=A, loop=True):
    g = module.global_token_indices(gl, budget) if budget else None
    return module.longformer_attention(q, k, v, am, left=window // 2, right=window // 2,
                                       globals_=g, q_global=qg if budget else None, k_global=kg,
                                       v_global=vg, block=block or None, loop=loop)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--blocks", default="0,64,128,256",
                   help="block sizes; 'old:128' runs the op from --old (a copy of attention.py)")
    p.add_argument("--old", default="", help="path of another attention.py to compare with")
    p.add_argument("--budget", type=int, default=1)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--grad", action="store_true", help="time forward + backward")
    p.add_argument("--layout", default="loop", choices=["loop", "batched"],
                   help="the band's layout: the CPU loop or the accelerators' batched blocks")
    args = p.parse_args(argv)

    dtype = jnp.dtype(args.dtype)
    inputs = make_inputs(args.length, budget=args.budget, dtype=dtype)
    fns = {}
    old = None
    if args.old:
        import importlib.util
        spec = importlib.util.spec_from_file_location("old_attention", args.old)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
    for name in args.blocks.split(","):
        module = old if name.startswith("old:") else A
        b = int(name.split(":")[-1])
        f = lambda *xs, b=b, m=module: op(*xs, window=args.window, block=b, budget=args.budget,
                                          module=m, loop=args.layout == "loop")
        if args.grad:
            f = jax.grad(lambda *xs, f=f: jnp.sum(f(*xs).astype(jnp.float32)),
                         argnums=(0, 1, 2, 3, 4, 5))
        t = time.perf_counter()
        fns[f"block={name}"] = jax.jit(f).lower(*inputs).compile()
        print(f"block={name}: compile {time.perf_counter() - t:.1f}s", flush=True)
    x = jnp.ones((args.length, 768), dtype)
    w = jnp.ones((768, 768), dtype)
    fns["proj 768x768"] = jax.jit(jnp.dot).lower(x, w).compile()
    best = {n: float("inf") for n in fns}
    for _ in range(args.rounds):
        for name, f in fns.items():
            xs = (x, w) if name.startswith("proj") else inputs
            jax.block_until_ready(f(*xs))
            t = time.perf_counter()
            jax.block_until_ready(f(*xs))
            best[name] = min(best[name], time.perf_counter() - t)
    first = next(iter(best))
    for name, t in best.items():
        print(f"{name:>16}: {t * 1e3:8.2f} ms  ratio to {first}: {t / best[first]:.2f}")


if __name__ == "__main__":
    main()
