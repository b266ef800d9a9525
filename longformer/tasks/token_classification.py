"""Token classification (NER-style tagging) on JSON lines `{"tokens": [...], "tags": [...]}`.

Words are joined with single spaces and tokenized once; each word's label goes on its first
sub-token (the others are ignored, -100), found through the tokenizer's character offsets, so
accents, emoji and words that split into many pieces align exactly. A word that produces no
token (an empty or whitespace-only word) is predicted `O`.

Documents longer than one input are split into windows of `data.seq_len` (with `<s>`/`</s>`)
that overlap by `data.window_overlap` tokens; every window is a training example, and at
evaluation each word is predicted from the window where its first sub-token has the most
context on both sides. The tag set is `config.data.labels` or the train file's tags (`O`
first). No global attention by default (the reference's; `cls` is allowed). Metrics: word-level
accuracy and micro F1 over non-`O` tags, and seqeval-style entity precision/recall/F1 (BIO/IOBES).
"""

from __future__ import annotations

import logging

import jax.numpy as jnp
import numpy as np

from longformer import global_attention, losses, metrics
from longformer.modeling import LongformerForTokenClassification
from longformer.tasks import finetune, synthetic
from longformer.tasks.base import Task

log = logging.getLogger(__name__)
IGNORE = losses.IGNORE_INDEX


def tag_set(config, records: list[dict]) -> list[str]:
    if config.data.labels:
        return [s.strip() for s in config.data.labels.split(",") if s.strip()]
    seen = {t for r in records for t in r["tags"]}
    return sorted(seen, key=lambda t: (t != "O", t[2:], t))


def check_record(rec: dict) -> tuple[list[str], list[str]]:
    words = finetune.field(rec, "tokens", list, "a list of words")
    tags = finetune.field(rec, "tags", list, "a list of tags")
    if len(words) != len(tags):
        raise finetune.DataError(f"{finetune.where(rec)}: {len(words)} tokens but {len(tags)} "
                                 "tags")
    for name, values in (("tokens", words), ("tags", tags)):
        bad = [v for v in values if not isinstance(v, str)]
        if bad:
            raise finetune.DataError(f"{finetune.where(rec)}: {name} must be strings, got "
                                     f"{bad[0]!r}")
    return words, tags


def align(words: list[str], offsets: np.ndarray) -> np.ndarray:
    """For each token, the word its characters belong to (-1: between words or empty span).

    The text is `" ".join(words)`; `offsets` are the tokens' character spans in it.
    """
    owner = np.full(sum(len(w) for w in words) + max(len(words) - 1, 0), -1, np.int64)
    pos = 0
    for i, w in enumerate(words):
        owner[pos:pos + len(w)] = i
        pos += len(w) + 1
    out = np.full(len(offsets), -1, np.int64)
    for t, (a, b) in enumerate(offsets):
        if b > a:
            out[t] = owner[a]
    return out


def first_subtokens(word_of_token: np.ndarray) -> np.ndarray:
    """True where a token is the first piece of its word (words may hold spaces: "New York")."""
    first = np.zeros(len(word_of_token), bool)
    real = np.flatnonzero(word_of_token >= 0)
    _, at = np.unique(word_of_token[real], return_index=True)
    first[real[at]] = True
    return first


def prepare(config, train_records: list[dict], eval_records: list[dict] | None) -> dict:
    """Checks the train records (eval ones are checked as they are encoded) -> the tag set."""
    for r in train_records:
        check_record(r)
    return {"labels": tag_set(config, train_records)}


