"""What every fine-tuning task shares: the one build path, records, global attention, batches and
eval outputs (the tokenizer and the starting weights are `init_from.py`'s).

* A task is a `Spec`: its head, its record checks, its encoding, its per-example loss and hits,
  its metrics and predictions. `build` makes any of them into a `Task` the same way, so the
  order of checks, what is saved in the workdir and what a checkpoint's identity holds never
  differ between tasks.
* Records are the JSON objects of the task's data files (or rows of Parquet/Arrow files and
  the native layouts `readers.py` reads, or the synthetic ones of `tasks.synthetic` when no
  file is given). Each carries `_where` ("file:line", "file:row N"), so any problem found
  later (a label outside the label set, an answer not in its context) names its source.
  Fine-tuning data is small and labelled by hand: a bad record stops the run with a `DataError`
  rather than being skipped, so scores are never silently computed on part of the data.
* The global attention mask is computed here, in numpy, for every example and handed to the
  model, so the jitted step never runs the reference's data-dependent rules, and a budget too
  small for the data is reported before training starts.
* `data.packing` packs the encoded rows (`packing.py`) into rows of `seq_len` holding up to
  `model.max_segments` examples and `model.max_global_tokens` global tokens each: train and
  eval batches are then of packed rows (`batch_size` counts rows), and `apply` reads the
  model's outputs back per example, so a task's `score`, metrics and predictions see exactly
  the batches and outputs they see unpacked, and losses and metrics count examples.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from typing import Any, Callable, Optional, Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np

from longformer import packing, readers
from longformer.config import LongformerConfig
from longformer.modeling import LongformerForSequenceClassification
from longformer.tasks import init_from, synthetic
from longformer.tasks.base import Task
from longformer.tokenizer import LongformerTokenizer

log = logging.getLogger(__name__)

GLOBAL_MODES = ("default", "none", "cls", "question")


class DataError(ValueError):
    """A bad fine-tuning record; the message starts with the file and line."""


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
    if os.path.isdir(path):
        raise DataError(f"{path}: a folder, not a JSON lines file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: missing; expected a JSON lines file")
    try:
        with open(path, encoding="utf-8") as f:
            lines = list(f)
    except UnicodeDecodeError:
        with open(path, "rb") as f:  # the text reader's error only knows its own chunk
            raw = f.read()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw.count(b"\n", 0, e.start) + 1
            raise DataError(f"{path}:{line}: not UTF-8 text (byte {e.start}: {e.reason})"
                            ) from None
        raise
    out = []
    for lineno, line in enumerate(lines, start=1):
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

    Files are read in `data.format` with `data.fields` renamed (`readers.read`; by default
    `reader`, the task's JSON reader, and Parquet/Arrow by extension). With a train file but no
    eval file there is no eval set (None is returned).
    """
    pattern = config.data[f"{split}_file"]
    if pattern:
        records = readers.read(pattern, fmt=config.data.get("format", ""),
                               fields=config.data.get("fields", ""), split=split, default=reader)
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


# ----------------------------------------------------------------------------- encoding
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
    """Adds `index` (row number) and `valid` (1; 0 marks eval filler rows); rows that have them
    (packed ones: per slot) are kept as they are."""
    if "index" in rows:
        return rows
    n = len(next(iter(rows.values())))
    return {**rows, "index": np.arange(n, dtype=np.int32), "valid": np.ones(n, np.int32)}


