"""The masked-language-model pretraining input pipeline (numpy + grain).

Pipeline
--------
files (or the embedded default corpus) -> documents -> document-level held-out split ->
tokenize (``tokenizer.encode_plain``) -> pack into fixed-length sequences -> grain:

  train:  source -> global shuffle (seeded, reshuffled every epoch) -> repeat -> RoBERTa dynamic
          masking (``random_map``: the randomness of example i is a function of (seed, i), so a
          restored iterator reproduces the masks bit-exactly) -> host shard -> batch (drop remainder)
  eval:   source (padded to a whole number of global batches) -> masking with a FIXED seed ->
          host shard -> batch; finite, one pass, identical on every pass.

Packing (RoBERTa "FULL-SENTENCES" style)
----------------------------------------
Every document's tokens are followed by ``</s>`` and the documents are concatenated into one stream.
The stream is cut into chunks of ``seq_len - 2`` tokens and each packed sequence is
``<s> chunk </s>``; sequences therefore cross document boundaries (a ``</s>`` inside a sequence marks
one). No padding is used in training sequences: the final partial chunk of the TRAIN stream is
dropped (fewer than ``seq_len - 2`` tokens). The final partial chunk of the EVAL stream is kept and
padded with ``<pad>`` (attention_mask 0, never masked) so a small eval set is not lost. Special-token
ids that the tokenizer may produce for literal text such as "<s>" are removed from the documents
before packing, so specials only ever appear where the packer put them.

Documents kept apart (``separate_documents``)
---------------------------------------------
Off by default: the paper continues RoBERTa's pretraining, and RoBERTa packs FULL-SENTENCES
across document boundaries (a token may attend into the previous document, with ``</s>`` between
them); the default keeps that, bit for bit. With ``separate_documents=True`` the rows are the
same (same tokens, same masks) and each example also carries ``segment_ids``: 1, 2, ... for the
document pieces of its row in order, 0 for padding. A piece runs from its first token through the
``</s>`` that ends its document; the row's ``<s>`` belongs to the first piece and the row's final
``</s>`` to the last. The model keeps attention within a piece and restarts positions at each
(``LongformerModel``), so no token sees another document, and no compute is spent on padding (a
row holds as many pieces as fit). No measurement here says one is better for MLM, so the default
stays the paper's. The MLM head is per token: a row may hold any number of pieces
(``model.max_segments`` only sizes the per-sequence heads).

Held-out split
--------------
A deterministic fraction ``eval_fraction`` of DOCUMENTS (a permutation seeded with ``eval_seed``,
independent of the training seed; at least one document and at least one left for training when
``eval_fraction > 0``) is held out; train and eval are packed separately, so no eval token is ever
seen in training.

Masking (RoBERTa dynamic masking)
---------------------------------
Of the non-special, non-padding positions of a sequence, ``round_stochastic(mlm_probability * n)``
are selected (fairseq's rule: the expected count is exactly ``mlm_probability * n``); of those 80%
become ``<mask>``, 10% a random token drawn uniformly from the non-special vocabulary, 10% stay.
``labels`` is the original id at selected positions and -100 elsewhere. Masks are re-drawn every
epoch (the index of an example in the repeated stream differs), as in RoBERTa.

Each example is a dict of int32 arrays of shape [seq_len]: ``input_ids``, ``attention_mask``
(1 for real tokens, 0 for ``<pad>``), ``labels`` (and ``segment_ids`` with
``separate_documents``); batches have shape [per_host_batch, seq_len]
with ``per_host_batch = global_batch_size // process_count``.

Host sharding
-------------
All hosts build the same global example stream (same seeds); host ``p`` takes the examples
``p, p + P, p + 2P, ...`` of it. Global batch k is the union over hosts of their k-th batch, the
hosts' slices are disjoint, and the stream does not depend on the number of hosts.

Checkpointing the train iterator
--------------------------------
``data.train`` is a ``grain.DatasetIterator``; ``data.train.get_state()`` is a small JSON-serialisable
dict (``{"next_index": <batches consumed>}``) and ``data.train.set_state(state)`` on an iterator of a
freshly built pipeline (same config, seed, corpus and topology) resumes with exactly the batches the
original would have produced. With orbax, save it as ``grain.checkpoint.CheckpointSave(data.train)``
(restore with ``grain.checkpoint.CheckpointRestore(data.train)``), which writes one JSON file per
process, or save the dict itself with ``ocp.args.JsonSave(data.train.get_state())``.

Data config fields (``default_data_config()``)
---------------------------------------------
  train_files      str: comma-separated globs (a directory means every file under it);
                   '' uses the embedded default corpus (``default_corpus_documents()``).
  text_format      'auto' | 'file' | 'line' | 'jsonl'. 'file': one document per file;
                   'line': one document per non-empty line; 'jsonl': one JSON object per line with
                   the text in ``text_field`` (a ``.json`` file holding one JSON array/object is
                   also accepted); 'auto': 'jsonl' for ``.jsonl``/``.json`` files, else 'file'.
  text_field       str: JSON field holding the text ('text').
  seq_len          int: packed sequence length including <s> and </s> (512).
  mlm_probability  float: fraction of maskable tokens selected for prediction (0.15).
  eval_fraction    float: fraction of documents held out for evaluation (0.05; 0 disables eval).
  eval_seed        int: seed of the held-out split and of the fixed eval masking (0).
  num_epochs       int: passes over the train set; 0 repeats forever (0).
  max_documents    int: use only the first N documents (after reading; 0 = all).
  separate_documents bool: add ``segment_ids`` so no token attends across a document boundary
                   (False: the paper's / RoBERTa's packing across documents; see above).
  worker_threads   int: grain reader threads (4).
  prefetch_batches int: batches grain prefetches (8).

Bad input never crashes a run mid-way: an unreadable or empty file, a file (or line) that is not
UTF-8, a malformed JSON line or one without a string ``text_field`` is skipped with a
``logging.warning`` naming the file (and line). If no document remains, ``ValueError`` names the
files. Everything is held in memory as int32 arrays: fine for corpora up to a few GB of tokens.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
from typing import Any, Iterable, Sequence

import grain
import numpy as np

from longformer.corpus import default_corpus_documents, default_corpus_files

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
TEXT_FORMATS = ("auto", "file", "line", "jsonl")
_JSON_EXTENSIONS = (".jsonl", ".json")
_MAX_WARNINGS_PER_FILE = 10

__all__ = [
    "IGNORE_INDEX",
    "MLMData",
    "MLMMasking",
    "default_corpus_documents",
    "default_corpus_files",
    "default_data_config",
    "document_segments",
    "find_files",
    "load_documents",
    "make_mlm_datasets",
    "mask_tokens",
    "pack_sequences",
    "read_documents",
    "split_documents",
    "tokenize_documents",
]


# ----------------------------------------------------------------------------- config
def default_data_config():
    """The data options with their defaults, as an ``ml_collections.ConfigDict``."""
    import ml_collections  # local: only needed here

    return ml_collections.ConfigDict(dict(
        train_files="",
        text_format="auto",
        text_field="text",
        seq_len=512,
        mlm_probability=0.15,
        eval_fraction=0.05,
        eval_seed=0,
        num_epochs=0,
        max_documents=0,
        separate_documents=False,
        worker_threads=4,
        prefetch_batches=8,
    ))


def _opt(config: Any, name: str):
    """Reads a data option from a ConfigDict / dataclass / dict / namespace, with the default."""
    default = default_data_config()[name]
    if config is None:
        return default
    value = config.get(name, default) if isinstance(config, dict) else getattr(config, name,
                                                                                 default)
    return default if value is None else value


# ----------------------------------------------------------------------------- files
def find_files(patterns: str | Sequence[str]) -> list[str]:
    """Expands comma-separated globs (or a list of them) into a sorted list of unique files.

    ``~`` is expanded, ``**`` is recursive and a directory stands for every file under it. Raises
    ``FileNotFoundError`` naming the pattern if any pattern matches no file.
    """
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [p for p in str(patterns).split(",")]
    patterns = [str(p).strip() for p in patterns if str(p).strip()]
    if not patterns:
        raise ValueError("find_files: no file pattern given")
    files: set[str] = set()
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        matched = []
        for path in glob.glob(expanded, recursive=True):
            if os.path.isdir(path):
                for root, _, names in os.walk(path):
                    matched.extend(os.path.join(root, n) for n in names)
            elif os.path.isfile(path):
                matched.append(path)
        if not matched:
            raise FileNotFoundError(f"find_files: pattern {pattern!r} matched no files")
        files.update(matched)
    return sorted(files)


def _resolve_format(path: str, text_format: str) -> str:
    if text_format not in TEXT_FORMATS:
        raise ValueError(f"text_format must be one of {TEXT_FORMATS}, got {text_format!r}")
    if text_format == "auto":
        return "jsonl" if path.lower().endswith(_JSON_EXTENSIONS) else "file"
    return text_format


class _Warner:
    """Per-file warning counter, so one broken file cannot flood the log."""

    def __init__(self, path: str):
        self.path, self.count = path, 0

    def __call__(self, msg: str, *args):
        self.count += 1
        if self.count <= _MAX_WARNINGS_PER_FILE:
            logger.warning(msg, *args)

    def finish(self):
        if self.count > _MAX_WARNINGS_PER_FILE:
            logger.warning("%s: %d more problems not shown (%d in all)", self.path,
                           self.count - _MAX_WARNINGS_PER_FILE, self.count)


def _add_json_text(docs: list[str], obj: Any, field: str, warn: _Warner, where: str) -> None:
    """obj[field] joins the documents when it is a non-blank string; no string is a warning."""
    value = obj.get(field) if isinstance(obj, dict) else None
    if not isinstance(value, str):
        warn("Skipping %s: no string field %r", where, field)
    elif value.strip():
        docs.append(value)


def _read_file(path: str, fmt: str, field: str) -> list[str]:
    warn = _Warner(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        logger.warning("Skipping %s: cannot read it (%s)", path, e)
        return []
    if not raw.strip():
        logger.warning("Skipping %s: the file is empty", path)
        return []
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]

    docs: list[str] = []
    if fmt == "file":
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            logger.warning("Skipping %s: not valid UTF-8 (byte offset %d: %s)", path, e.start, e.reason)
            return []
        if "\x00" in text:
            logger.warning("Skipping %s: contains NUL bytes (a binary file?)", path)
            return []
        docs = [text] if text.strip() else []
    else:
        whole = None
        if fmt == "jsonl" and path.lower().endswith(".json"):
            # A .json file may also hold a single JSON array (or object) rather than JSON lines.
            try:
                whole = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                whole = None
        if isinstance(whole, (list, dict)):
            for i, item in enumerate(whole if isinstance(whole, list) else [whole]):
                _add_json_text(docs, item, field, warn, f"{path} item {i}")
        lines = [] if isinstance(whole, (list, dict)) else raw.splitlines()
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                line_text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                warn("Skipping %s line %d: not valid UTF-8 (%s)", path, lineno, e.reason)
                continue
            if fmt == "line":
                docs.append(line_text.strip())
                continue
            try:
                obj = json.loads(line_text)
            except ValueError as e:
                warn("Skipping %s line %d: malformed JSON (%s)", path, lineno, e)
                continue
            _add_json_text(docs, obj, field, warn, f"{path} line {lineno}")
        warn.finish()
    if not docs:
        logger.warning("%s: no documents found", path)
    return docs


def read_documents(files: Sequence[str], text_format: str = "auto", text_field: str = "text", *,
                   source: str | None = None) -> list[str]:
    """Reads the documents of ``files`` (see the module docstring for the formats).

    Bad files / lines are skipped with a warning; raises ``ValueError`` naming the files (and
    ``source``, the pattern they came from, which is what the user typed) if no document at all
    could be read.
    """
    if text_format not in TEXT_FORMATS:
        raise ValueError(f"text_format must be one of {TEXT_FORMATS}, got {text_format!r}")
    files = list(files)
    docs: list[str] = []
    for path in files:
        docs.extend(_read_file(path, _resolve_format(path, text_format), text_field))
    if not docs:
        shown = ", ".join(files[:10]) + (f", ... ({len(files)} files)" if len(files) > 10 else "")
        where = f"train_files={source!r}" if source else "the input files"
        raise ValueError(f"No usable documents in {where} (format {text_format!r}, field "
                         f"{text_field!r}; the warnings above say why): {shown or '<no files>'}")
    return docs


# ----------------------------------------------------------------------------- documents
def load_documents(config: Any = None) -> list[str]:
    """The documents named by ``config.train_files`` ('' = the default corpus), capped at
    ``config.max_documents`` when that is positive."""
    train_files = _opt(config, "train_files")
    if isinstance(train_files, str) and not train_files.strip():
        documents = default_corpus_documents()
    else:
        documents = read_documents(find_files(train_files), _opt(config, "text_format"),
                                   _opt(config, "text_field"),
                                   source=train_files if isinstance(train_files, str)
                                   else ",".join(map(str, train_files)))
    max_documents = int(_opt(config, "max_documents"))
    if max_documents > 0:
        documents = documents[:max_documents]
    return documents


# ----------------------------------------------------------------------------- split / tokenize / pack
def split_documents(documents: Sequence[str], eval_fraction: float, seed: int = 0
                    ) -> tuple[list[str], list[str]]:
    """Deterministic document-level held-out split -> (train_documents, eval_documents).

    ``round(eval_fraction * n)`` documents chosen by a permutation seeded with ``seed`` go to eval
    (at least 1 and at most n-1 when ``eval_fraction > 0`` and n >= 2); both lists keep corpus order.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    n = len(documents)
    if eval_fraction == 0.0 or n < 2:
        if eval_fraction > 0.0:
            logger.warning("Only %d document(s): no held-out eval split possible", n)
        return list(documents), []
    n_eval = min(max(int(round(eval_fraction * n)), 1), n - 1)
    perm = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED])).permutation(n)
    is_eval = np.zeros(n, dtype=bool)
    is_eval[perm[:n_eval]] = True
    train = [d for d, e in zip(documents, is_eval) if not e]
    held_out = [d for d, e in zip(documents, is_eval) if e]
    return train, held_out


