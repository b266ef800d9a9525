"""What every fine-tuning task shares: its config, records, tokenizer, global attention, batches
and eval outputs (the starting weights are `init_from.py`'s).

* Records are the JSON objects of the task's data files (or the synthetic ones of
  `tasks.synthetic` when no file is given). Each carries `_where` ("file:line"), so any problem
  found later (a label outside the label set, an answer not in its context) names its source.
  Fine-tuning data is small and labelled by hand: a bad record stops the run with a `DataError`
  rather than being skipped, so scores are never silently computed on part of the data.
* The global attention mask is computed here, in numpy, for every example and handed to the
  model, so the jitted step never runs the reference's data-dependent rules, and a budget too
  small for the data is reported before training starts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable, Iterable, Sequence

import grain
import jax
import ml_collections
import numpy as np

from longformer import data as data_lib
from longformer.config import LongformerConfig
from longformer.tasks import init_from as init_lib
from longformer.tokenizer import LongformerTokenizer

log = logging.getLogger(__name__)

GLOBAL_MODES = ("default", "none", "cls", "question")



class DataError(ValueError):
    """A bad fine-tuning record; the message starts with the file and line."""


# ----------------------------------------------------------------------------- config
def base_config(task: str, *, seq_len: int, windows: Sequence[int]) -> ml_collections.ConfigDict:
    """The fields every fine-tuning config has, with a demo-size model for the synthetic data."""
    c = ml_collections.ConfigDict()
    c.task = task
    c.seed = 0
    c.init_from = ""  # transformers folder or train.py workdir; '' starts from random weights
    c.tokenizer = ""  # tokenizer folder; '' uses the workdir's, init_from's, or trains one
    c.global_attention = "default"  # 'default' (the reference's rule for the head) | 'none' | ...
    c.model = ml_collections.ConfigDict(type_safe=False, initial_dictionary=dict(
        vocab_size=1024, hidden_size=128, num_hidden_layers=len(windows), num_attention_heads=4,
        intermediate_size=256, hidden_act="gelu", hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1, max_position_embeddings=seq_len + 2, type_vocab_size=1,
        initializer_range=0.02, layer_norm_eps=1e-5, attention_window=tuple(windows),
        pad_token_id=1, bos_token_id=0, eos_token_id=2, sep_token_id=2,
        dtype="float32", param_dtype="float32", max_global_tokens=1, remat="none",
        attention_block_size=0))
    c.data = ml_collections.ConfigDict(dict(
        train_file="",  # comma-separated globs; '' generates the synthetic task
        eval_file="",
        seq_len=seq_len,  # tokens per model input, <s> and separators included
        worker_threads=1,
        prefetch_batches=4,
        synthetic=ml_collections.ConfigDict(dict(num_train=2000, num_eval=256, num_words=200)),
    ))
    c.batch_size = 16
    c.grad_accum_steps = 1
    c.total_steps = 400
    c.stop_after_steps = 0
    # For a pretrained checkpoint use the usual fine-tuning rate, e.g. learning_rate=3e-5.
    c.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=1e-3, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01, grad_clip_norm=1.0))
    c.schedule = ml_collections.ConfigDict(dict(warmup_steps=40, power=1.0, end_learning_rate=0.0))
    c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1)))
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=2, async_save=True))
    c.logging = ml_collections.ConfigDict(dict(every_steps=25, eval_every_steps=200,
                                               eval_batches=0))  # 0: the whole eval set
    c.distributed = ml_collections.ConfigDict(dict(
        enabled=False, coordinator_address="", num_processes=0, process_id=-1))
    return c


def identity(config, model_cfg: LongformerConfig, **extra) -> dict:
    """What a resumed checkpoint must match: the task, the effective model and the data shape."""
    model = {k: list(v) if isinstance(v, tuple) else v
             for k, v in dataclasses.asdict(model_cfg).items()}
    return {"task": config.task, "model": model, "seq_len": config.data.seq_len,
            "batch_size": config.batch_size, "seed": config.seed, **extra}


def global_mode(config, default: str, allowed: Sequence[str]) -> str:
    """config.global_attention resolved ('default' -> the head's reference rule)."""
    mode = config.global_attention
    if mode not in GLOBAL_MODES:
        raise ValueError(f"global_attention {mode!r} is not one of {GLOBAL_MODES}")
    mode = default if mode == "default" else mode
    if mode not in allowed:
        raise ValueError(f"global_attention {config.global_attention!r} does not apply to task "
                         f"{config.task!r}; use one of {('default',) + tuple(allowed)}")
    return mode


# ----------------------------------------------------------------------------- records
def where(rec: dict) -> str:
    return rec.get("_where", "<record>")


def field(rec: dict, name: str, types, what: str = "") -> Any:
    """rec[name], checked: a DataError naming the record's file and line otherwise."""
    if name not in rec:
        raise DataError(f"{where(rec)}: missing field {name!r}")
    value = rec[name]
    if not isinstance(value, types) or isinstance(value, bool) and bool not in (
            types if isinstance(types, tuple) else (types,)):
        raise DataError(f"{where(rec)}: field {name!r} must be {what or types}, got "
                        f"{type(value).__name__} {str(value)[:80]!r}")
    return value


def read_jsonl(path: str) -> list[dict]:
    """One JSON object per non-empty line, each tagged with `_where` = 'path:line'."""
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got "
                                f"{type(obj).__name__}")
            obj["_where"] = f"{path}:{lineno}"
            out.append(obj)
    return out


