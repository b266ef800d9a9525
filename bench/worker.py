"""Runs one benchmark case in this process and prints one JSON line (used by `bench/run.py`).

    python -m bench.worker --impl jax-f32 --length 4096 --modes fwd,train --repeats 3
"""

from __future__ import annotations

import argparse
import json
import sys

from bench import cases


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--impl", required=True, choices=sorted(cases.IMPLS) + ["matmul"])
    p.add_argument("--length", type=int, default=0)
    p.add_argument("--modes", default="fwd,train")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=60.0, help="time cap for the repeats")
    p.add_argument("--block", type=int, default=0, help="attention block size (JAX; 0: default)")
    p.add_argument("--profile", default="", help="JAX: trace one more call of each mode here")
    args = p.parse_args(argv)

    if args.impl == "matmul":
        print(json.dumps({"matmul_f32": cases.matmul_rate("float32"),
                          "matmul_bf16": cases.matmul_rate("bfloat16")}))
        return
    modes = args.modes.split(",")
    family = cases.IMPLS[args.impl][0]
    if family.startswith("jax"):
        res = cases.run_jax(args.impl, args.length, modes, args.repeats, args.budget_s,
                            args.block, args.profile)
    else:
        res = cases.run_torch(args.impl, args.length, modes, args.repeats, args.budget_s)
    out = {}
    for mode, t in res.items():
        out[mode] = {"compile_s": t.compile_s, "times": t.times, "best_s": t.best,
                     "peak_rss": t.peak_rss, "analysis": t.analysis}
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