def tokenize_documents(tokenizer: Any, documents: Sequence[str], batch_size: int = 1024
                       ) -> list[np.ndarray]:
    """``tokenizer.encode_plain`` each document (no specials) -> list of int32 arrays.

    Special-token ids produced for literal text such as "<pad>" are removed; documents that encode
    to nothing are dropped.
    """
    special = np.asarray(sorted(set(int(i) for i in tokenizer.all_special_ids)), dtype=np.int64)
    out: list[np.ndarray] = []
    for start in range(0, len(documents), batch_size):
        for ids in tokenizer.encode_plain(list(documents[start:start + batch_size])):
            arr = np.asarray(ids, dtype=np.int32)
            if arr.size and special.size:
                arr = arr[~np.isin(arr, special)]
            if arr.size:
                out.append(arr)
    return out


def pack_sequences(token_lists: Iterable[Sequence[int]], seq_len: int, *, bos_id: int, eos_id: int,
                   pad_id: int, pad_remainder: bool = False) -> np.ndarray:
    """Packs documents into [N, seq_len] int32 sequences ``<s> chunk </s>`` (see module docstring).

    The stream is ``doc_1 </s> doc_2 </s> ...``; chunk k is ``stream[k*(L-2):(k+1)*(L-2)]``. The final
    partial chunk is dropped, or (``pad_remainder``) kept and right-padded with ``pad_id``.
    """
    if seq_len < 3:
        raise ValueError(f"seq_len must be >= 3, got {seq_len}")
    stream = _doc_stream(token_lists, eos_id)
    content = seq_len - 2
    n_full = stream.size // content
    rem = stream.size - n_full * content
    n = n_full + (1 if pad_remainder and rem else 0)
    out = np.full((n, seq_len), pad_id, dtype=np.int32)
    out[:, 0] = bos_id
    out[:n_full, 1:-1] = stream[:n_full * content].reshape(n_full, content)
    out[:n_full, -1] = eos_id
    if n > n_full:
        out[n_full, 1:1 + rem] = stream[n_full * content:]
        out[n_full, 1 + rem] = eos_id
    return out


