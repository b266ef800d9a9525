"""Hugging Face checkpoints in and out, by systematic renaming, with no torch needed.

A flax path maps to a torch name by rule: `layer_3` <-> `layer.3`, `kernel` <-> `weight`
(transposed), `embedding`/`scale` <-> `weight`. The encoder is matched with any of the prefixes
checkpoints use (none for the bare model, `longformer.` for heads, `roberta.` for the authors'
converted models), so any head loads from any checkpoint of the same encoder. Every tensor's shape
is checked against the model's own abstract parameter tree before anything is built.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from longformer.config import CONFIG_JSON, LongformerConfig
from longformer.files import FileFormatError, read_json
from longformer.layout import to_model_layout, unstack_layers
from longformer.modeling import MODEL_CLASSES

log = logging.getLogger(__name__)

TASKS = {
    "base": "LongformerModel",
    "masked_lm": "LongformerForMaskedLM",
    "sequence_classification": "LongformerForSequenceClassification",
    "token_classification": "LongformerForTokenClassification",
    "multiple_choice": "LongformerForMultipleChoice",
    "question_answering": "LongformerForQuestionAnswering",
}
_ENCODER_PREFIXES = ("longformer.", "roberta.")
_ENCODER_ROOTS = ("embeddings.", "encoder.", "pooler.")
# Buffers and tied copies that carry no information of their own.
_IGNORED = re.compile(r"(^|\.)position_ids$|^lm_head\.decoder\.(weight|bias)$")


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the model its config describes."""


def model_class(task_or_name: str):
    name = TASKS.get(task_or_name, task_or_name)
    name = name.replace("Roberta", "Longformer")
    if name not in MODEL_CLASSES:
        raise ValueError(f"unknown task or architecture {task_or_name!r}; expected one of "
                         f"{sorted(TASKS)} or {sorted(MODEL_CLASSES)}")
    return MODEL_CLASSES[name]


def torch_name(path: tuple[str, ...]) -> tuple[str, bool]:
    """Flax parameter path -> (torch state-dict name, whether the array is transposed)."""
    *modules, leaf = path
    modules = [re.sub(r"^layer_(\d+)$", r"layer.\1", m) for m in modules]
    transpose = leaf == "kernel"
    leaf = {"kernel": "weight", "embedding": "weight", "scale": "weight"}.get(leaf, leaf)
    return ".".join(modules + [leaf]), transpose


def _canonical(name: str) -> str:
    """Drops the encoder's prefix so every checkpoint flavour names the encoder alike."""
    for prefix in _ENCODER_PREFIXES:
        if name.startswith(prefix) and name[len(prefix):].startswith(_ENCODER_ROOTS):
            return name[len(prefix):]
    return name


def init_params(model: nn.Module, rng: jax.Array, *, boxed: bool = False) -> dict[str, Any]:
    """Random parameters for `model` (with logical-axis boxes when `boxed`)."""
    cfg: LongformerConfig = model.config
    multiple_choice = model.__class__.__name__.endswith("MultipleChoice")
    shape = (1, 2, cfg.max_window) if multiple_choice else (1, cfg.max_window)
    ids = jnp.zeros(shape, jnp.int32)
    variables = jax.jit(lambda r: model.init(r, ids, global_attention_mask=jnp.zeros_like(ids)))(
        rng)
    return variables if boxed else nn.meta.unbox(variables)


def abstract_params(model: nn.Module) -> dict[tuple[str, ...], jax.ShapeDtypeStruct]:
    """The model's parameter shapes and dtypes, without allocating anything."""
    tree = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    return traverse_util.flatten_dict(tree["params"])


# ----------------------------------------------------------------------------- reading
_WEIGHTS = "a transformers checkpoint folder (config.json + model.safetensors)"
_CONFIG = CONFIG_JSON
# Fields without which config.json cannot describe the weights beside it (transformers always
# writes them); a file lacking them is some other JSON saved under that name.
_REQUIRED_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size")


def _check_folder(path: str) -> None:
    if os.path.isfile(path):
        raise FileFormatError(f"{path}: a file, not a folder; expected {_WEIGHTS}")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such folder; expected {_WEIGHTS}")


