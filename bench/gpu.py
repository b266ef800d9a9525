"""The JAX cases on one accelerator (GPU/TPU): tokens/s and model FLOPs utilisation, as a table.

    python bench/gpu.py                      # 4K, 16K, 32K; a few minutes on one GPU
    python bench/gpu.py --lengths 4096 --impls jax-bf16

Needs only JAX, Flax and optax (no torch). Every case is compiled once (compile time reported,
not counted), warmed up, then timed (best of --repeats). MFU is model FLOPs/s (the useful work:
projections, exact band, global rows and columns; a train step is 3x a forward) over the
measured `jnp.dot` rate of the same dtype on this device, and, when the device is known, over
its datasheet dense peak. Memory is XLA's compiled memory analysis and the device's peak.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench import cases  # noqa: E402

# Dense datasheet peaks in FLOP/s (float32 column: TF32 tensor cores, JAX's default f32 matmul).
PEAKS = {"H100": {"float32": 495e12, "bfloat16": 989e12},
         "H200": {"float32": 495e12, "bfloat16": 989e12},
         "A100": {"float32": 156e12, "bfloat16": 312e12}}


def device_peak(dtype):
    kind = jax.devices()[0].device_kind
    for name, peaks in PEAKS.items():
        if name in kind:
            return peaks[dtype]
    return None


def matmul_rate(dtype, n=8192, repeats=10):
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda a, b: jnp.dot(a, b)).lower(a, a).compile()
    jax.block_until_ready(f(a, a))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(a, a))
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def device_peak_bytes():
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--lengths", default="4096,16384,32768")
    p.add_argument("--impls", default="jax-f32,jax-bf16,jax-f32-min,jax-bf16-min,jax-f32-remat,"
                                      "jax-bf16-remat")
    p.add_argument("--modes", default="fwd,train")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--matmul-size", type=int, default=8192, help="n of the n x n jnp.dot")
    args = p.parse_args(argv)

    dev = jax.devices()[0]
    rates = {d: matmul_rate(d, args.matmul_size) for d in ("float32", "bfloat16")}
    print(f"device: {dev.device_kind} ({dev.platform}); jnp.dot float32 "
          f"{rates['float32'] / 1e12:.1f} TFLOP/s, bfloat16 {rates['bfloat16'] / 1e12:.1f} TFLOP/s")
    head = (f"{'length':>6} {'impl':<15} {'mode':<5} {'tok/s':>9} {'ms/step':>8} "
            f"{'TFLOP/s':>7} {'MFU(dot)':>8} {'MFU(peak)':>9} {'XLA GB':>7} {'compile':>7}")
    print(head + "\n" + "-" * len(head), flush=True)
    for n in [int(x) for x in args.lengths.split(",")]:
        for impl in args.impls.split(","):
            family, dtype, remat = cases.IMPLS[impl]
            modes = [m for m in args.modes.split(",") if not (m == "fwd" and remat != "none")]
            try:
                res = cases.run_jax(impl, n, modes, args.repeats, budget_s=60.0)
            except Exception as e:  # out of memory, mostly: report and go on
                print(f"{n:>6} {impl:<15} {'/'.join(modes):<5} failed: "
                      f"{type(e).__name__}: {str(e).splitlines()[0][:120]}", flush=True)
                continue
            for mode, t in res.items():
                flops = cases.model_flops(family, n, mode == "train")
                rate = flops / t.best
                peak = device_peak(dtype)
                mem = (t.analysis or {}).get("total")
                print(f"{n:>6} {impl:<15} {mode:<5} {n / t.best:9.0f} {t.best * 1e3:8.1f} "
                      f"{rate / 1e12:7.1f} {rate / rates[dtype]:8.2f} "
                      f"{(rate / peak) if peak else float('nan'):9.2f} "
                      f"{(mem or 0) / 2 ** 30:7.2f} {t.compile_s:7.1f}", flush=True)


if __name__ == "__main__":
    main()