def document_segments(rows: np.ndarray, *, eos_id: int, pad_id: int) -> np.ndarray:
    """Segment ids of packed rows ``<s> chunk </s> <pad>...`` (``pack_sequences``' layout): one
    id per document piece, 1, 2, ... in order, 0 for padding (see the module docstring).

    Every ``</s>`` inside a chunk ends a document (the documents hold no special ids), so a new
    piece starts right after each one, except at the row's own final ``</s>``, which stays with
    the piece before it. Works on one row or a batch (the last axis is the sequence).
    """
    rows = np.asarray(rows)
    real = rows != pad_id
    last = real.sum(-1, keepdims=True) - 1  # the row's final </s> (padding is on the right)
    after_eos = np.zeros_like(real)
    after_eos[..., 1:] = rows[..., :-1] == eos_id
    starts = after_eos & (np.arange(rows.shape[-1]) < last)
    return ((1 + np.cumsum(starts, axis=-1)) * real).astype(np.int32)


class _DocumentSegments(grain.transforms.Map):
    """grain map: adds ``segment_ids`` to a masked example, from its unmasked ids (the labels
    hold the originals where the masking changed a token)."""

    def __init__(self, *, eos_id: int, pad_id: int):
        self.eos_id, self.pad_id = int(eos_id), int(pad_id)

    def map(self, element):
        labels = element["labels"]
        original = np.where(labels != IGNORE_INDEX, labels, element["input_ids"])
        return {**element, "segment_ids": document_segments(original, eos_id=self.eos_id,
                                                            pad_id=self.pad_id)}