def read_hf_config(path: str | os.PathLike) -> dict[str, Any]:
    """The config.json dict of a transformers folder, with the fields that fix the shapes."""
    path = os.fspath(path)
    _check_folder(path)
    file = os.path.join(path, "config.json")
    hf = read_json(file, _CONFIG)
    missing = [k for k in _REQUIRED_FIELDS if k not in hf]
    if missing:
        raise FileFormatError(f"{file}: missing required field(s) {', '.join(missing)}; "
                              f"expected {_CONFIG}")
    return hf


def hf_config(path: str | os.PathLike, **overrides) -> LongformerConfig:
    """The LongformerConfig of a transformers folder; a bad value in config.json names it."""
    return LongformerConfig.from_json_file(os.path.join(os.fspath(path), "config.json"),
                                           read_hf_config(path), **overrides)


def _safetensors_fault(file: str, error: Exception) -> str:
    """Why safetensors refused `file`, in terms of the file (the library names neither)."""
    size = os.path.getsize(file)
    if size == 0:
        return "empty"
    with open(file, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else None
        header = f.read(n) if n is not None and n <= 100 << 20 else b""
    if n is None:
        return f"not a safetensors file (only {size} bytes)"
    if n > 100 << 20:
        return "not a safetensors file (no valid header length in its first 8 bytes)"
    if len(header) < n:
        return f"truncated ({size} bytes, inside its {n}-byte header)"
    try:
        entries = json.loads(header)
        need = 8 + n + max((v["data_offsets"][1] for k, v in entries.items()
                            if k != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return "not a safetensors file (its header is not a safetensors JSON header)"
    if size < need:
        return f"truncated ({size} bytes, its header describes {need})"
    return f"not a valid safetensors file ({error})"


def _read_safetensors(file: str, state: dict[str, np.ndarray]) -> None:
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(file, framework="flax") as f:
            for key in f.keys():
                state[key] = np.asarray(f.get_tensor(key))
    except SafetensorError as e:
        raise FileFormatError(f"{file}: {_safetensors_fault(file, e)}; expected model weights "
                              "in safetensors format") from None


def _shards(index: str) -> list[str]:
    """The shard files a model.safetensors.index.json names, which must all exist."""
    what = "a safetensors index ({\"weight_map\": {tensor name: shard file}})"
    weight_map = read_json(index, what).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in
                                                     weight_map.values()):
        raise FileFormatError(f"{index}: no \"weight_map\" object of file names; expected {what}")
    folder = os.path.dirname(index)
    files = sorted({os.path.join(folder, v) for v in weight_map.values()})
    for file in files:
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{file}: missing; {index} names it as a shard")
    return files


def _read_torch_bin(binary: str) -> dict[str, np.ndarray]:
    try:
        import torch  # optional: only for the legacy pickle format
    except ImportError as e:
        raise ImportError(f"{binary} is a torch pickle; install torch to read it, or "
                          "convert the folder to model.safetensors") from e
    what = "a torch state dict (pytorch_model.bin)"
    if os.path.getsize(binary) == 0:
        raise FileFormatError(f"{binary}: empty; expected {what}")
    try:
        state = torch.load(binary, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError) as e:
        # torch's messages run to paragraphs of advice; the first sentence says what failed.
        text = str(e).strip()
        reason = text.split(". ")[0].splitlines()[0][:200] if text else type(e).__name__
        raise FileFormatError(f"{binary}: not a readable torch checkpoint ({reason}); "
                              f"expected {what}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise FileFormatError(f"{binary}: holds {type(state).__name__}, not a dict of tensors; "
                              f"expected {what}")
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in state.items()}


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a transformers checkpoint folder, as numpy arrays."""
    path = os.fspath(path)
    _check_folder(path)
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(single):
        files = [single]
    elif os.path.exists(index):
        files = _shards(index)
    else:
        binary = os.path.join(path, "pytorch_model.bin")
        if os.path.exists(binary):
            return _read_torch_bin(binary)
        raise FileNotFoundError(f"{path}: no weights (no model.safetensors, "
                                "model.safetensors.index.json or pytorch_model.bin)")
    state: dict[str, np.ndarray] = {}
    for file in files:
        _read_safetensors(file, state)
    return state


def params_from_state_dict(
    model: nn.Module,
    state: Mapping[str, np.ndarray],
    *,
    rng: jax.Array | None = None,
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Maps a torch state dict onto `model`'s parameter tree.

    Encoder parameters must all be present and every shape must match
    (`CheckpointMismatchError` otherwise); head and pooler parameters missing from the checkpoint
    (a new task) are freshly initialised. Returns the params and a report {'loaded', 'initialised',
    'unexpected'}. A `scan_layers` model gets its layers stacked (`layout.py`).
    """
    target = model.config
    model = model.clone(config=target.replace(scan_layers=False))  # torch names one per layer
    expected = abstract_params(model)
    by_name = {_canonical(k): k for k in state if not _IGNORED.search(k)}
    loaded: dict[tuple[str, ...], Any] = {}
    missing, mismatched, initialised = [], [], []
    for path, spec in expected.items():
        name, transpose = torch_name(path)
        key = by_name.pop(_canonical(name), None)
        if key is None:
            # Heads and the pooler may be new for this task; the encoder itself may not.
            is_encoder = _canonical(name).startswith(("embeddings.", "encoder."))
            (missing if is_encoder else initialised).append(name)
            continue
        array = np.asarray(state[key])
        array = array.T if transpose else array
        if array.shape != tuple(spec.shape):
            mismatched.append(f"{key}: checkpoint {array.shape} vs model {tuple(spec.shape)}"
                              + (" (after transposing)" if transpose else ""))
            continue
        loaded[path] = jnp.asarray(array, dtype=spec.dtype)
    if missing or mismatched:
        lines = [f"checkpoint does not match the model ({model.__class__.__name__}):"]
        lines += [f"  missing: {n}" for n in missing]
        lines += [f"  shape mismatch: {m}" for m in mismatched]
        raise CheckpointMismatchError("\n".join(lines))
    unexpected = sorted(by_name.values())
    if initialised:
        fresh = traverse_util.flatten_dict(
            init_params(model, rng if rng is not None else jax.random.key(0))["params"])
        for path in expected:
            if path not in loaded:
                loaded[path] = fresh[path]
        log.warning("freshly initialised (not in the checkpoint): %s", ", ".join(initialised))
    if unexpected:
        log.warning("unused checkpoint tensors: %s", ", ".join(unexpected))
    report = {"loaded": sorted(torch_name(p)[0] for p in expected if torch_name(p)[0] not in
                               initialised),
              "initialised": initialised, "unexpected": unexpected}
    return {"params": to_model_layout(traverse_util.unflatten_dict(loaded), target)}, report


def load_hf_checkpoint(path: str | os.PathLike, task: str | None = None, *,
                       rng: jax.Array | None = None, return_report: bool = False,
                       **config_overrides):
    """Reads a transformers-format folder: `model, params = load_hf_checkpoint(path)`.

    The head comes from config.json's `architectures` unless `task` names one ('base',
    'masked_lm', 'sequence_classification', 'token_classification', 'multiple_choice',
    'question_answering', or a class name). `config_overrides` set JAX-only options such as
    `max_global_tokens`, `dtype` or `remat`.
    """
    hf = read_hf_config(path)
    config = LongformerConfig.from_json_file(os.path.join(os.fspath(path), "config.json"), hf,
                                             **config_overrides)
    if task is None:
        architectures = hf.get("architectures") or ["LongformerModel"]
        task = architectures[0]
    model = model_class(task)(config)
    params, report = params_from_state_dict(model, read_state_dict(path), rng=rng)
    return (model, params, report) if return_report else (model, params)


# ----------------------------------------------------------------------------- writing
def state_dict_from_params(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Our params -> a torch-named state dict (numpy, torch's [out, in] layout)."""
    flat = traverse_util.flatten_dict(nn.meta.unbox(params)["params"])
    state = {}
    for path, value in flat.items():
        name, transpose = torch_name(path)
        array = np.asarray(jax.device_get(value))
        state[name] = np.ascontiguousarray(array.T if transpose else array)
    return state


def save_hf_checkpoint(path: str | os.PathLike, model: nn.Module, params: Mapping[str, Any]):
    """Writes `config.json` + `model.safetensors` that transformers' `from_pretrained` loads."""
    from safetensors.numpy import save_file
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    model.config.save_pretrained(path, architectures=[model.__class__.__name__])
    # One entry per layer (a scan model's stacked layers are split); the tied decoder is re-tied
    # by transformers on load.
    state = state_dict_from_params(unstack_layers(params, model.config))
    save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
