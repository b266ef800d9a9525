"""Where fine-tuning starts: the architecture and the encoder of `config.init_from`.

`init_from` is a transformers folder (Longformer, or RoBERTa converted the authors' way) or a
workdir of train.py (its `checkpoints/` and `tokenizer/`). The encoder comes from there, the
task's head is new; global projections that the source lacks (an MLM run without global
attention) start as copies of the local ones, as in the authors' conversion. The architecture
(sizes, vocabulary, position table, attention windows, special ids) is the checkpoint's;
`config.model` supplies dropout, dtypes, remat and the global-token budget. A report of what was
loaded, copied, initialised and left unused is logged and written to `init_from_report.json`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable

import jax
import numpy as np
from flax import traverse_util

from longformer import convert, hf_checkpoint
from longformer.config import LongformerConfig
from longformer.tasks import mlm

log = logging.getLogger(__name__)

# Fields of the architecture, which a checkpoint fixes (the rest of config.model is free).
STRUCTURAL = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "intermediate_size", "hidden_act", "max_position_embeddings", "type_vocab_size",
              "layer_norm_eps", "attention_window", "pad_token_id", "bos_token_id",
              "eos_token_id", "sep_token_id")
_GLOBAL_PROJECTIONS = {"query_global": "query", "key_global": "key", "value_global": "value"}


def resolve_run(path: str) -> tuple[str, int | None]:
    """A train.py workdir, its checkpoints/ folder or one step of it -> (workdir, step or None)."""
    path = os.path.abspath(path)
    base = os.path.basename(path)
    if base.isdigit() and os.path.basename(os.path.dirname(path)) == "checkpoints":
        return os.path.dirname(os.path.dirname(path)), int(base)
    if base == "checkpoints":
        return os.path.dirname(path), None
    return path, None


def source_kind(path: str) -> str:
    """'run' (a train.py workdir), 'longformer' or 'roberta' (transformers folders)."""
    workdir, _ = resolve_run(path)
    if os.path.isdir(os.path.join(workdir, "checkpoints")):
        return "run"
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"init_from={path}: neither a train.py workdir (no checkpoints/) "
                                "nor a transformers folder (no config.json)")
    with open(file) as f:
        model_type = json.load(f).get("model_type", "longformer")
    return "roberta" if model_type in ("roberta",) else "longformer"


def run_model_config(workdir: str) -> LongformerConfig:
    """The model config of a train.py run (its effective one for fine-tuning runs)."""
    effective = os.path.join(workdir, "model_config.json")
    if os.path.isfile(effective):
        with open(effective) as f:
            return LongformerConfig(**json.load(f))
    with open(os.path.join(workdir, "config.json")) as f:
        model = dict(json.load(f)["model"])
    window = model.get("attention_window")
    if isinstance(window, list) and len(window) == 1:
        model["attention_window"] = window[0]
    return LongformerConfig(**model)


def latest_step(workdir: str) -> int:
    folder = os.path.join(workdir, "checkpoints")
    steps = sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(
        folder) else []
    if not steps:
        raise FileNotFoundError(f"no complete checkpoint in {folder}")
    return steps[-1]


def restore_params(workdir: str, step: int | None = None, target: Any = None) -> Any:
    """Only the parameters of a train.py checkpoint (no optimizer state is read).

    `target`: a tree of ShapeDtypeStructs with shardings to restore into (sharded jax arrays);
    without it the saved tree comes back as host numpy arrays.
    """
    import orbax.checkpoint as ocp
    step = latest_step(workdir) if step is None else step
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint state at {path}")
    checkpointer = ocp.PyTreeCheckpointer()
    if target is None:
        meta = checkpointer.metadata(path)
        tree = getattr(meta, "item_metadata", meta)
        tree = getattr(tree, "tree", tree)["params"]
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree)
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    else:
        restore_args = jax.tree.map(
            lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, global_shape=s.shape,
                                           dtype=s.dtype), target)
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        item={"params": target}, restore_args={"params": restore_args}, partial_restore=True))
    return restored["params"]


def model_config(config, **overrides) -> LongformerConfig:
    """config.model, with the architecture of `init_from` when there is one."""
    base = mlm.model_config(config)
    source = None
    if config.init_from:
        kind = source_kind(config.init_from)
        if kind == "run":
            source = run_model_config(resolve_run(config.init_from)[0])
        elif kind == "longformer":
            source = LongformerConfig.from_pretrained(config.init_from)
        else:
            with open(os.path.join(config.init_from, "config.json")) as f:
                roberta = json.load(f)
            rows = max(base.max_position_embeddings,
                       int(roberta.get("max_position_embeddings", 514)))
            source = LongformerConfig.from_hf_dict(convert.longformer_hf_config(
                roberta, max_position_embeddings=rows, attention_window=base.attention_window))
    if source is not None:
        taken = {k: getattr(source, k) for k in STRUCTURAL}
        changed = [f"{k}={v!r} (config {getattr(base, k)!r})" for k, v in taken.items()
                   if v != getattr(base, k)]
        if changed:
            log.info("architecture from init_from=%s: %s", config.init_from, ", ".join(changed))
        base = base.replace(**taken)
    return base.replace(**overrides)


def _source_params(config, model_cfg: LongformerConfig) -> tuple[dict, str]:
    """Flat {path: array} of the encoder (and pooler) in `init_from`, and a description."""
    path = config.init_from
    kind = source_kind(path)
    jax_only = {k: getattr(model_cfg, k) for k in mlm.JAX_ONLY}
    if kind == "run":
        workdir, step = resolve_run(path)
        step = latest_step(workdir) if step is None else step
        flat = traverse_util.flatten_dict(restore_params(workdir, step)["params"])
        source = {p: v for p, v in flat.items() if p[0] == "longformer"}
        return source, f"train.py run {workdir} (step {step})"
    if kind == "longformer":
        model, params, report = hf_checkpoint.load_hf_checkpoint(
            path, task="base", return_report=True, **jax_only)
    else:
        model, params, report = convert.load_roberta_as_longformer(
            path, max_length=model_cfg.max_sequence_length,
            attention_window=model_cfg.attention_window, task="base", return_report=True,
            **jax_only)
    fresh = set(report["initialised"])
    flat = traverse_util.flatten_dict(params["params"])
    source = {("longformer",) + p: v for p, v in flat.items()
              if hf_checkpoint.torch_name(p)[0] not in fresh}
    return source, f"{kind} checkpoint {path}"


def initial_params(config, model, workdir: str) -> dict:
    """`init_from`'s encoder with a freshly initialised head, as host arrays, and a report."""
    source, described = _source_params(config, model.config)
    fresh = traverse_util.flatten_dict(
        hf_checkpoint.init_params(model, jax.random.fold_in(jax.random.key(config.seed), 17))
        ["params"])
    out, report = {}, {"init_from": described, "loaded": [], "copied": [], "initialised": [],
                       "unused": []}
    problems = []
    name = "/".join
    for path, value in fresh.items():
        local = (path[:-2] + (_GLOBAL_PROJECTIONS[path[-2]], path[-1])
                 if len(path) > 2 and path[-2] in _GLOBAL_PROJECTIONS else None)
        if path in source:
            array = np.asarray(source[path])
            if array.shape != value.shape:
                problems.append(f"{name(path)}: checkpoint {array.shape} vs model {value.shape}")
                continue
            out[path] = array.astype(value.dtype)
            report["loaded"].append(name(path))
        elif local is not None and local in source:
            out[path] = np.asarray(source[local]).astype(value.dtype)
            report["copied"].append(f"{name(local)} -> {path[-2]}")
        elif path[0] == "longformer" and path[1] in ("embeddings", "encoder"):
            problems.append(f"{name(path)}: not in the checkpoint")
        else:
            out[path] = np.asarray(value)
            report["initialised"].append(name(path))
    if problems:
        raise hf_checkpoint.CheckpointMismatchError(
            f"init_from={config.init_from} does not fit the model:\n  " + "\n  ".join(problems))
    report["unused"] = sorted(name(p) for p in source if p not in fresh)
    log.info("init_from %s: loaded %d encoder tensors; freshly initialised: %s; global "
             "projections copied from the local ones: %s; unused: %s", described,
             len(report["loaded"]), ", ".join(report["initialised"]) or "none",
             len(report["copied"]) or "none", ", ".join(report["unused"]) or "none")
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "init_from_report.json"), "w") as f:
            json.dump(report, f, indent=2)
    return {"params": traverse_util.unflatten_dict(out)}


def save_model_config(workdir: str, model_cfg: LongformerConfig) -> None:
    """The effective model config, so eval.py and later init_from need no original source.

    Written once: a resumed run has the same model (its checkpoint identity says so), and eval.py
    must not change a run's record.
    """
    path = os.path.join(workdir, "model_config.json")
    if jax.process_index() == 0 and not os.path.exists(path):
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w") as f:
            json.dump(dataclasses.asdict(model_cfg), f, indent=2)


def init_fn(config, model, workdir: str) -> Callable[[], Any]:
    """Task.initial_params: init_from's encoder with a new head, or None (random init)."""
    if not config.init_from:
        return lambda: None
    return lambda: initial_params(config, model, workdir)