def _doc_stream(token_lists: Iterable[Sequence[int]], eos_id: int) -> np.ndarray:
    pieces = []
    eos = np.asarray([eos_id], dtype=np.int32)
    for ids in token_lists:
        pieces.append(np.asarray(ids, dtype=np.int32))
        pieces.append(eos)
    return np.concatenate(pieces) if pieces else np.zeros((0,), dtype=np.int32)


# ----------------------------------------------------------------------------- masking
def mask_tokens(input_ids: np.ndarray, rng: np.random.Generator, *, mask_token_id: int,
                special_ids: np.ndarray, random_token_ids: np.ndarray, pad_token_id: int,
                mlm_probability: float = 0.15, mask_prob: float = 0.8, random_prob: float = 0.1
                ) -> dict[str, np.ndarray]:
    """RoBERTa masking of one sequence -> {'input_ids', 'attention_mask', 'labels'} (int32).

    Selects ``int(mlm_probability * n + u)``, u ~ U[0, 1), of the n positions whose id is not in
    ``special_ids`` (which must include the pad id); of those ``mask_prob`` -> ``mask_token_id``,
    ``random_prob`` -> a uniform draw from ``random_token_ids``, the rest unchanged.
    """
    ids = np.asarray(input_ids, dtype=np.int32)
    candidates = np.flatnonzero(~np.isin(ids, special_ids))
    n = candidates.size
    num = min(int(mlm_probability * n + rng.random()), n)
    selected = np.sort(rng.choice(candidates, size=num, replace=False)) if num else candidates[:0]
    labels = np.full(ids.shape, IGNORE_INDEX, dtype=np.int32)
    labels[selected] = ids[selected]
    inputs = ids.copy()
    u = rng.random(num)
    inputs[selected[u < mask_prob]] = mask_token_id
    to_random = selected[(u >= mask_prob) & (u < mask_prob + random_prob)]
    if to_random.size:
        inputs[to_random] = random_token_ids[rng.integers(0, random_token_ids.size, size=to_random.size)]
    attention_mask = (ids != pad_token_id).astype(np.int32)
    return {"input_ids": inputs, "attention_mask": attention_mask, "labels": labels}


