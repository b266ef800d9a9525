"""Character-level (byte-level) autoregressive language modelling, the paper's Appendix B.

Data: the corpus is one byte stream. `data.path` names text8 or enwik8 (the raw file, or the
`.zip` it is distributed as); the first 90% of the bytes train, the next 5% validate, the last
5% test: for these 100,000,000-byte files that is the standard 90M / 5M / 5M split. With no path,
the embedded default corpus (`corpus.default_corpus_documents()`, Python's own documentation) is
used as UTF-8 bytes, split the same way. Nothing is ever downloaded.

Training examples are `seq_len + 1` bytes cropped at uniformly random offsets (grain
`random_map`: the crop of example i is a function of (seed, i), so a restored iterator goes on
with exactly the same crops), as inputs and next-byte targets.

Evaluation is sliding, as the paper does (after Transformer-XL): windows of `eval_seq_len` bytes
advance by `eval_stride`, and each window scores only its last `eval_stride` positions (the first
window scores all of its own), so every byte of the split is predicted exactly once, and all but
the first window's have at least `eval_seq_len - eval_stride` bytes of left context. The task
reports bits per character (per byte; text8 is ASCII), which `train.py`'s periodic evaluation and
`eval.py` print.

Staged training (the paper's phases) runs each phase in its own workdir and starts a phase from
the previous one's parameters with `init_from=<previous workdir>`.
"""

from __future__ import annotations

import logging
import math
import os
import zipfile
import zlib

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from longformer import checkpoints, corpus
from longformer import data as data_lib
from longformer.charlm import VOCAB_SIZE, CharLM
from longformer.files import FileFormatError
from longformer.losses import cross_entropy
from longformer.tasks.base import Task
from longformer.tasks.init_from import config_model as model_config

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
SPLIT_FRACTIONS = (0.9, 0.05, 0.05)


def default_data_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        path="",  # text8 / enwik8 (raw or .zip); '' = the embedded default corpus
        seq_len=2048,  # training window, in bytes
        eval_seq_len=0,  # evaluation window; 0 = seq_len
        eval_stride=0,  # bytes scored per evaluation window; 0 = eval_seq_len // 2
        eval_split="valid",  # 'valid' | 'test'
        eval_batch_size=0,  # windows per evaluation batch (global); 0 = batch_size
        max_eval_bytes=0,  # evaluate on the first N bytes of the split only; 0 = all of it
        worker_threads=2,
        prefetch_batches=4,
    ))


# ----------------------------------------------------------------------------- bytes
def read_corpus(path: str) -> np.ndarray:
    """The corpus as uint8: a file's bytes, the single member of a .zip, or the default corpus."""
    if not path:
        text = "\n\n".join(data_lib.default_corpus_documents())
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data.path {path!r} is not a file (text8 / enwik8 or its .zip)")
    with open(path, "rb") as f:
        magic = f.read(4)
    if zipfile.is_zipfile(path) or magic == b"PK\x03\x04" or path.lower().endswith(".zip"):
        # A damaged archive must not be read as if its compressed bytes were the text.
        try:
            with zipfile.ZipFile(path) as z:
                members = [m for m in z.infolist() if not m.is_dir()]
                if len(members) != 1:
                    raise FileFormatError(f"{path}: holds {len(members)} files; expected one "
                                          "(text8/enwik8)")
                raw = z.read(members[0])
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise FileFormatError(f"{path}: a corrupt or truncated zip archive ({e}); expected "
                                  "text8/enwik8 or its .zip") from None
    else:
        with open(path, "rb") as f:
            raw = f.read()
    if not raw:
        raise FileFormatError(f"{path}: empty; expected text8/enwik8 or its .zip")
    return np.frombuffer(raw, dtype=np.uint8)


def split_corpus(stream: np.ndarray) -> dict[str, np.ndarray]:
    """First 90% train, next 5% valid, last 5% test (90M/5M/5M for text8 and enwik8)."""
    n = len(stream)
    n_train = int(round(n * SPLIT_FRACTIONS[0]))
    n_valid = int(round(n * SPLIT_FRACTIONS[1]))
    return {"train": stream[:n_train], "valid": stream[n_train:n_train + n_valid],
            "test": stream[n_train + n_valid:]}


