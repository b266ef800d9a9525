"""Scoring a checkpoint with its task's own evaluation: metrics as JSON, predictions as JSON lines.

The checkpoint is a train.py workdir (or its `checkpoints/` folder, or one step in it: only the
parameters are read, never the optimizer state) or a transformers folder (a fine-tuned
Longformer; its head is loaded when present). The task is built from the config exactly as
training builds it, and the eval pass is the one the training loop runs (the same batches, the
same jitted `eval_fn`, the same `summarize`, and `logging.eval_batches` batches), so a run's
last eval line is reproduced (up to float rounding: eval.py runs fine-tuning eval rows in length
buckets, `bucketing.py`, unless `data.eval_bucketing=False` or `--nobucketing`; the predictions
are the same).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import tempfile
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from longformer import bucketing, checkpoints, hf_checkpoint, sharding, tasks
from longformer.files import read_json
from longformer.tasks import init_from

log = logging.getLogger(__name__)


def load_run_config(checkpoint: str) -> ml_collections.ConfigDict:
    """The config a train.py run saved in its workdir (`config.json`)."""
    workdir, _ = init_from.resolve_run(checkpoint)
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config.json in {workdir}; pass --config")
    return ml_collections.ConfigDict(read_json(path, "the config.json train.py saved in its "
                                               "workdir"))


def _saved_identity(workdir: str, step: int) -> dict | None:
    import orbax.checkpoint as ocp
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    try:
        return manager.restore(step, args=ocp.args.Composite(
            identity=ocp.args.JsonRestore()))["identity"]
    except (FileNotFoundError, KeyError, ValueError):
        return None
    finally:
        manager.close()


def _check_identity(saved: dict | None, task: tasks.Task, checkpoint: str) -> None:
    """The checkpoint must be of the same task, labels and model (batch size, seed may differ)."""
    if not saved:
        return
    current = json.loads(json.dumps(task.identity))
    problems = [f"{key}: checkpoint has {saved.get(key)!r}, config has {current.get(key)!r}"
                for key in ("task", "labels", "problem", "num_choices")
                if saved.get(key) != current.get(key)]
    saved_model, model = saved.get("model") or {}, current.get("model") or {}
    problems += [f"model.{k}: checkpoint has {saved_model.get(k)!r}, config has {model.get(k)!r}"
                 for k in sorted(set(saved_model) | set(model))
                 if k in init_from.STRUCTURAL + ("num_labels", "max_global_tokens")
                 and saved_model.get(k) != model.get(k)]
    if problems:
        raise ValueError(f"{checkpoint} does not match the config:\n  " + "\n  ".join(problems))


def _host_batches(dataset, max_batches: int, check):
    """The first max_batches batches of one pass (all with 0), each seen by `check` first."""
    for i, batch in enumerate(dataset):
        if max_batches and i >= max_batches:
            return
        if check is not None:
            check(batch, f"eval batch {i}: ")
        yield batch


def eval_outputs(eval_fn, params, dataset, batch_sharding, max_batches: int = 0,
                 check=None, buckets: bucketing.Buckets | None = None) -> list:
    """Host outputs of `eval_fn` over one pass of `dataset` (its first max_batches batches);
    `check(batch, where)` (the task's `check_batch`) sees each host batch first.

    With `buckets` the pass's rows are regrouped by length and each batch cut to its bucket
    (`bucketing.py`); the per-token outputs come back padded to seq_len, so the list reads the
    same to `summarize` and `predict` (in another row order; they sort by `index`).
    """
    batches = _host_batches(dataset, max_batches, check)
    if buckets is not None:
        batches = bucketing.regroup(list(batches), buckets)
    outputs = [eval_fn(params, sharding.host_batch_to_global(batch, batch_sharding))
               for batch in batches]
    host = [jax.tree.map(np.asarray, o) for o in jax.device_get(outputs)]
    return host if buckets is None else [bucketing.restore(o, buckets) for o in host]


def evaluate_checkpoint(config: ml_collections.ConfigDict, checkpoint: str, *,
                        output_dir: str | None = None, step: int | None = None,
                        bucketed: bool | None = None) -> dict[str, Any]:
    """Evaluates `checkpoint` on the config's eval data; writes and returns the metrics.

    Writes `eval_step_<step>.json` ({"checkpoint", "step", "task", "metrics"}) and, for
    fine-tuning tasks, `predictions_step_<step>.jsonl` into `output_dir` (default: the run's
    workdir, or `<folder>/eval` for a transformers folder).

    `bucketed` (default: `config.data.eval_bucketing`, True when the config has none) runs the
    eval pass in length buckets (`bucketing.py`): faster on rows of mixed length, the same
    predictions and metrics up to float rounding. Off, a run's last eval line is reproduced
    bit for bit (the training loop never buckets).
    """
    workdir, path_step = init_from.resolve_run(checkpoint)
    is_run = os.path.isdir(os.path.join(workdir, "checkpoints"))
    if not is_run and not os.path.isfile(os.path.join(checkpoint, "config.json")):
        raise FileNotFoundError(f"{checkpoint} is neither a train.py workdir (no checkpoints/) "
                                "nor a transformers folder (no config.json)")
    mesh = sharding.make_mesh(tuple(config.mesh.shape))
    batch_sh = sharding.batch_sharding(mesh)

    if is_run:
        step = step if step is not None else path_step
        step = checkpoints.latest_step(workdir) if step is None else step
        if not (config.get("tokenizer") or os.path.isdir(os.path.join(workdir, "tokenizer"))
                or config.get("init_from")):
            raise FileNotFoundError(f"{workdir} has no tokenizer/ folder and the config names "
                                    "none: cannot rebuild the inputs the model was trained on")
        task = tasks.build(config, workdir)
        _check_identity(_saved_identity(workdir, step), task, checkpoint)
        boxed = jax.eval_shape(
            lambda: hf_checkpoint.init_params(task.model, jax.random.key(0), boxed=True))
        shardings = sharding.param_shardings(boxed, mesh)
        target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                              nn.meta.unbox(boxed), shardings)
        params = checkpoints.restore_params(workdir, step, target)
        out_dir = output_dir or workdir
    else:
        config = ml_collections.ConfigDict(config.to_dict())  # unlocked copy
        config.init_from = os.path.abspath(checkpoint)
        with tempfile.TemporaryDirectory() as scratch:
            task = tasks.build(config, scratch)
        state = hf_checkpoint.read_state_dict(checkpoint)
        host, report = hf_checkpoint.params_from_state_dict(task.model, state)
        if report["initialised"]:
            log.warning("%s has no trained head for this task (%s): the scores are those of a "
                        "random head", checkpoint, ", ".join(report["initialised"]))
        boxed = jax.eval_shape(
            lambda: hf_checkpoint.init_params(task.model, jax.random.key(0), boxed=True))
        shardings = sharding.param_shardings(boxed, mesh)
        params = jax.device_put(host, shardings)
        step = 0
        out_dir = output_dir or os.path.join(checkpoint, "eval")
    if task.eval_data is None:
        raise ValueError("the config has no eval data (set data.eval_file)")

    eval_fn = jax.jit(task.eval_fn, in_shardings=(shardings, batch_sh),
                      out_shardings=sharding.replicated(mesh))
    if bucketed is None:
        bucketed = bool(config.data.get("eval_bucketing", True))
    buckets = bucketing.for_task(config, task) if bucketed else None
    if buckets is not None:
        log.info("eval in length buckets %s", list(buckets.lengths))
    with sharding.activation_context(mesh):  # traced with the mesh: a `sequence` axis splits
        outputs = eval_outputs(eval_fn, params, task.eval_data, batch_sh,
                               config.logging.eval_batches, check=task.check_batch,
                               buckets=buckets)
    metrics = task.summarize(outputs)
    result = {"checkpoint": os.path.abspath(checkpoint), "step": step, "task": config.task,
              "metrics": metrics}
    log.info("eval of %s (step %d) | %s", checkpoint, step,
             " | ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
        result["metrics_file"] = os.path.join(out_dir, f"eval_step_{step}.json")
        with open(result["metrics_file"], "w") as f:
            json.dump({k: result[k] for k in ("checkpoint", "step", "task", "metrics")}, f,
                      indent=2)
        if task.predict is not None:
            rows = task.predict(outputs)
            result["predictions_file"] = os.path.join(out_dir, f"predictions_step_{step}.jsonl")
            with open(result["predictions_file"], "w") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            # A task module's `official_predictions(rows)`: the file its official scorer reads.
            official = getattr(importlib.import_module(tasks.TASKS[config.task]),
                               "official_predictions", None)
            if official is not None:
                result["official_predictions_file"] = os.path.join(
                    out_dir, f"predictions_step_{step}.json")
                with open(result["official_predictions_file"], "w") as f:
                    json.dump(official(rows), f, ensure_ascii=False)
    return result
