"""Turning a RoBERTa checkpoint into a Longformer (the authors' recipe, Beltagy et al. 2020, sec. 5).

* The position table grows to `max_length + pad_token_id + 1` rows (4098 for 4096 tokens): the
  leading `pad_token_id + 1` rows (padding and the unused row 0) are copied, and the rest is filled
  by repeating RoBERTa's learned rows (2..513 for roberta-base) until the table is full, the last
  repeat cut short. Copying, rather than random initialisation, is what makes the converted model
  nearly as good as RoBERTa before any further pretraining (paper, Table 5).
* Local q/k/v projections are kept; the global ones (`query_global`, `key_global`,
  `value_global`) start as copies of them.
* `roberta.` becomes `longformer.`; a bare `RobertaModel` checkpoint (no prefix) stays bare and
  becomes a `LongformerModel`. The MLM head (`lm_head.*`) and other heads are kept as they are;
  `position_ids` / `token_type_ids` buffers (sized for the old table) are dropped.
* config.json keeps every RoBERTa field and sets `model_type`, `attention_window`,
  `max_position_embeddings` and `architectures` (`LongformerForMaskedLM` when there is an
  `lm_head`, else `LongformerModel`, or the Longformer twin of a RoBERTa classification head).

    python -m longformer.convert --roberta=DIR --out=DIR --max_length=4096 --attention_window=512

writes a folder that both `longformer.load_hf_checkpoint` and
`transformers.LongformerForMaskedLM.from_pretrained` load; `load_roberta_as_longformer` does the
same conversion in memory (for `--config.init_from` pointing at a RoBERTa folder).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
from typing import Any, Mapping, Sequence

import numpy as np

from longformer import hf_checkpoint
from longformer.config import LongformerConfig
from longformer.files import read_json

log = logging.getLogger(__name__)

__all__ = [
    "ConversionError",
    "extend_position_table",
    "longformer_hf_config",
    "roberta_state_to_longformer",
    "convert_roberta_checkpoint",
    "load_roberta_as_longformer",
    "main",
]

ROBERTA_MODEL_TYPES = ("roberta",)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")
_ENCODER_ROOTS = ("embeddings.", "encoder.", "pooler.")
_LOCAL_PROJECTION = re.compile(r"^(.*\battention\.self\.)(query|key|value)\.(weight|bias)$")
_BUFFERS = re.compile(r"(^|\.)embeddings\.(position_ids|token_type_ids)$")
_POSITION_TABLE = "embeddings.position_embeddings.weight"
# Config entries that describe the file, not the model.
_STALE_CONFIG_KEYS = ("transformers_version", "_name_or_path")
# RoBERTa heads whose Longformer twin uses the same parameter names.
_HEAD_PREFIXES = {
    "RobertaForSequenceClassification": "classifier.",
    "RobertaForTokenClassification": "classifier.",
    "RobertaForMultipleChoice": "classifier.",
    "RobertaForQuestionAnswering": "qa_outputs.",
}


class ConversionError(ValueError):
    """The source is not a RoBERTa checkpoint, or the requested Longformer cannot be built."""


# ----------------------------------------------------------------------------- pieces
def _layer_windows(attention_window: int | Sequence[int], num_layers: int) -> list[int]:
    windows = ([attention_window] * num_layers if isinstance(attention_window, (int, np.integer))
               else list(attention_window))
    if len(windows) != num_layers:
        raise ConversionError(f"attention_window has {len(windows)} entries but the model has "
                              f"{num_layers} layers; give one window per layer or a single int")
    for i, w in enumerate(windows):
        if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w <= 0 or w % 2:
            raise ConversionError(
                f"attention_window must be an even positive int (the total window, w/2 keys on "
                f"each side); got {w!r}" + (f" for layer {i}" if len(set(windows)) > 1 else ""))
    return [int(w) for w in windows]


def _check_roberta_config(roberta_config: Mapping[str, Any], where: str = "config") -> None:
    model_type = roberta_config.get("model_type")
    if model_type not in ROBERTA_MODEL_TYPES:
        raise ConversionError(f"{where} is not a RoBERTa checkpoint: model_type is "
                              f"{model_type!r}, expected one of {ROBERTA_MODEL_TYPES}")
    kind = roberta_config.get("position_embedding_type", "absolute")
    if kind not in (None, "absolute"):
        raise ConversionError(f"{where}: position_embedding_type {kind!r} is not supported; "
                              "Longformer uses absolute learned positions")


def extend_position_table(table: np.ndarray, rows: int, pad_token_id: int = 1) -> np.ndarray:
    """RoBERTa's position table grown to `rows` rows by repeating its learned rows.

    Rows 0..pad_token_id are copied; rows pad_token_id+1.. cycle through the old learned rows
    (old row `pad_token_id + 1 + i % n_learned` for new row `pad_token_id + 1 + i`).
    """
    table = np.asarray(table)
    old_rows = table.shape[0]
    start = pad_token_id + 1
    learned = table[start:]
    if len(learned) == 0:
        raise ConversionError(f"the position table has {old_rows} rows, none of them learned "
                              f"(positions start at pad_token_id + 1 = {start})")
    if rows < old_rows:
        raise ConversionError(
            f"max_position_embeddings {rows} is smaller than RoBERTa's {old_rows}: the new "
            f"table holds {rows - start} tokens, RoBERTa's {old_rows - start}")
    need = rows - start
    repeats = -(-need // len(learned))
    out = np.empty((rows,) + table.shape[1:], table.dtype)
    out[:start] = table[:start]
    out[start:] = np.concatenate([learned] * repeats, axis=0)[:need]
    return out


def longformer_hf_config(roberta_config: Mapping[str, Any], *, max_position_embeddings: int,
                         attention_window: int | Sequence[int],
                         architectures: Sequence[str] | None = None) -> dict[str, Any]:
    """The Longformer config.json dict: every RoBERTa field, plus the Longformer ones."""
    _check_roberta_config(roberta_config)
    num_layers = int(roberta_config.get("num_hidden_layers", 12))
    windows = _layer_windows(attention_window, num_layers)
    d = {k: v for k, v in roberta_config.items() if k not in _STALE_CONFIG_KEYS}
    d["model_type"] = "longformer"
    d["attention_window"] = windows
    d["max_position_embeddings"] = int(max_position_embeddings)
    if d.get("sep_token_id") is None:  # RoBERTa configs have none; </s> is also the separator
        eos = d.get("eos_token_id")
        d["sep_token_id"] = (eos[0] if isinstance(eos, list) else eos) if eos is not None else 2
    if architectures is not None:
        d["architectures"] = list(architectures)
    return d


def _architecture(state: Mapping[str, Any], roberta_config: Mapping[str, Any]) -> str:
    if any(k.startswith("lm_head.") for k in state):
        return "LongformerForMaskedLM"
    for name in roberta_config.get("architectures") or ():
        prefix = _HEAD_PREFIXES.get(name)
        if prefix and any(k.startswith(prefix) for k in state):
            return name.replace("Roberta", "Longformer")
    return "LongformerModel"


def _convert(state: Mapping[str, np.ndarray], roberta_config: Mapping[str, Any], *,
             max_position_embeddings: int, attention_window: int | Sequence[int]
             ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(config.json dict, Longformer-named state dict)."""
    _check_roberta_config(roberta_config)
    _layer_windows(attention_window, int(roberta_config.get("num_hidden_layers", 12)))
    pad = int(roberta_config.get("pad_token_id", 1))

    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if _BUFFERS.search(key):
            continue
        if key.startswith("roberta."):
            key = "longformer." + key[len("roberta."):]
        elif key.startswith("longformer."):
            raise ConversionError(f"{key!r} already has Longformer naming; the source says "
                                  "model_type 'roberta' but holds a Longformer")
        out[key] = np.asarray(value)

    tables = [k for k in out if k.endswith(_POSITION_TABLE)
              and k[:-len(_POSITION_TABLE)] in ("", "longformer.")]
    if len(tables) != 1:
        raise ConversionError(f"expected one position table ({_POSITION_TABLE}, bare or under "
                              f"'roberta.'), found {tables or 'none'}")
    table = out[tables[0]]
    configured = roberta_config.get("max_position_embeddings")
    if configured is not None and configured != table.shape[0]:
        raise ConversionError(f"config.json says max_position_embeddings={configured} but the "
                              f"position table has {table.shape[0]} rows")
    out[tables[0]] = extend_position_table(table, int(max_position_embeddings), pad)

    for key in list(out):
        m = _LOCAL_PROJECTION.match(key)
        if m:
            prefix, which, leaf = m.groups()
            out[f"{prefix}{which}_global.{leaf}"] = out[key].copy()

    if not any(_canonical_root(k) for k in out):
        raise ConversionError("the checkpoint holds no encoder parameters")
    hf = longformer_hf_config(roberta_config, max_position_embeddings=max_position_embeddings,
                              attention_window=attention_window,
                              architectures=[_architecture(out, roberta_config)])
    return hf, out


