"""Each hand-written VJP of `longformer/kernels.py` against autodiff of its plain form, at the
base model's shapes for 4,096 tokens, forward + backward, on this machine (the CPU: the only
platform they are used on). Decides whether each kernel stays (bench/README.md).

    python -m bench.kernels --length 4096 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import time


def _best(fn, args, repeats):
    import jax
    compiled = jax.jit(fn).lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
    return min(times)


def cases(length: int, dtype: str):
    """name -> (hand-written, plain, args): functions of arrays returning their VJP outputs."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from longformer import kernels, layers
    from longformer.config import LongformerConfig

    gpu = LongformerConfig(platform="gpu", dtype=dtype, layer_norm_eps=1e-5)
    cpu = gpu.replace(platform="cpu")
    rng = np.random.RandomState(0)
    h, ffn = 768, 3072

    def grad_of(f):
        def run(*args):
            out, pull = jax.vjp(f, *args)
            return out, pull(jnp.ones_like(out))
        return run

    x_ffn = jnp.asarray(rng.randn(1, length, ffn), dtype)
    x_h = jnp.asarray(rng.randn(1, length, h), dtype)
    w = jnp.asarray(rng.randn(h, ffn) * 0.02, jnp.float32)
    b = jnp.zeros((ffn,), jnp.float32)
    x32 = jnp.asarray(rng.randn(1, length, h), jnp.float32)
    s, c = jnp.ones((h,), jnp.float32), jnp.zeros((h,), jnp.float32)
    return {
        "gelu (1 x N x 3072)": (grad_of(kernels.gelu), grad_of(lambda v: layers.gelu(v, gpu)),
                                (x_ffn,)),
        "linear (N x 768 @ 768 x 3072)": (grad_of(lambda *a: layers.linear(*a, cpu)),
                                          grad_of(lambda *a: layers.linear(*a, gpu)), (x_h, w, b)),
        # The FFN output: its weight gradient reads the GELU recompute across its rows.
        "gelu, linear (N x 3072 @ 3072 x 768)": (
            grad_of(lambda v, *a: layers.linear(layers.gelu(v, cpu), *a, cpu)),
            grad_of(lambda v, *a: layers.linear(layers.gelu(v, gpu), *a, gpu)), (x_ffn, w.T, c)),
        "layer_norm (N x 768)": (grad_of(lambda *a: layers.layer_norm(*a, cpu)),
                                 grad_of(lambda *a: layers.layer_norm(*a, gpu)), (x32, s, c)),
    }


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtypes", default="float32,bfloat16")
    args = p.parse_args(argv)
    for dtype in args.dtypes.split(","):
        for name, (ours, plain, arrays) in cases(args.length, dtype).items():
            if name.startswith("layer_norm") and dtype != "float32":
                continue  # LayerNorm runs in float32 whatever the compute dtype
            t_ours, t_plain = _best(ours, arrays, args.repeats), _best(plain, arrays, args.repeats)
            print(json.dumps({"kernel": name, "dtype": dtype, "hand_written_ms": t_ours * 1e3,
                              "autodiff_ms": t_plain * 1e3, "speedup": t_plain / t_ours}),
                  flush=True)


if __name__ == "__main__":
    main()