# ----------------------------------------------------------------------------- pipelines
class RandomCrops(grain.transforms.RandomMap):
    """Any index -> a random window: inputs stream[s:s+L], targets stream[s+1:s+L+1]."""

    def __init__(self, stream: np.ndarray, seq_len: int):
        if len(stream) < seq_len + 1:
            raise ValueError(f"the training split has {len(stream)} bytes, fewer than "
                             f"seq_len + 1 = {seq_len + 1}")
        self.stream, self.seq_len = stream, seq_len

    def random_map(self, element, rng: np.random.Generator):
        del element
        start = int(rng.integers(0, len(self.stream) - self.seq_len))
        chunk = self.stream[start:start + self.seq_len + 1].astype(np.int32)
        return {"inputs": chunk[:-1], "targets": chunk[1:]}


def num_eval_windows(num_bytes: int, seq_len: int, stride: int) -> int:
    """Windows a sliding evaluation of `num_bytes` needs (num_bytes - 1 predictions)."""
    return 1 + max(0, -(-(num_bytes - 1 - seq_len) // stride))


class SlidingWindow(grain.transforms.Map):
    """Window index k -> inputs, targets and the mask of the positions it scores.

    Window k starts at k * stride; window 0 scores every position, later ones their last
    `stride`; positions past the end of the stream (and whole windows past the last) score none.
    """

    def __init__(self, stream: np.ndarray, seq_len: int, stride: int):
        if not 1 <= stride <= seq_len:
            raise ValueError(f"eval_stride must be in [1, eval_seq_len={seq_len}], got {stride}")
        self.stream, self.seq_len, self.stride = stream, seq_len, stride
        self.count = num_eval_windows(len(stream), seq_len, stride)

    def map(self, k):
        k = int(k)
        start = k * self.stride
        padded = np.zeros(self.seq_len + 1, np.int32)
        chunk = self.stream[start:start + self.seq_len + 1]
        padded[:len(chunk)] = chunk
        position = start + np.arange(self.seq_len)
        scored = (position < len(self.stream) - 1) & (k < self.count)
        if k > 0:
            scored &= np.arange(self.seq_len) >= self.seq_len - self.stride
        return {"inputs": padded[:-1], "targets": padded[1:], "mask": scored.astype(np.int32)}


def _derived_seed(seed: int, tag: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, tag]).generate_state(1)[0])


