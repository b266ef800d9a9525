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

import functools
import logging

import jax.numpy as jnp
import numpy as np
import optax

from longformer import metrics
from longformer.modeling import LongformerForTokenClassification
from longformer.tasks import finetune, init_from, synthetic
from longformer.tasks.base import Task

log = logging.getLogger(__name__)
IGNORE = -100


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


def encode(config, tokenizer, records: list[dict], tags: list[str], mode: str):
    """Window rows, and for each document and word the (row, position) that predicts it."""
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
    global_mask = np.zeros_like(ids)
    if mode == "cls":
        global_mask[:, 0] = 1
    return {"input_ids": ids, "attention_mask": (ids != tokenizer.pad_token_id).astype(np.int32),
            "global_attention_mask": global_mask,
            "labels": np.stack([lab for _, lab in rows])}, sources


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


def summarize(outputs: list, *, sources, records, tags) -> dict[str, float]:
    g = finetune.gather(outputs)
    predicted = word_predictions(outputs, sources, tags)
    pairs = [(r["tags"], p) for r, p in zip(records, predicted) if p is not None]
    gold, pred = [a for a, _ in pairs], [b for _, b in pairs]
    return {"loss": float(g["loss_sum"].sum() / max(g["tokens"].sum(), 1)),
            "examples": float(len(pairs)), **metrics.token_scores(gold, pred),
            **metrics.entity_scores(gold, pred)}


def predict(outputs: list, *, sources, records, tags) -> list[dict]:
    return [{"id": finetune.example_id(r, i), "tokens": r["tokens"], "tags": r["tags"],
             "predicted": p}
            for i, (r, p) in enumerate(zip(records, word_predictions(outputs, sources, tags)))
            if p is not None]


def build(config, workdir: str) -> Task:
    mode = finetune.global_mode(config, "none", ("none", "cls"))
    syn = config.data.synthetic
    make = functools.partial(synthetic.token_classification, num_words=syn.num_words,
                             max_distance=syn.max_distance,
                             entities_per_paragraph=syn.entities_per_paragraph)
    train_records = finetune.load_records(config, "train", make)
    eval_records = finetune.load_records(config, "eval", make)
    for r in train_records:
        check_record(r)
    tags = tag_set(config, train_records)
    tokenizer = finetune.load_tokenizer(config, workdir,
                                        lambda: synthetic.corpus(train_records))
    model_cfg = init_from.model_config(config, num_labels=len(tags))
    finetune.check_vocab(tokenizer, model_cfg)
    finetune.check_length(config, model_cfg)
    init_from.save_model_config(workdir, model_cfg)
    model = LongformerForTokenClassification(model_cfg)

    train_rows, _ = encode(config, tokenizer, train_records, tags, mode)
    eval_rows, sources = (None, None) if eval_records is None else encode(
        config, tokenizer, eval_records, tags, mode)
    finetune.check_global_budget(train_rows["global_attention_mask"], model_cfg,
                                 "global_attention='cls' needs 1")
    train_iter, eval_data = finetune.make_pipelines(config, train_rows, eval_rows)

    def token_losses(params, batch, rng):
        out = finetune.apply(model, params, batch, rng)
        logits = out.logits.astype(jnp.float32)
        labels = batch["labels"]
        labelled = (labels != IGNORE) & (batch["valid"][:, None] > 0)
        losses = optax.softmax_cross_entropy_with_integer_labels(
            logits, jnp.where(labelled, labels, 0))
        return logits, jnp.where(labelled, losses, 0.0), labelled

    def loss_fn(params, batch, rng):
        logits, losses, labelled = token_losses(params, batch, rng)
        correct = jnp.sum(labelled & (jnp.argmax(logits, -1) == batch["labels"]))
        return jnp.sum(losses), {"accuracy": correct}

    def eval_fn(params, batch):
        logits, losses, labelled = token_losses(params, batch, None)
        return {"index": batch["index"], "valid": batch["valid"],
                "predictions": jnp.argmax(logits, -1).astype(jnp.int32),
                "loss_sum": jnp.sum(losses, -1), "tokens": jnp.sum(labelled, -1)}

    return Task(
        model=model, train_data=train_iter, eval_data=eval_data,
        batch_spec=finetune.batch_spec(config, train_rows),
        weight_fn=lambda batch: jnp.sum((batch["labels"] != IGNORE) & (batch["valid"][:, None]
                                                                         > 0)),
        loss_fn=loss_fn, eval_fn=eval_fn,
        summarize=functools.partial(summarize, sources=sources, records=eval_records, tags=tags),
        predict=functools.partial(predict, sources=sources, records=eval_records, tags=tags),
        identity=finetune.identity(config, model_cfg, labels=tags),
        initial_params=init_from.init_fn(config, model, workdir),
        tokenizer=tokenizer,
        info={"tags": len(tags), "train documents": len(train_records),
              "train windows": len(train_rows["input_ids"]),
              "eval documents": 0 if eval_records is None else len(eval_records),
              "global attention": mode})