def _canonical_root(key: str) -> bool:
    if key.startswith("longformer."):
        key = key[len("longformer."):]
    return key.startswith(_ENCODER_ROOTS)


# ----------------------------------------------------------------------------- public API
def roberta_state_to_longformer(
    state: Mapping[str, np.ndarray],
    roberta_config: Mapping[str, Any],
    *,
    max_position_embeddings: int,
    attention_window: int | Sequence[int],
) -> tuple[LongformerConfig, dict[str, np.ndarray]]:
    """RoBERTa state dict + config.json dict -> (LongformerConfig, Longformer-named state dict).

    `max_position_embeddings` is the new table size (max tokens + pad_token_id + 1, e.g. 4098).
    The state keeps any `lm_head.decoder.*` tied copies it came with; `convert_roberta_checkpoint`
    leaves them out of the file, as transformers does.
    """
    hf, out = _convert(state, roberta_config, max_position_embeddings=max_position_embeddings,
                       attention_window=attention_window)
    return LongformerConfig.from_hf_dict(hf), out


def _read_roberta_config(src_dir: str) -> dict[str, Any]:
    file = os.path.join(src_dir, "config.json")
    if not os.path.isfile(file):
        raise ConversionError(f"{src_dir} is not a transformers checkpoint folder: no config.json")
    config = read_json(file, "a transformers RoBERTa config.json")
    _check_roberta_config(config, where=src_dir)
    return config