class MLMMasking(grain.transforms.RandomMap):
    """grain random map: int32 [seq_len] token ids -> the masked example dict (``mask_tokens``)."""

    def __init__(self, *, mask_token_id: int, pad_token_id: int, special_ids: Iterable[int],
                 vocab_size: int, mlm_probability: float = 0.15):
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
        self.mask_token_id = int(mask_token_id)
        self.pad_token_id = int(pad_token_id)
        self.special_ids = np.asarray(sorted(set(int(i) for i in special_ids) | {self.pad_token_id,
                                                                                 self.mask_token_id}),
                                      dtype=np.int32)
        self.random_token_ids = np.setdiff1d(np.arange(int(vocab_size), dtype=np.int32), self.special_ids)
        if self.random_token_ids.size == 0:
            raise ValueError("The vocabulary has no non-special token to sample replacements from")
        self.mlm_probability = float(mlm_probability)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, mlm_probability: float = 0.15) -> "MLMMasking":
        return cls(mask_token_id=tokenizer.mask_token_id, pad_token_id=tokenizer.pad_token_id,
                   special_ids=tokenizer.all_special_ids, vocab_size=tokenizer.vocab_size,
                   mlm_probability=mlm_probability)

    def random_map(self, element, rng: np.random.Generator):
        return mask_tokens(element, rng, mask_token_id=self.mask_token_id, special_ids=self.special_ids,
                           random_token_ids=self.random_token_ids, pad_token_id=self.pad_token_id,
                           mlm_probability=self.mlm_probability)