def load_records(config, split: str, synthetic_fn: Callable[[int, int], list[dict]],
                 reader: Callable[[str], list[dict]] = read_jsonl) -> list[dict]:
    """The records of `config.data.{split}_file`, or synthetic ones when no file is given.

    With a train file but no eval file there is no eval set (None is returned).
    """
    pattern = config.data[f"{split}_file"]
    if pattern:
        records = [r for path in data_lib.find_files(pattern) for r in reader(path)]
        if not records:
            raise DataError(f"{pattern}: no records")
        return records
    if split == "eval" and config.data.train_file:
        log.warning("data.train_file is set but data.eval_file is not: no evaluation")
        return None
    syn = config.data.synthetic
    n = syn.num_train if split == "train" else syn.num_eval
    seed = config.seed * 1000 + (1 if split == "train" else 2)
    records = synthetic_fn(n, seed)
    for i, r in enumerate(records):
        r["_where"] = f"synthetic {split} example {i}"
    return records


# ----------------------------------------------------------------------------- tokenizer
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
        run, _ = init_lib.resolve_run(config.init_from)
        init_tok = (os.path.join(run, "tokenizer")
                    if init_lib.source_kind(config.init_from) == "run" else config.init_from)
    for folder in (config.tokenizer, own, init_tok):
        if _has_tokenizer(folder):
            tok = LongformerTokenizer.from_pretrained(folder)
            break
    else:
        if config.tokenizer:
            raise FileNotFoundError(f"no tokenizer files in {config.tokenizer}")
        log.info("training a byte-level BPE tokenizer (vocab %d) on the task's texts",
                 config.model.vocab_size)
        tok = LongformerTokenizer.train(texts(), vocab_size=config.model.vocab_size,
                                        model_max_length=config.data.seq_len)
    if jax.process_index() == 0 and not _has_tokenizer(own):
        tok.save(own)
    return tok