def _table_size(roberta_config: Mapping[str, Any], max_length: int) -> int:
    """max_length -> max_position_embeddings, refusing to shrink RoBERTa's table."""
    pad = int(roberta_config.get("pad_token_id", 1))
    old = int(roberta_config.get("max_position_embeddings", 514)) - pad - 1
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)):
        raise ConversionError(f"max_length must be an int, got {max_length!r}")
    if max_length < old:
        raise ConversionError(f"max_length {max_length} is smaller than RoBERTa's {old} tokens; "
                              "the conversion only extends the position table")
    return int(max_length) + pad + 1


def _untied_lm_decoder(state: dict[str, np.ndarray], hf: Mapping[str, Any]) -> None:
    """Drops the MLM decoder's tied copies, as transformers' save_pretrained does."""
    word = state.get("longformer.embeddings.word_embeddings.weight")
    decoder = state.get("lm_head.decoder.weight")
    if decoder is not None and hf.get("tie_word_embeddings", True):
        if word is not None and not np.array_equal(decoder, word):
            log.warning("lm_head.decoder.weight differs from the word embeddings but the config "
                        "ties them; transformers will use the word embeddings")
        del state["lm_head.decoder.weight"]
    bias = state.get("lm_head.decoder.bias")
    if bias is not None:
        if "lm_head.bias" not in state:
            state["lm_head.bias"] = bias
        del state["lm_head.decoder.bias"]


def _copy_tokenizer(src_dir: str, dst_dir: str, max_length: int) -> list[str]:
    written = []
    for name in TOKENIZER_FILES:
        src = os.path.join(src_dir, name)
        if not os.path.isfile(src):
            continue
        dst = os.path.join(dst_dir, name)
        if name == "tokenizer_config.json":
            config = read_json(src, "a transformers tokenizer_config.json")
            config["model_max_length"] = int(max_length)
            if isinstance(config.get("tokenizer_class"), str):
                config["tokenizer_class"] = config["tokenizer_class"].replace("Roberta",
                                                                              "Longformer")
            with open(dst, "w", encoding="utf-8") as f:
                json.dump(config, f, indent=2, ensure_ascii=False)
                f.write("\n")
        else:
            shutil.copyfile(src, dst)
        written.append(dst)
    return written