def make_datasets(data_cfg, splits: dict[str, np.ndarray], *, seed: int, batch_size: int,
                  process_index: int = 0, process_count: int = 1):
    """(train iterator, re-iterable eval dataset or None, sizes for the log) for this host."""
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} is not a multiple of {process_count} processes")
    read = grain.ReadOptions(num_threads=int(data_cfg.worker_threads),
                             prefetch_buffer_size=int(data_cfg.prefetch_batches))
    seq_len = int(data_cfg.seq_len)
    train = grain.MapDataset.range(max(len(splits["train"]) // seq_len, 1)).repeat(None)
    train = train.random_map(RandomCrops(splits["train"], seq_len), seed=_derived_seed(seed, 1))
    train = train[process_index::process_count].batch(batch_size // process_count,
                                                      drop_remainder=True)

    if data_cfg.eval_split not in ("valid", "test"):
        raise ValueError(f"data.eval_split must be 'valid' or 'test', got {data_cfg.eval_split!r}")
    stream = splits[data_cfg.eval_split]
    if data_cfg.max_eval_bytes:
        stream = stream[:int(data_cfg.max_eval_bytes)]
    eval_len = int(data_cfg.eval_seq_len or seq_len)
    stride = int(data_cfg.eval_stride or max(eval_len // 2, 1))
    eval_batch = int(data_cfg.eval_batch_size or batch_size)
    if eval_batch % process_count:
        raise ValueError(f"eval batch {eval_batch} is not a multiple of {process_count} processes")
    train = train.to_iter_dataset(read).__iter__()
    if len(stream) < 2:
        return train, None, {}
    windows = SlidingWindow(stream, eval_len, stride)
    padded = -(-windows.count // eval_batch) * eval_batch  # whole batches; extra rows score 0
    evals = grain.MapDataset.range(padded).map(windows)[process_index::process_count]
    evals = evals.batch(eval_batch // process_count, drop_remainder=True).to_iter_dataset(read)
    return train, evals, {"eval windows": windows.count,
                          f"{data_cfg.eval_split} bytes scored": len(stream) - 1}


# ----------------------------------------------------------------------------- model, loss, metrics
def token_losses(model, params, inputs, targets, rng=None):
    """Per-position next-byte cross-entropy (nats, float32) and whether the argmax was right."""
    deterministic = rng is None
    logits = model.apply(params, inputs, deterministic=deterministic,
                         rngs=None if deterministic else {"dropout": rng}).astype(jnp.float32)
    losses, _ = cross_entropy(logits, targets)
    return losses, jnp.argmax(logits, -1) == targets


def summarize(outputs: list) -> dict[str, float]:
    """Bits per character over every scored byte (sums first, one division at the end)."""
    sums = {k: float(sum(np.asarray(o[k], np.float64).sum() for o in outputs)) for k in outputs[0]}
    chars = max(sums["chars"], 1.0)
    loss = sums["loss_sum"] / chars
    return {"bits_per_char": loss / math.log(2), "loss": loss, "accuracy": sums["correct"] / chars,
            "chars": sums["chars"]}


def identity(config) -> dict:
    """What a resumed checkpoint must match."""
    return {"task": "charlm", "model": config.model.to_dict(), "seq_len": config.data.seq_len,
            "batch_size": config.batch_size, "seed": config.seed}


def load_params(workdir: str, model: CharLM, step: int | None = None):
    """The parameters of a training workdir's latest (or given) checkpoint, as host arrays.

    Only the parameters are read (not the optimizer state), so a run with another optimizer,
    sequence length or windows (the next phase, or sampling) can start from them; their shapes
    must match the model's.
    """
    step = checkpoints.latest_step(workdir) if step is None else step
    device = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                            nn.meta.unbox(shapes))
    params = checkpoints.restore_params(workdir, step, target=abstract)
    log.info("loaded parameters of step %d from %s", step, workdir)
    return jax.tree.map(np.asarray, params)


def build(config, workdir: str) -> Task:
    del workdir
    if config.get("tokenizer", "bytes") not in ("", "bytes"):
        raise ValueError(f"the char LM reads raw bytes: tokenizer must be 'bytes', got "
                         f"{config.tokenizer!r}")
    model_cfg = model_config(config)
    if model_cfg.vocab_size != VOCAB_SIZE:
        raise ValueError(f"the char LM reads bytes: model.vocab_size must be {VOCAB_SIZE}")
    model = CharLM(model_cfg)
    splits = split_corpus(read_corpus(config.data.path))
    log.info("char LM data %s: %s bytes", config.data.path or "<default corpus>",
             " / ".join(f"{k} {len(v):,}" for k, v in splits.items()))
    train, evals, info = make_datasets(
        config.data, splits, seed=config.seed, batch_size=config.batch_size,
        process_index=jax.process_index(), process_count=jax.process_count())

    def loss_fn(params, batch, rng):
        losses, _ = token_losses(model, params, batch["inputs"], batch["targets"], rng)
        loss_sum = jnp.sum(losses)
        return loss_sum, {"bits_per_char": loss_sum / math.log(2)}

    def eval_fn(params, batch):
        losses, correct = token_losses(model, params, batch["inputs"], batch["targets"])
        mask = batch["mask"].astype(jnp.float32)
        return {"loss_sum": jnp.sum(losses * mask), "chars": jnp.sum(mask),
                "correct": jnp.sum(correct * mask)}

    def initial_params():
        return load_params(config.init_from, model) if config.init_from else None

    shape = (config.batch_size, config.data.seq_len)
    return Task(
        model=model, train_data=train, eval_data=evals,
        batch_spec={"inputs": (shape, jnp.int32), "targets": (shape, jnp.int32)},
        weight_fn=lambda batch: jnp.sum(jnp.ones_like(batch["targets"])),
        loss_fn=loss_fn, eval_fn=eval_fn, summarize=summarize, identity=identity(config),
        initial_params=initial_params,
        info={"train bytes": len(splits["train"]), **info},
        data_files=((os.path.expanduser(config.data.path),) if config.data.path
                    else tuple(corpus.default_corpus_files())))
