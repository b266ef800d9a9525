"""Where a run starts: its tokenizer, architecture and weights, from `config.init_from`.

`init_from` is a transformers folder (Longformer, or RoBERTa converted the authors' way) or a
workdir of train.py (its `checkpoints/` and `tokenizer/`). Fine-tuning takes the encoder from
there and starts a new head; pretraining (`head=True`) continues the source's head as well.
Global projections that the source lacks (an MLM run without global attention) start as copies
of the local ones, as in the authors' conversion. For fine-tuning the architecture (sizes,
vocabulary, position table, attention windows, special ids) is the checkpoint's and
`config.model` supplies dropout, dtypes, remat and the global-token budget; pretraining keeps
`config.model`, which must then have the checkpoint's shapes. Parameters are matched by name one
entry per layer, whichever layout the source and the model hold. A report of what was loaded,
copied, initialised and left unused is logged and written to `init_from_report.json`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable, Iterable

import jax
import numpy as np
from flax import traverse_util

from longformer import config as config_lib
from longformer import convert, hf_checkpoint
from longformer.checkpoints import latest_step, restore_params
from longformer.config import LongformerConfig
from longformer.files import FileFormatError, read_json
from longformer.layout import to_model_layout, unstack_layers
from longformer.tokenizer import LongformerTokenizer

log = logging.getLogger(__name__)

# Fields of the architecture, which a checkpoint fixes (the rest of config.model is free).
STRUCTURAL = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "intermediate_size", "hidden_act", "max_position_embeddings", "type_vocab_size",
              "layer_norm_eps", "attention_window", "pad_token_id", "bos_token_id",
              "eos_token_id", "sep_token_id", "position_embedding_type")
# The fields that fix parameter shapes: a checkpoint and the model must agree on them.
SHAPES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
          "intermediate_size", "max_position_embeddings", "type_vocab_size")
# Options that config.json does not carry: taken from our config when loading init_from.
JAX_ONLY = tuple(f.name for f in dataclasses.fields(LongformerConfig)
                 if f.name not in config_lib.HF_FIELDS)
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
    model_type = read_json(file, "a transformers config.json").get("model_type", "longformer")
    return "roberta" if model_type in ("roberta",) else "longformer"


_MODEL_CONFIG = "the model config train.py saved (model_config.json)"
_RUN_CONFIG = "the config.json train.py saved in its workdir"


def run_model_config(workdir: str) -> LongformerConfig:
    """The model config of a train.py run (its effective one for fine-tuning runs)."""
    effective = os.path.join(workdir, "model_config.json")
    if os.path.isfile(effective):
        return _run_config(effective, read_json(effective, _MODEL_CONFIG), _MODEL_CONFIG)
    file = os.path.join(workdir, "config.json")
    model = read_json(file, _RUN_CONFIG).get("model")
    if not isinstance(model, dict):
        raise FileFormatError(f"{file}: no \"model\" object; expected {_RUN_CONFIG}")
    model = dict(model)
    window = model.get("attention_window")
    if isinstance(window, list) and len(window) == 1:
        model["attention_window"] = window[0]
    return _run_config(file, model, _RUN_CONFIG)


def _run_config(file: str, fields: dict, what: str) -> LongformerConfig:
    try:
        return LongformerConfig(**fields)
    except (TypeError, ValueError) as e:  # an unknown field, or a value the config refuses
        raise FileFormatError(f"{file}: {e}; expected {what}") from e


def config_model(config, **overrides) -> LongformerConfig:
    """config.model as a LongformerConfig (one window given on the command line: every layer)."""
    kwargs = config.model.to_dict()
    window = kwargs.get("attention_window")
    if isinstance(window, (tuple, list)) and len(window) == 1:
        kwargs["attention_window"] = int(window[0])
    kwargs.update(overrides)
    return LongformerConfig(**kwargs)


def _has_tokenizer(folder: str) -> bool:
    return bool(folder) and os.path.isdir(folder) and any(
        os.path.exists(os.path.join(folder, f)) for f in ("tokenizer.json", "vocab.json"))


def load_tokenizer(config, workdir: str, texts: Callable[[], Iterable[str]]
                   ) -> LongformerTokenizer:
    """config.tokenizer, the workdir's (a resumed run), init_from's, or one trained on `texts`.

    The one used is saved in `workdir/tokenizer`, so a run's folder is complete for eval.py.
    """
    own = os.path.join(workdir, "tokenizer")
    init_tok = ""
    if config.init_from:
        run, _ = resolve_run(config.init_from)
        init_tok = (os.path.join(run, "tokenizer")
                    if source_kind(config.init_from) == "run" else config.init_from)
    for folder in (config.tokenizer, own, init_tok):
        if _has_tokenizer(folder):
            tok = LongformerTokenizer.from_pretrained(folder)
            break
    else:
        if config.tokenizer:
            raise FileNotFoundError(f"no tokenizer files in {config.tokenizer}")
        log.info("training a byte-level BPE tokenizer (vocab %d) on the training texts",
                 config.model.vocab_size)
        tok = LongformerTokenizer.train(texts(), vocab_size=config.model.vocab_size,
                                        model_max_length=config.data.seq_len)
    if jax.process_index() == 0 and not _has_tokenizer(own):
        tok.save(own)
    return tok


def model_config(config, **overrides) -> LongformerConfig:
    """config.model, with the architecture of `init_from` when there is one."""
    base = config_model(config)
    source = None
    if config.init_from:
        kind = source_kind(config.init_from)
        if kind == "run":
            source = run_model_config(resolve_run(config.init_from)[0])
        elif kind == "longformer":
            source = hf_checkpoint.hf_config(config.init_from)
        else:
            roberta = read_json(os.path.join(config.init_from, "config.json"),
                                "a transformers RoBERTa config.json")
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


def check_fits(config, tokenizer: LongformerTokenizer, model_cfg: LongformerConfig) -> None:
    """The tokenizer's ids and data.seq_len must fit the model, or training fails far later."""
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's "
                         f"vocab_size is {model_cfg.vocab_size}")
    if config.data.seq_len > model_cfg.max_sequence_length:
        raise ValueError(f"data.seq_len {config.data.seq_len} exceeds the position table "
                         f"({model_cfg.max_sequence_length} tokens)")


