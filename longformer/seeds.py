"""One config over several seeds, and the mean and spread of their final eval metrics.

A set as small as Hyperpartisan's (65 dev articles: one article is 1.5 points) moves by more
between seeds than between models, so the paper reports the mean of 5 seeds:

    python -m longformer.seeds --config=configs/hyperpartisan.py --workdir=runs/hp --seeds=5
    python -m longformer.seeds --aggregate runs/hp/seed_0 runs/hp/seed_1 ...   # existing runs

Seed k trains in `<workdir>/seed_<k>` with `config.seed = k` (its weights' initialisation,
dropout and data order); a seed whose run is complete is not rerun (train.py resumes it, at its
last step). Each run's last `eval/*` line of `metrics.jsonl` is read back (what train_lib
writes), and `<workdir>/seeds.json` gets, per metric, the mean, the sample standard deviation,
the minimum, the maximum and the per-seed values.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Sequence

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from longformer import train_lib

_FLAGS: dict = {}


def _define_flags() -> None:
    """The program's flags, defined only when it runs as one: importing this module (the tests,
    `aggregate`) then never clashes with another module's flags (`generate.py`'s --config)."""
    _FLAGS.update(
        config=config_flags.DEFINE_config_file("config", None, "Task config file.",
                                               lock_config=True),
        workdir=flags.DEFINE_string("workdir", None, "Parent folder: seed k runs in seed_<k>."),
        seeds=flags.DEFINE_integer("seeds", 5, "How many seeds (0, 1, ...)."),
        aggregate=flags.DEFINE_bool("aggregate", False, "Only aggregate the workdirs given as "
                                    "arguments (or the seed_* folders of --workdir)."))


def last_eval(workdir: str) -> dict[str, float]:
    """The last eval line of a run's metrics.jsonl, without the `eval/` prefix."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing; expected the metrics train.py writes")
    last = None
    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            try:
                record = json.loads(line)
            except ValueError:
                raise ValueError(f"{path}:{lineno}: not valid JSON") from None
            if any(k.startswith("eval/") for k in record):
                last = record
    if last is None:
        raise ValueError(f"{path}: no eval line (the run had no eval set or stopped before its "
                         "first eval)")
    return {"step": last["step"], **{k[len("eval/"):]: v for k, v in last.items()
                                     if k.startswith("eval/")}}


def aggregate(workdirs: Sequence[str]) -> dict[str, dict]:
    """metric -> {mean, std (sample; 0 for one run), min, max, values} over the runs' last evals."""
    evals = [last_eval(w) for w in workdirs]
    out = {}
    for name in evals[0]:
        values = [e[name] for e in evals if name in e]
        if len(values) != len(evals) or name == "step":
            continue
        v = np.asarray(values, np.float64)
        out[name] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                     "min": float(v.min()), "max": float(v.max()), "values": values}
    out["runs"] = {"workdirs": list(workdirs), "steps": [e["step"] for e in evals]}
    return out


def main(argv):
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("longformer").setLevel(logging.INFO)
    workdir = _FLAGS["workdir"].value
    if _FLAGS["aggregate"].value:
        runs = argv[1:] or sorted(
            os.path.join(workdir, d) for d in os.listdir(workdir) if d.startswith("seed_"))
    else:
        config_file = _FLAGS["config"].value
        if not (config_file and workdir):
            raise app.UsageError("--config and --workdir are required (or --aggregate)")
        runs = []
        for seed in range(_FLAGS["seeds"].value):
            config = config_file.copy_and_resolve_references()
            config.seed = seed
            runs.append(os.path.join(workdir, f"seed_{seed}"))
            train_lib.train_and_evaluate(config, runs[-1])
    result = aggregate(runs)
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "seeds.json"), "w") as f:
            json.dump(result, f, indent=2)
    for name, s in result.items():
        if name != "runs":
            print(f"{name}: {s['mean']:.4f} +- {s['std']:.4f} (min {s['min']:.4f}, max "
                  f"{s['max']:.4f}, {len(s['values'])} runs)")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
