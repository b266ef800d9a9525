"""Speed and memory of longformer-jax against the PyTorch reference and full-attention baselines.

    python -m bench.run                 # the full sweep (about 20 minutes on an idle 2-core machine)
    python -m bench.run --quick         # 1K and 2K, fewer cases (a few minutes)
    python -m bench.run --lengths 1024,4096 --impls jax-f32,ref --modes fwd

Every case (implementation x length) runs in its own process, one after the other, so its peak
memory is its own; the order of implementations alternates from one length to the next so that
background load does not favour any of them. Throughput is the best of a few timed calls after a
warm-up; compile time (JAX) or the first call (PyTorch) is reported separately. Peak memory is the
process's peak resident set during the timed calls (`VmHWM`, reset after compiling for JAX), plus
XLA's own memory analysis for JAX. The float32 and bfloat16 `jnp.dot` rates are measured by the
same command (before and after the sweep) and model FLOPs utilisation (MFU) is model FLOPs/s over
the float32 rate.

Writes results.json, results.csv and figure1.png (time and memory against sequence length, the
paper's Figure 1 for whole models) to --out (default bench/results/), and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import subprocess
import sys
import time

from bench import cases

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# glibc allocator tuning, given to every case alike: it keeps freed memory mapped instead of
# returning it to the kernel and faulting it back in at the next step (without it the reference
# is 1.5-2x slower still, and JAX's train step 5-10% slower).
ALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
# Longest length each implementation runs at by default, per mode (memory and time on a
# 2-core, 24 GB machine). --no-caps lifts them.
CAPS = {
    "jax-f32": {"fwd": 131072, "train": 8192},
    "jax-f32-min": {"fwd": 0, "train": 16384},  # remat changes only the train step
    "jax-f32-remat": {"fwd": 0, "train": 32768},
    "jax-bf16": {"fwd": 131072, "train": 8192},
    "jax-bf16-min": {"fwd": 0, "train": 16384},
    "jax-bf16-remat": {"fwd": 0, "train": 32768},
    "jax-dense": {"fwd": 4096, "train": 2048},
    "ref": {"fwd": 16384, "train": 4096},
    "ref-bf16": {"fwd": 16384, "train": 4096},
    "roberta-sdpa": {"fwd": 16384, "train": 4096},
}
DEFAULT_IMPLS = ["jax-f32", "jax-f32-min", "jax-f32-remat", "jax-bf16", "jax-bf16-min",
                 "jax-bf16-remat", "jax-dense", "ref", "ref-bf16", "roberta-sdpa"]
QUICK_IMPLS = ["jax-f32", "jax-bf16", "jax-dense", "ref", "roberta-sdpa"]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# CPU features that decide the float32 and bfloat16 matmul paths (torch's oneDNN and XLA's).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_flags() -> list[str]:
    """Which of CPU_FLAGS this machine has (Linux /proc/cpuinfo; [] elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [flag for flag in CPU_FLAGS if flag in have]
    except OSError:
        pass
    return []


def run_case(impl, length, modes, repeats, timeout, budget_s):
    """One case in a fresh process -> {mode: result} or {'error': ...}."""
    cmd = [sys.executable, "-m", "bench.worker", "--impl", impl, "--length", str(length),
           "--modes", ",".join(modes), "--repeats", str(repeats), "--budget-s", str(budget_s)]
    env = dict(os.environ, **ALLOC_ENV)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout ({timeout}s)"}
    if p.returncode != 0:
        why = "killed (out of memory?)" if p.returncode in (-9, 137) else f"rc {p.returncode}"
        tail = (p.stderr or "").strip().splitlines()[-1:] or [""]
        return {"error": f"{why}: {tail[0][:200]}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def matmul_rates(timeout=300):
    p = subprocess.run([sys.executable, "-m", "bench.worker", "--impl", "matmul"], cwd=ROOT,
                       capture_output=True, text=True, timeout=timeout)
    return json.loads(p.stdout.strip().splitlines()[-1])


def has_bf16_matmul(flags) -> bool:
    """Whether the CPU multiplies bfloat16 in hardware (AVX-512 bf16 or AMX). Without it torch's
    autocast runs emulated bf16 kernels: 0.64 GFLOP/s against 53 in float32 on an AVX2 AMD EPYC
    (2026-12-02), so the reference's best configuration there is its float32 one, `ref`."""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def plan(lengths, impls, modes, caps):
    """[(length, impl, modes)] in run order: implementations alternate direction per length."""
    out = []
    if caps and cases.REFERENCE_BF16 in impls and not has_bf16_matmul(cpu_flags()):
        print(f"skipping {cases.REFERENCE_BF16}: this CPU has no bfloat16 matmul (no avx512_bf16 "
              "or amx_bf16), where torch's autocast is ~100x slower than its float32 (`ref`); "
              "--no-caps runs it", flush=True)
        impls = [i for i in impls if i != cases.REFERENCE_BF16]
    for i, n in enumerate(lengths):
        order = impls if i % 2 == 0 else impls[::-1]
        for impl in order:
            ms = [m for m in modes if not caps or n <= CAPS.get(impl, {}).get(m, 1 << 30)]
            if ms:
                out.append((n, impl, ms))
    return out


def rows_from(results, rate_f32, rate_bf16=None):
    """Flat rows (one per length x impl x mode) with ratios to both references (float32, and
    bfloat16 under autocast) and MFU against both `jnp.dot` rates."""
    def by_case(name):
        return {(r["length"], r["mode"]): r for r in results if r["impl"] == name
                and "tokens_per_s" in r}

    ref, ref16 = by_case(cases.REFERENCE), by_case(cases.REFERENCE_BF16)
    rows = []
    for r in results:
        row = dict(r)
        base, base16 = ref.get((r["length"], r["mode"])), ref16.get((r["length"], r["mode"]))
        if "tokens_per_s" in r and base:
            row["speed_vs_ref"] = r["tokens_per_s"] / base["tokens_per_s"]
            row["mem_vs_ref"] = r["peak_rss_gb"] / base["peak_rss_gb"]
        if "tokens_per_s" in r and base16:
            row["speed_vs_ref_bf16"] = r["tokens_per_s"] / base16["tokens_per_s"]
        if "flops_per_s" in r and rate_f32:
            row["mfu"] = r["flops_per_s"] / rate_f32
        if "flops_per_s" in r and rate_bf16:
            row["mfu_bf16"] = r["flops_per_s"] / rate_bf16
        rows.append(row)
    return rows


def collect(impl, length, mode, res):
    family = cases.IMPLS[impl][0]
    row = {"impl": impl, "length": length, "mode": mode}
    if "error" in res:
        row["error"] = res["error"]
        return row
    r = res[mode]
    flops = cases.model_flops(family, length, mode == "train")
    row.update(
        best_s=r["best_s"], times_s=r["times"], tokens_per_s=length / r["best_s"],
        flops=flops, flops_per_s=flops / r["best_s"], peak_rss_gb=r["peak_rss"] / 2 ** 30,
        compile_s=r["compile_s"] if family.startswith("jax") else None,
        first_call_s=(r["analysis"] or {}).get("first_call_s"))
    a = r["analysis"] or {}
    if "total" in a:
        row["xla_total_gb"] = a["total"] / 2 ** 30
        row["xla_temp_gb"] = a["temp"] / 2 ** 30
        row["compile_rss_gb"] = a["compile_rss"] / 2 ** 30
    return row


def fmt(x, spec, missing="-"):
    width = int(spec.split(".")[0] or 0)
    return missing.rjust(width) if x is None else format(x, spec)


def table(rows) -> str:
    head = (f"{'length':>6} {'impl':<15} {'mode':<5} {'tok/s':>8} {'x ref':>6} {'x r16':>6} "
            f"{'s/step':>7} {'peak GB':>7} {'mem/ref':>7} {'XLA GB':>6} {'compile':>7} "
            f"{'MFU':>5} {'MFU16':>5}")
    lines = [head, "-" * len(head)]
    for r in sorted(rows, key=lambda r: (r["length"], r["mode"] != "fwd", r["impl"])):
        if "error" in r:
            lines.append(f"{r['length']:>6} {r['impl']:<15} {r['mode']:<5} {r['error']}")
            continue
        lines.append(
            f"{r['length']:>6} {r['impl']:<15} {r['mode']:<5} {r['tokens_per_s']:8.0f} "
            f"{fmt(r.get('speed_vs_ref'), '6.2f')} {fmt(r.get('speed_vs_ref_bf16'), '6.2f')} "
            f"{r['best_s']:7.2f} {r['peak_rss_gb']:7.2f} "
            f"{fmt(r.get('mem_vs_ref'), '7.2f')} {fmt(r.get('xla_total_gb'), '6.2f')} "
            f"{fmt(r.get('compile_s'), '7.1f')} {fmt(r.get('mfu'), '5.2f')} "
            f"{fmt(r.get('mfu_bf16'), '5.2f')}")
    return "\n".join(lines)


def figure(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figure", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    panels = [("fwd", "best_s", "forward time (s)"), ("train", "best_s", "train step time (s)"),
              ("train", "peak_rss_gb", "train step peak memory (GB)")]
    impls = sorted({r["impl"] for r in rows})
    colors = {impl: f"C{i % 10}" for i, impl in enumerate(impls)}  # one colour per impl everywhere
    for ax, (mode, key, label) in zip(axes, panels):
        for impl in impls:
            pts = sorted((r["length"], r[key]) for r in rows
                         if r["impl"] == impl and r["mode"] == mode and key in r)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=impl, color=colors[impl],
                        linestyle="--" if "bf16" in impl else "-")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_title(label)
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle("Longformer base, batch 1: time and memory against sequence length")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default=None,
                   help="comma-separated (default 1024..16384; add 32768 where it fits)")
    p.add_argument("--impls", default=None, help=f"comma-separated, from {sorted(cases.IMPLS)}")
    p.add_argument("--modes", default="fwd,train")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per case (after warm-up)")
    p.add_argument("--quick", action="store_true", help="1K and 2K, one timed call per case")
    p.add_argument("--no-caps", action="store_true", help="run every impl at every length")
    p.add_argument("--timeout", type=int, default=900, help="seconds per case")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = p.parse_args(argv)

    if args.quick:
        lengths = [1024, 2048]
        impls = QUICK_IMPLS
        repeats = 1
    else:
        lengths = [1024, 2048, 4096, 8192, 16384]
        impls = DEFAULT_IMPLS
        repeats = args.repeats
    if args.lengths:
        lengths = [int(x) for x in args.lengths.split(",")]
    if args.impls:
        impls = args.impls.split(",")
        unknown = [i for i in impls if i not in cases.IMPLS]
        if unknown:
            p.error(f"unknown impls {unknown}; choose from {sorted(cases.IMPLS)}")
    modes = args.modes.split(",")
    os.makedirs(args.out, exist_ok=True)

    start = time.time()
    print(f"machine: {cpu_name()}, {os.cpu_count()} cpus, flags {' '.join(cpu_flags())}",
          flush=True)
    rates = [matmul_rates()]
    print(f"jnp.dot float32 {rates[0]['matmul_f32'] / 1e9:.0f} GFLOP/s, "
          f"bfloat16 {rates[0]['matmul_bf16'] / 1e9:.0f} GFLOP/s", flush=True)
    results = []
    todo = plan(lengths, impls, modes, not args.no_caps)
    for i, (n, impl, ms) in enumerate(todo):
        t = time.time()
        res = run_case(impl, n, ms, repeats, args.timeout, budget_s=120.0)
        for m in ms:
            results.append(collect(impl, n, m, res))
        got = ", ".join(f"{m} {res[m]['best_s']:.2f}s" for m in ms if m in res) or res.get("error")
        print(f"[{i + 1}/{len(todo)}] {impl} {n}: {got} ({time.time() - t:.0f}s)", flush=True)
    rates.append(matmul_rates())
    rate_f32 = max(r["matmul_f32"] for r in rates)
    rate_bf16 = max(r["matmul_bf16"] for r in rates)
    rows = rows_from(results, rate_f32, rate_bf16)

    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu_name(),
            "cpus": os.cpu_count(), "cpu_flags": cpu_flags(),
            "matmul_f32_flops": rate_f32, "matmul_bf16_flops": rate_bf16,
            "matmul_runs": rates, "wall_s": time.time() - start, "argv": sys.argv[1:],
            "model": cases.BASE, "batch": 1, "global_tokens": 1}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    keys = ["length", "impl", "mode", "tokens_per_s", "speed_vs_ref", "speed_vs_ref_bf16",
            "best_s", "peak_rss_gb", "mem_vs_ref", "xla_total_gb", "xla_temp_gb", "compile_s",
            "compile_rss_gb", "first_call_s", "flops", "flops_per_s", "mfu", "mfu_bf16", "error"]
    with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    figure([r for r in rows if "error" not in r], os.path.join(args.out, "figure1.png"))

    print()
    print(f"{meta['date']}  {meta['cpu']} ({meta['cpus']} cpus; {' '.join(meta['cpu_flags'])})"
          f"  jnp.dot f32 {rate_f32 / 1e9:.0f} GFLOP/s, bf16 {rate_bf16 / 1e9:.0f} GFLOP/s  "
          f"(MFU, MFU16 = model FLOP/s / the f32, bf16 rate; x ref, x r16 = speed against the "
          f"reference in float32, in bfloat16 autocast)")
    print(table(rows))
    print(f"\nwall time {meta['wall_s'] / 60:.1f} min; results in {args.out}")


if __name__ == "__main__":
    main()