def convert_roberta_checkpoint(src_dir: str | os.PathLike, dst_dir: str | os.PathLike, *,
                               max_length: int = 4096,
                               attention_window: int | Sequence[int] = 512) -> dict[str, Any]:
    """Converts a transformers RoBERTa folder into a transformers Longformer folder.

    Writes config.json, model.safetensors and the tokenizer files found in `src_dir` (with
    `model_max_length` set to `max_length`). Returns {'config', 'weights', 'tokenizer_files',
    'architectures', 'max_position_embeddings', 'attention_window', 'num_tensors'}.
    """
    from safetensors.numpy import save_file

    src_dir, dst_dir = os.fspath(src_dir), os.fspath(dst_dir)
    if not os.path.isdir(src_dir):
        raise ConversionError(f"{src_dir} is not a folder")
    roberta_config = _read_roberta_config(src_dir)
    _layer_windows(attention_window, int(roberta_config.get("num_hidden_layers", 12)))
    rows = _table_size(roberta_config, max_length)
    if os.path.exists(dst_dir) and os.path.samefile(src_dir, dst_dir):
        raise ConversionError("the output folder must differ from the RoBERTa folder")

    hf, state = _convert(hf_checkpoint.read_state_dict(src_dir), roberta_config,
                         max_position_embeddings=rows, attention_window=attention_window)
    LongformerConfig.from_hf_dict(hf)  # validates before anything is written
    _untied_lm_decoder(state, hf)
    state = {k: np.ascontiguousarray(v) for k, v in state.items()}

    os.makedirs(dst_dir, exist_ok=True)
    config_file = os.path.join(dst_dir, "config.json")
    with open(config_file, "w") as f:
        json.dump(hf, f, indent=2, sort_keys=True)
        f.write("\n")
    weights = os.path.join(dst_dir, "model.safetensors")
    save_file(state, weights, metadata={"format": "pt"})
    tokenizer_files = _copy_tokenizer(src_dir, dst_dir, max_length)
    return {"config": config_file, "weights": weights, "tokenizer_files": tokenizer_files,
            "architectures": hf["architectures"], "max_position_embeddings": rows,
            "attention_window": hf["attention_window"], "num_tensors": len(state)}


def load_roberta_as_longformer(src_dir: str | os.PathLike, *, max_length: int = 4096,
                               attention_window: int | Sequence[int] = 512,
                               task: str = "masked_lm", rng=None, return_report: bool = False,
                               **config_overrides):
    """A RoBERTa folder converted in memory: `model, params = load_roberta_as_longformer(dir)`.

    `task` picks the head ('masked_lm', 'base', 'sequence_classification', ... or a class name);
    heads the checkpoint lacks are freshly initialised from `rng`. `config_overrides` set config
    fields such as `max_global_tokens`, `dtype`, `remat` or dropout.
    """
    src_dir = os.fspath(src_dir)
    roberta_config = _read_roberta_config(src_dir)
    _layer_windows(attention_window, int(roberta_config.get("num_hidden_layers", 12)))
    rows = _table_size(roberta_config, max_length)
    hf, state = _convert(hf_checkpoint.read_state_dict(src_dir), roberta_config,
                         max_position_embeddings=rows, attention_window=attention_window)
    config = LongformerConfig.from_hf_dict(hf, **config_overrides)
    model = hf_checkpoint.model_class(task)(config)
    params, report = hf_checkpoint.params_from_state_dict(model, state, rng=rng)
    return (model, params, report) if return_report else (model, params)


# ----------------------------------------------------------------------------- command line
def _window_arg(text: str) -> int | list[int]:
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an int or comma-separated ints: {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("empty attention_window")
    return values[0] if len(values) == 1 else values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m longformer.convert",
        description="Turn a transformers RoBERTa checkpoint into a Longformer checkpoint "
                    "(position table extended by copying, global projections copied).")
    parser.add_argument("--roberta", required=True, help="RoBERTa folder (config.json + weights)")
    parser.add_argument("--out", required=True, help="output Longformer folder")
    parser.add_argument("--max_length", type=int, default=4096,
                        help="longest input in tokens (table rows = max_length + pad + 1)")
    parser.add_argument("--attention_window", type=_window_arg, default=512,
                        help="total window (even), or one per layer, comma-separated")
    args = parser.parse_args(argv)
    try:
        info = convert_roberta_checkpoint(args.roberta, args.out, max_length=args.max_length,
                                          attention_window=args.attention_window)
    except (ConversionError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    windows = sorted(set(info["attention_window"]))
    print(f"wrote {info['weights']} ({info['num_tensors']} tensors, "
          f"{info['architectures'][0]}, max_position_embeddings="
          f"{info['max_position_embeddings']}, attention_window="
          f"{windows[0] if len(windows) == 1 else info['attention_window']})")
    print(f"wrote {info['config']}")
    for file in info["tokenizer_files"]:
        print(f"wrote {file}")
    if not info["tokenizer_files"]:
        print(f"no tokenizer files in {args.roberta}; none copied")
    return 0


if __name__ == "__main__":
    sys.exit(main())