def encode_segments(tokenizer: LongformerTokenizer, texts: Sequence[str]
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each text's token ids and character offsets, without `<s>`/`</s>` (for assembling inputs).

    Encoding a segment alone gives the same tokens as inside a pair: the byte-level pre-tokenizer
    sees each segment separately and the post-processor only adds the specials. Special tokens
    that literal text such as "</s>" or "<pad>" produces are dropped, so separators and padding
    only ever sit where the task put them.
    """
    special = np.asarray(sorted(tokenizer.all_special_ids), np.int32)
    out = []
    for start in range(0, len(texts), 1024):
        enc = tokenizer(list(texts[start:start + 1024]), return_offsets_mapping=True)
        for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"]):
            ids = np.asarray(ids[1:-1], np.int32)
            offsets = np.asarray(offsets[1:-1], np.int32).reshape(-1, 2)
            keep = ~np.isin(ids, special)
            out.append((ids[keep], offsets[keep]))
    return out


def check_vocab(tokenizer: LongformerTokenizer, model_cfg: LongformerConfig) -> None:
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's "
                         f"vocab_size is {model_cfg.vocab_size}")


def check_length(config, model_cfg: LongformerConfig) -> None:
    if config.data.seq_len > model_cfg.max_sequence_length:
        raise ValueError(f"data.seq_len {config.data.seq_len} exceeds the position table "
                         f"({model_cfg.max_sequence_length} tokens)")


def windows(n: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) spans of at most `size` tokens covering range(n), consecutive ones sharing
    `overlap` tokens (a single window when n fits, even n = 0)."""
    if not 0 <= overlap < size:
        raise ValueError(f"window_overlap={overlap} must be in [0, {size}) for windows of {size} "
                         "tokens")
    if n <= size:
        return [(0, n)]
    step = size - overlap
    spans, start = [], 0
    while True:
        spans.append((start, min(start + size, n)))
        if start + size >= n:
            return spans
        start += step


# ----------------------------------------------------------------------------- global attention
def check_global_budget(global_mask: np.ndarray, model_cfg: LongformerConfig, hint: str) -> None:
    """Refuses data whose examples ask for more global tokens than the static budget."""
    counts = global_mask.reshape(-1, global_mask.shape[-1]).sum(-1)
    most = int(counts.max(initial=0))
    if most > model_cfg.max_global_tokens:
        raise ValueError(f"an example has {most} global tokens but model.max_global_tokens is "
                         f"{model_cfg.max_global_tokens}; {hint}")


# ----------------------------------------------------------------------------- batches
class _Rows:
    """Random access to row i of a dict of equally long arrays (a grain source)."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays
        self.size = len(next(iter(arrays.values())))

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.arrays.items()}


def with_bookkeeping(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Adds `index` (row number) and `valid` (1; 0 marks eval filler rows)."""
    n = len(next(iter(rows.values())))
    return {**rows, "index": np.arange(n, dtype=np.int32), "valid": np.ones(n, np.int32)}


def make_pipelines(config, train_rows: dict[str, np.ndarray],
                   eval_rows: dict[str, np.ndarray] | None):
    """(checkpointable train iterator, re-iterable eval dataset or None) of this host's batches.

    Train: shuffle (reshuffled each epoch) -> repeat -> host shard -> batch. Eval: one fixed pass,
    filled up to whole global batches with copies of row 0 marked `valid=0`, `index=-1`.
    """
    global_batch = config.batch_size
    pid, count = jax.process_index(), jax.process_count()
    if global_batch % count:
        raise ValueError(f"batch_size {global_batch} is not a multiple of {count} processes")
    per_host = global_batch // count
    options = grain.ReadOptions(num_threads=config.data.worker_threads,
                                prefetch_buffer_size=config.data.prefetch_batches)
    train_rows = with_bookkeeping(train_rows)
    train = grain.MapDataset.source(_Rows(train_rows)).shuffle(seed=config.seed).repeat(None)
    train = train[pid::count].batch(per_host, drop_remainder=True)
    train_iter = train.to_iter_dataset(options).__iter__()
    if eval_rows is None:
        return train_iter, None
    eval_rows = with_bookkeeping(eval_rows)
    n = len(eval_rows["index"])
    fill = (-n) % global_batch
    if fill:
        eval_rows = {k: np.concatenate([v, np.repeat(v[:1], fill, axis=0)])
                     for k, v in eval_rows.items()}
        eval_rows["valid"][n:] = 0
        eval_rows["index"][n:] = -1
    evals = grain.MapDataset.source(_Rows(eval_rows))[pid::count].batch(per_host,
                                                                       drop_remainder=True)
    return train_iter, evals.to_iter_dataset(options)


def batch_spec(config, rows: dict[str, np.ndarray]) -> dict[str, tuple]:
    """name -> (global shape, dtype) of a train batch, `input_ids` first."""
    rows = with_bookkeeping(rows)
    names = ["input_ids"] + sorted(k for k in rows if k != "input_ids")
    return {k: ((config.batch_size,) + rows[k].shape[1:], rows[k].dtype) for k in names}


def apply(model, params, batch: dict, rng=None):
    """The model on a batch; training mode (dropout from `rng`) when an rng is given."""
    train = rng is not None
    return model.apply(params, batch["input_ids"], attention_mask=batch["attention_mask"],
                       global_attention_mask=batch["global_attention_mask"],
                       deterministic=not train, rngs={"dropout": rng} if train else None)


def gather(outputs: list[dict]) -> dict[str, np.ndarray]:
    """Eval outputs of all batches -> arrays over the real rows, in row order."""
    cat = {k: np.concatenate([np.asarray(o[k]) for o in outputs]) for k in outputs[0]}
    keep = cat["valid"] > 0
    order = np.argsort(cat["index"][keep], kind="stable")
    return {k: v[keep][order] for k, v in cat.items()}


def example_id(rec: dict, i: int):
    return rec.get("id", i)