def make_pipelines(config, train_rows: dict[str, np.ndarray],
                   eval_rows: dict[str, np.ndarray] | None):
    """(checkpointable train iterator, re-iterable eval dataset or None) of this host's batches.

    Train: shuffle (reshuffled each epoch) -> repeat -> host shard -> batch. Eval: one fixed pass,
    filled up to whole global batches with copies of row 0 marked `valid=0`, `index=-1` (every
    slot of a packed row).
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


def slot_outputs(model) -> tuple[str, ...]:
    """The head outputs that packed rows give per example slot, not per token."""
    return ("logits",) if isinstance(model, LongformerForSequenceClassification) else ()


def apply(model, params, batch: dict, rng=None, inputs: Sequence[str] = ()):
    """The model on a batch; training mode (dropout from `rng`) when an rng is given. `inputs`
    names the batch fields the head takes beyond the encoder's (`Spec.model_inputs`).

    A packed batch (`segment_ids`) runs packed, and its outputs come back per example
    (`packing.unpack_outputs`): (rows * max_segments, ...) in slot order, as the batch's own
    fields are by `packing.unpack_batch`.
    """
    train = rng is not None
    packed = packing.SEGMENT_IDS in batch
    out = model.apply(params, batch["input_ids"], attention_mask=batch["attention_mask"],
                      global_attention_mask=batch["global_attention_mask"],
                      deterministic=not train, rngs={"dropout": rng} if train else None,
                      **({"segment_ids": batch[packing.SEGMENT_IDS]} if packed else {}),
                      **{k: batch[k] for k in inputs})
    return packing.unpack_outputs(out, batch, slot_fields=slot_outputs(model)) if packed else out


def gather(outputs: list[dict]) -> dict[str, np.ndarray]:
    """Eval outputs of all batches -> arrays over the real rows, in row order."""
    cat = {k: np.concatenate([np.asarray(o[k]) for o in outputs]) for k in outputs[0]}
    keep = cat["valid"] > 0
    order = np.argsort(cat["index"][keep], kind="stable")
    return {k: v[keep][order] for k, v in cat.items()}


def example_id(rec: dict, i: int):
    return rec.get("id", i)


# ----------------------------------------------------------------------------- the one build path
@dataclasses.dataclass(frozen=True)
class EvalSet:
    """The eval records as encoded: what a task's metrics and predictions read."""
    records: list[dict]
    rows: dict[str, np.ndarray]
    extra: Any  # what `encode` returned beside the rows (windows' sources, offsets, ...)


def _per_example_count(batch) -> jax.Array:
    return jnp.sum(batch["valid"])


@dataclasses.dataclass(frozen=True)
class Spec:
    """What is a fine-tuning task's own; `build` does everything else the same way for all.

    `facts` is what `prepare` learns from the records (the label set, the number of choices):
    it sizes the head (`model_fields`), goes into the checkpoint identity, and is handed to the
    other callables.

    Attributes:
      head: the model class.
      default_global, global_modes: the head's default global attention and the modes allowed.
      budget_hint: how to size model.max_global_tokens when the data needs more.
      synthetic: (n, seed, **options) -> records, the synthetic task of a run with no files;
        its options are the fields of config.data.synthetic (but num_train and num_eval) and
        those of `synthetic_options(config)`.
      encode: (config, tokenizer, records, facts, mode) -> (rows, extra).
      score: (model outputs, batch, facts) -> (loss terms per example or per position, zero
        where nothing is counted; {metric: hits, shaped alike}; {name: eval output per row}).
      summarize, predict: (eval outputs, config=, facts=, evals=EvalSet) -> metrics / records.
      prepare: (config, train records, eval records or None) -> facts; checks the records.
      info: facts -> the task's entries of the start-up log line.
      unit: what a record is called in that line; windowed: whether records become several rows.
      model_fields: facts -> LongformerConfig fields of the head (num_labels, ...).
      check_config: refuses options that cannot work, before anything is read.
      reader: path -> records.
      weight: batch -> what the loss averages over (examples by default).
      per_token: the rows' per-token fields when packing (None: those as long as a row; name
        them when a per-example field may be as long by chance).
      no_packing: why the task cannot pack ('' packs).
      model_inputs: batch fields the head takes as inputs beyond the encoder's (marker
        positions, ...).
    """

    head: type
    default_global: str
    global_modes: tuple[str, ...]
    budget_hint: str
    synthetic: Callable[..., list[dict]]
    encode: Callable[..., tuple[dict, Any]]
    score: Callable[[Any, dict, dict], tuple[Any, dict, dict]]
    summarize: Callable[..., dict]
    predict: Callable[..., list]
    prepare: Callable[[Any, list, Optional[list]], dict] = lambda config, train, evals: {}
    info: Callable[[dict], dict] = lambda facts: {}
    unit: str = "examples"
    windowed: bool = False
    model_fields: Callable[[dict], dict] = lambda facts: {}
    synthetic_options: Callable[[Any], dict] = lambda config: {}
    check_config: Callable[[Any], None] = lambda config: None
    reader: Callable[[str], list[dict]] = read_jsonl
    weight: Callable[[dict], Any] = _per_example_count
    per_token: Optional[tuple[str, ...]] = None
    no_packing: str = ""
    model_inputs: tuple[str, ...] = ()


def _weighted_sum(x, valid):
    """Sum of per-example (or per-position) values, rows weighted by `valid`."""
    return jnp.sum(x * valid.reshape(valid.shape + (1,) * (x.ndim - 1)))


def packs(config) -> bool:
    """data.packing (configs written before it existed do not pack)."""
    return bool(config.data.get("packing", False))