def _source_params(config, model, head: bool) -> tuple[dict, LongformerConfig, str]:
    """Flat {path: array} of `init_from` one entry per layer (the encoder, and with `head` every
    other tensor it has), its architecture, and a description."""
    path = config.init_from
    kind = source_kind(path)
    if kind == "run":
        workdir, step = resolve_run(path)
        step = latest_step(workdir) if step is None else step
        source_cfg = run_model_config(workdir)
        flat = traverse_util.flatten_dict(
            unstack_layers(restore_params(workdir, step), source_cfg)["params"])
        source = {p: v for p, v in flat.items() if head or p[0] == "longformer"}
        return source, source_cfg, f"train.py run {workdir} (step {step})"
    jax_only = {k: getattr(model.config, k) for k in JAX_ONLY}
    task = type(model).__name__ if head else "base"
    if kind == "longformer":
        loaded, params, report = hf_checkpoint.load_hf_checkpoint(
            path, task=task, return_report=True, **jax_only)
    else:
        loaded, params, report = convert.load_roberta_as_longformer(
            path, max_length=model.config.max_sequence_length,
            attention_window=model.config.attention_window, task=task, return_report=True,
            **jax_only)
    fresh = set(report["initialised"])
    flat = traverse_util.flatten_dict(unstack_layers(params, loaded.config)["params"])
    prefix = () if head else ("longformer",)
    source = {prefix + p: v for p, v in flat.items()
              if hf_checkpoint.torch_name(p)[0] not in fresh}
    return source, loaded.config, f"{kind} checkpoint {path}"


def initial_params(config, model, workdir: str, *, head: bool = False) -> dict:
    """`init_from`'s encoder, and its head with `head` (else a fresh one), as a parameter tree in
    the model's layout; a report of what came from where is logged and saved."""
    source, source_cfg, described = _source_params(config, model, head)
    shapes = [f"{k}: checkpoint {getattr(source_cfg, k)} vs config {getattr(model.config, k)}"
              for k in SHAPES if getattr(source_cfg, k) != getattr(model.config, k)]
    if shapes:
        raise hf_checkpoint.CheckpointMismatchError(
            f"init_from={config.init_from} does not match config.model:\n  " + "\n  ".join(shapes))
    init = hf_checkpoint.init_params(model, jax.random.fold_in(jax.random.key(config.seed), 17))
    fresh = traverse_util.flatten_dict(unstack_layers(init, model.config)["params"])
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
    log.info("init_from %s: loaded %d tensors; freshly initialised: %s; global "
             "projections copied from the local ones: %s; unused: %s", described,
             len(report["loaded"]), ", ".join(report["initialised"]) or "none",
             len(report["copied"]) or "none", ", ".join(report["unused"]) or "none")
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "init_from_report.json"), "w") as f:
            json.dump(report, f, indent=2)
    # Stacked on the host: the train state is sharded from host arrays, never whole on one chip.
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
        params = to_model_layout({"params": traverse_util.unflatten_dict(out)}, model.config)
    return jax.tree.map(np.asarray, params)


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


def init_fn(config, model, workdir: str, *, head: bool = False) -> Callable[[], Any]:
    """Task.initial_params: `initial_params` when there is an init_from, else None (random)."""
    if not config.init_from:
        return lambda: None
    return lambda: initial_params(config, model, workdir, head=head)