def encode(config, tokenizer, records: list[dict], facts: dict, mode: str):
    """Window rows, and for each document and word the (row, position) that predicts it."""
    tags = facts["labels"]
    index = {t: i for i, t in enumerate(tags)}
    docs = [check_record(r) for r in records]
    for rec, (_, word_tags) in zip(records, docs):
        for t in word_tags:
            if t not in index:
                raise finetune.DataError(f"{finetune.where(rec)}: tag {t!r} is not in the tag "
                                         f"set {tags}")
    length = config.data.seq_len
    size = length - 2
    rows, sources = [], []
    encoded = finetune.encode_segments(tokenizer, [" ".join(w) for w, _ in docs])
    for (words, word_tags), (ids, offsets) in zip(docs, encoded):
        owner = align(words, offsets)
        first = first_subtokens(owner)
        label = np.where(first, [index[word_tags[w]] if w >= 0 else IGNORE for w in owner],
                         IGNORE).astype(np.int32)
        best = {}  # word -> (context, row, position)
        for start, end in finetune.windows(len(ids), size, config.data.window_overlap):
            row = np.full(length, tokenizer.pad_token_id, np.int32)
            row[:end - start + 2] = [tokenizer.bos_token_id, *ids[start:end],
                                     tokenizer.eos_token_id]
            labels = np.full(length, IGNORE, np.int32)
            labels[1:end - start + 1] = label[start:end]
            for t in np.flatnonzero(first[start:end]) + start:
                context = min(t - start, end - 1 - t)
                if owner[t] not in best or context > best[owner[t]][0]:
                    best[owner[t]] = (context, len(rows), t - start + 1)
            rows.append((row, labels))
        sources.append([best.get(w, (0, -1, -1))[1:] for w in range(len(words))])
    ids = np.stack([r for r, _ in rows])
    global_mask = global_attention.classification(ids) if mode == "cls" else np.zeros_like(ids)
    return {"input_ids": ids, "attention_mask": (ids != tokenizer.pad_token_id).astype(np.int32),
            "global_attention_mask": global_mask,
            "labels": np.stack([lab for _, lab in rows])}, sources


def score(out, batch, facts: dict):
    """Per-token loss and hits (unlabelled tokens 0); per-row predictions and loss sums."""
    logits = out.logits.astype(jnp.float32)
    token_losses, labelled = losses.cross_entropy(logits, batch["labels"])
    predictions = jnp.argmax(logits, -1)
    return token_losses, {"accuracy": labelled & (predictions == batch["labels"])}, {
        "predictions": predictions.astype(jnp.int32), "loss_sum": jnp.sum(token_losses, -1),
        "tokens": jnp.sum(labelled, -1)}


def labelled_tokens(batch) -> jnp.ndarray:
    """The loss averages over the labelled tokens of the real rows."""
    return jnp.sum((batch["labels"] != IGNORE) & (batch["valid"][:, None] > 0))


def word_predictions(outputs: list, sources: list, tags: list[str]) -> list:
    """Predicted tags of every document whose windows were all evaluated (else None)."""
    g = finetune.gather(outputs)
    at = {int(i): k for k, i in enumerate(g["index"])}
    out = []
    for doc in sources:
        if any(r >= 0 and r not in at for r, _ in doc):
            out.append(None)
            continue
        out.append([tags[int(g["predictions"][at[r], p])] if r >= 0 else "O" for r, p in doc])
    return out


def summarize(outputs: list, *, config, facts: dict, evals) -> dict[str, float]:
    g = finetune.gather(outputs)
    predicted = word_predictions(outputs, evals.extra, facts["labels"])
    pairs = [(r["tags"], p) for r, p in zip(evals.records, predicted) if p is not None]
    gold, pred = [a for a, _ in pairs], [b for _, b in pairs]
    return {"loss": float(g["loss_sum"].sum() / max(g["tokens"].sum(), 1)),
            "examples": float(len(pairs)), **metrics.token_scores(gold, pred),
            **metrics.entity_scores(gold, pred)}


def predict(outputs: list, *, config, facts: dict, evals) -> list[dict]:
    predicted = word_predictions(outputs, evals.extra, facts["labels"])
    return [{"id": finetune.example_id(r, i), "tokens": r["tokens"], "tags": r["tags"],
             "predicted": p}
            for i, (r, p) in enumerate(zip(evals.records, predicted)) if p is not None]


SPEC = finetune.Spec(
    head=LongformerForTokenClassification, default_global="none", global_modes=("none", "cls"),
    budget_hint="global_attention='cls' needs 1", synthetic=synthetic.token_classification,
    prepare=prepare, encode=encode, score=score, summarize=summarize, predict=predict,
    weight=labelled_tokens,
    model_fields=lambda facts: dict(num_labels=len(facts["labels"])),
    info=lambda facts: {"tags": len(facts["labels"])}, unit="documents", windowed=True)


def build(config, workdir: str) -> Task:
    return finetune.build(config, workdir, SPEC)