def check_packing(config, spec: Spec) -> None:
    if packs(config) and spec.no_packing:
        raise ValueError(f"{config.task.replace('_', ' ')} does not pack: {spec.no_packing}; "
                         "set data.packing=False")


def pack_rows(config, model_cfg: LongformerConfig, spec: Spec, train_rows: dict,
              eval_rows: dict | None):
    """(packing.Layout, packed train rows, packed eval rows or None) of the bookkept rows; the
    eval rows pack with the train rows' layout (the same padding values)."""
    layout = packing.layout(train_rows, spec.per_token)
    pack = functools.partial(packing.pack, seq_len=config.data.seq_len,
                             max_global_tokens=model_cfg.max_global_tokens,
                             max_segments=model_cfg.max_segments, per_token=layout.per_token,
                             fills=layout.fills)
    return layout, pack(train_rows), None if eval_rows is None else pack(eval_rows)


def build(config, workdir: str, spec: Spec) -> Task:
    """The Task of a fine-tuning config: data, tokenizer, model, loss and evaluation."""
    spec.check_config(config)
    check_packing(config, spec)
    mode = global_mode(config, spec.default_global, spec.global_modes)
    options = {k: v for k, v in config.data.synthetic.items() if k not in ("num_train",
                                                                           "num_eval")}
    make = functools.partial(spec.synthetic, **options, **spec.synthetic_options(config))
    train_records = load_records(config, "train", make, reader=spec.reader)
    eval_records = load_records(config, "eval", make, reader=spec.reader)
    facts = spec.prepare(config, train_records, eval_records)
    tokenizer = init_from.load_tokenizer(config, workdir, lambda: synthetic.corpus(train_records))
    model_cfg = init_from.model_config(config, **spec.model_fields(facts))
    init_from.check_fits(config, tokenizer, model_cfg)
    init_from.save_model_config(workdir, model_cfg)
    model = spec.head(model_cfg)

    train_rows, _ = spec.encode(config, tokenizer, train_records, facts, mode)
    evals = None
    if eval_records is not None:
        evals = EvalSet(eval_records, *spec.encode(config, tokenizer, eval_records, facts, mode))
    check_global_budget(train_rows["global_attention_mask"], model_cfg, spec.budget_hint)
    pipe_train, pipe_eval = with_bookkeeping(train_rows), evals and with_bookkeeping(evals.rows)
    layout = None
    if packs(config):
        layout, pipe_train, pipe_eval = pack_rows(config, model_cfg, spec, pipe_train, pipe_eval)
    train_iter, eval_data = make_pipelines(config, pipe_train, pipe_eval)

    def per_example(batch):
        """The batch as the task encoded it (a packed one unpacked)."""
        return batch if layout is None else packing.unpack_batch(batch, layout)

    def run(params, batch, rng):
        out = apply(model, params, batch, rng, spec.model_inputs)
        batch = per_example(batch)
        return spec.score(out, batch, facts), batch

    def loss_fn(params, batch, rng):
        (loss, hits, _), batch = run(params, batch, rng)
        valid = batch["valid"].astype(jnp.float32)
        return _weighted_sum(loss, valid), {k: _weighted_sum(v, valid) for k, v in hits.items()}

    def eval_fn(params, batch):
        (_, _, outputs), batch = run(params, batch, None)
        return {"index": batch["index"], "valid": batch["valid"], **outputs}

    def sizes(split, records, rows):
        out = {f"{split} {spec.unit}": 0 if records is None else len(records)}
        if spec.windowed:
            out[f"{split} windows"] = 0 if rows is None else len(rows["input_ids"])
        return out

    bound = dict(config=config, facts=facts, evals=evals)
    return Task(
        model=model, train_data=train_iter, eval_data=eval_data,
        batch_spec=batch_spec(config, pipe_train),
        weight_fn=lambda batch: spec.weight(per_example(batch)),
        loss_fn=loss_fn, eval_fn=eval_fn,
        summarize=functools.partial(spec.summarize, **bound),
        predict=functools.partial(spec.predict, **bound),
        identity=identity(config, model_cfg, **facts,
                          **({"packing": True} if layout is not None else {})),
        initial_params=init_from.init_fn(config, model, workdir),
        tokenizer=tokenizer,
        info={**spec.info(facts), **sizes("train", train_records, train_rows),
              **sizes("eval", eval_records, evals and evals.rows), "global attention": mode,
              **({} if layout is None else {"packed train rows": len(pipe_train["input_ids"])})},
        data_files=tuple(path for split in ("train", "eval") if config.data[f"{split}_file"]
                         for path in readers.source_files(config.data[f"{split}_file"],
                                                          config.data.get("format", ""), split)))