# ----------------------------------------------------------------------------- pipeline
@dataclasses.dataclass
class MLMData:
    """What ``make_mlm_datasets`` returns.

    ``train``: checkpointable ``grain.DatasetIterator`` of batches (infinite when num_epochs == 0).
    ``eval``: a re-iterable grain ``IterDataset``: each ``iter(data.eval)`` is one deterministic pass
    of ``num_eval_batches`` batches (identical every time); ``None`` without a held-out split. The
    last global eval batch is filled up with filler rows ``<s> </s> <pad>...`` whose labels are all
    -100 (they add nothing to a token-weighted loss).
    """

    train: grain.DatasetIterator
    eval: Any
    seq_len: int
    num_train_documents: int
    num_eval_documents: int
    num_train_sequences: int  # packed sequences in one epoch (all hosts)
    num_eval_sequences: int  # real (non-filler) packed eval sequences (all hosts)
    num_eval_batches: int  # per pass, the same on every host


def _derived_seed(seed: int, tag: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, tag]).generate_state(1)[0])


def make_mlm_datasets(config: Any, tokenizer: Any, *, seed: int, global_batch_size: int,
                      process_index: int = 0, process_count: int = 1,
                      documents: Sequence[str] | None = None) -> MLMData:
    """Builds the train and eval MLM pipelines for this host (see the module docstring).

    Args:
      config: data options (``default_data_config()`` fields; ConfigDict, dict or any attribute
        object; missing fields take the defaults).
      tokenizer: a ``LongformerTokenizer`` (``encode_plain``, the special ids, ``vocab_size``).
      seed: training seed (shuffle order and train masks). The split and the eval masks use
        ``config.eval_seed`` instead, so eval is comparable across runs.
      global_batch_size: examples per step over all hosts; must divide by ``process_count``.
      process_index, process_count: this host and the number of hosts (``jax.process_index()``,
        ``jax.process_count()``).
      documents: use these documents instead of reading ``config.train_files``.
    """
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"bad process_index/process_count {process_index}/{process_count}")
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(f"global_batch_size ({global_batch_size}) must be a positive multiple of "
                         f"process_count ({process_count})")
    per_host = global_batch_size // process_count
    seq_len = int(_opt(config, "seq_len"))
    num_epochs = int(_opt(config, "num_epochs"))
    eval_seed = int(_opt(config, "eval_seed"))
    mlm_probability = float(_opt(config, "mlm_probability"))
    read_options = grain.ReadOptions(num_threads=int(_opt(config, "worker_threads")),
                                     prefetch_buffer_size=int(_opt(config, "prefetch_batches")))

    if documents is None:
        documents = load_documents(config)
    else:
        documents = list(documents)
        if int(_opt(config, "max_documents")) > 0:
            documents = documents[:int(_opt(config, "max_documents"))]
    train_docs, eval_docs = split_documents(documents, float(_opt(config, "eval_fraction")), eval_seed)

    ids = dict(bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id)
    train_seqs = pack_sequences(tokenize_documents(tokenizer, train_docs), seq_len, **ids)
    eval_seqs = pack_sequences(tokenize_documents(tokenizer, eval_docs), seq_len, pad_remainder=True, **ids)
    n_train = len(train_seqs)
    if n_train == 0:
        raise ValueError(f"The training documents ({len(train_docs)}) hold fewer than seq_len - 2 = "
                         f"{seq_len - 2} tokens: no full training sequence")
    logger.info("MLM data: %d train docs -> %d sequences of %d tokens; %d eval docs -> %d sequences",
                len(train_docs), n_train, seq_len, len(eval_docs), len(eval_seqs))
    masking = MLMMasking.from_tokenizer(tokenizer, mlm_probability)
    # After the masking, so the masks (and the default pipeline) are the same either way.
    segmenter = (_DocumentSegments(eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id)
                 if _opt(config, "separate_documents") else None)

    # --- train: the same global stream on every host, then a strided host shard.
    train_ds = grain.MapDataset.source(train_seqs).shuffle(seed=_derived_seed(seed, 1))
    train_ds = train_ds.repeat(num_epochs if num_epochs > 0 else None)
    train_ds = train_ds.random_map(masking, seed=_derived_seed(seed, 2))
    if segmenter is not None:
        train_ds = train_ds.map(segmenter)
    if num_epochs > 0:
        usable = (n_train * num_epochs // global_batch_size) * global_batch_size
        if usable == 0:
            raise ValueError(f"{n_train} train sequences x {num_epochs} epochs < one global batch "
                             f"({global_batch_size})")
        train_ds = train_ds[:usable]  # every host gets the same number of batches
    train_ds = train_ds[process_index::process_count].batch(per_host, drop_remainder=True)
    train_iter = train_ds.to_iter_dataset(read_options).__iter__()

    # --- eval: fixed masks, padded to whole global batches with all -100 filler rows.
    eval_dataset, num_eval_batches = None, 0
    if len(eval_seqs):
        n_fill = (-len(eval_seqs)) % global_batch_size
        filler = np.full((n_fill, seq_len), tokenizer.pad_token_id, dtype=np.int32)
        filler[:, 0], filler[:, 1] = tokenizer.bos_token_id, tokenizer.eos_token_id
        all_eval = np.concatenate([eval_seqs, filler])
        num_eval_batches = len(all_eval) // global_batch_size
        eval_ds = grain.MapDataset.source(all_eval).random_map(masking, seed=_derived_seed(eval_seed, 3))
        if segmenter is not None:
            eval_ds = eval_ds.map(segmenter)
        eval_ds = eval_ds[process_index::process_count].batch(per_host, drop_remainder=True)
        eval_dataset = eval_ds.to_iter_dataset(read_options)
    elif float(_opt(config, "eval_fraction")) > 0:
        logger.warning("No held-out eval sequences (eval_fraction=%s): eval disabled",
                       _opt(config, "eval_fraction"))

    return MLMData(
        train=train_iter, eval=eval_dataset, seq_len=seq_len, num_train_documents=len(train_docs),
        num_eval_documents=len(eval_docs), num_train_sequences=n_train,
        num_eval_sequences=len(eval_seqs), num_eval_batches=num_eval_batches,
    )
