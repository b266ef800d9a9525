"""Sequence classification on JSON lines `{"text", "label"}`: single-, multi-label or regression.

`config.data.problem` picks the kind: 'single_label' (label: one name or number from the label
set), 'multi_label' (label: a list of names) or 'regression' (label: a number). The label set is
`config.data.labels` (comma-separated) or, when empty, every label of the train file, sorted.
Inputs are `<s> text </s>`; texts longer than `data.seq_len` are cut at the end (the documents
this model is for usually fit whole: 4096 tokens for longformer-base). Global attention: `<s>`
(the reference's default for this head; 'none' also works). Metrics: accuracy and macro F1
(and with two labels `f1`, the binary F1 of the second: 'pos' of neg/pos, 'true' of false/true);
micro/macro F1 and subset accuracy (multi-label); MSE and Pearson's r (regression).
"""

from __future__ import annotations

import logging

import jax.numpy as jnp
import numpy as np

from longformer import global_attention, losses, metrics
from longformer.modeling import LongformerForSequenceClassification
from longformer.tasks import finetune, synthetic
from longformer.tasks.base import Task

log = logging.getLogger(__name__)

PROBLEMS = ("single_label", "multi_label", "regression")
_MODEL_PROBLEM = {"single_label": "single_label_classification",
                  "multi_label": "multi_label_classification", "regression": "regression"}


def _key(label) -> str:
    """Labels may be names or numbers in the file; "1" and 1 are the same label."""
    return str(label)


def label_set(config, records: list[dict], problem: str) -> list[str]:
    if problem == "regression":
        return []
    if config.data.labels:
        return [s.strip() for s in config.data.labels.split(",") if s.strip()]
    seen = set()
    for r in records:
        value = r.get("label")
        for v in (value if isinstance(value, list) else [value]):
            if isinstance(v, (str, int)) and not isinstance(v, bool):
                seen.add(_key(v))
    numeric = all(s.lstrip("-").isdigit() for s in seen)
    return sorted(seen, key=(lambda s: int(s)) if numeric else None)


def encode_labels(records: list[dict], labels: list[str], problem: str) -> np.ndarray:
    index = {name: i for i, name in enumerate(labels)}

    def one(rec, value):
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise finetune.DataError(f"{finetune.where(rec)}: label {value!r} must be a name or "
                                     "an integer")
        if _key(value) not in index:
            raise finetune.DataError(f"{finetune.where(rec)}: label {value!r} is not one of the "
                                     f"label set {labels}")
        return index[_key(value)]

    if problem == "single_label":
        return np.asarray([one(r, r["label"]) for r in records], np.int32)
    if problem == "multi_label":
        out = np.zeros((len(records), len(labels)), np.float32)
        for i, r in enumerate(records):
            value = finetune.field(r, "label", list, "a list of labels")
            out[i, [one(r, v) for v in value]] = 1.0
        return out
    return np.asarray([float(finetune.field(r, "label", (int, float), "a number"))
                       for r in records], np.float32)


def check_config(config) -> None:
    if config.data.problem not in PROBLEMS:
        raise ValueError(f"data.problem {config.data.problem!r} is not one of {PROBLEMS}")


def prepare(config, train_records: list[dict], eval_records: list[dict] | None) -> dict:
    """Checks every record's fields (before the label set is collected) -> the label set."""
    problem = config.data.problem
    for r in train_records + (eval_records or []):
        finetune.field(r, "text", str, "a string")
        finetune.field(r, "label", (str, int, float, list), "a label")
    labels = label_set(config, train_records, problem)
    if problem != "regression" and len(labels) < 2:
        raise finetune.DataError(f"{config.data.train_file or 'synthetic data'}: fewer than two "
                                 f"labels ({labels}); set data.labels or check data.problem")
    return {"labels": labels, "problem": problem}


def encode(config, tokenizer, records: list[dict], facts: dict, mode: str):
    """Model inputs and labels of every record (texts cut to data.seq_len tokens)."""
    texts = [finetune.field(r, "text", str, "a string") for r in records]
    for r in records:
        finetune.field(r, "label", (str, int, float, list), "a label")
    length = config.data.seq_len
    ids = np.full((len(texts), length), tokenizer.pad_token_id, np.int32)
    cut = 0
    for i, (tokens, _) in enumerate(finetune.encode_segments(tokenizer, texts)):
        cut += len(tokens) > length - 2
        tokens = tokens[:length - 2]
        ids[i, :len(tokens) + 2] = [tokenizer.bos_token_id, *tokens, tokenizer.eos_token_id]
    if cut:
        log.info("%d of %d texts are longer than %d tokens and were cut", cut, len(texts), length)
    attention = (ids != tokenizer.pad_token_id).astype(np.int32)
    global_mask = (global_attention.classification(ids) if mode == "cls"
                   else np.zeros_like(ids))
    return {"input_ids": ids, "attention_mask": attention, "global_attention_mask": global_mask,
            "label": encode_labels(records, facts["labels"], facts["problem"])}, None


def score(out, batch, facts: dict):
    """Per-example loss, hits and eval outputs (float32)."""
    problem = facts["problem"]
    logits = out.logits.astype(jnp.float32)
    label = batch["label"]
    terms, _ = losses.sequence_classification_terms(_MODEL_PROBLEM[problem], logits, label)
    loss = losses.per_example(terms)
    if problem == "single_label":
        hits = {"accuracy": (jnp.argmax(logits, -1) == label).astype(jnp.float32)}
    elif problem == "multi_label":
        hits = {"accuracy": jnp.all((logits > 0) == (label > 0.5), -1).astype(jnp.float32)}
    else:
        hits = {}
    return loss, hits, {"logits": logits, "loss": loss}


def summarize(outputs: list, *, config, facts: dict, evals) -> dict[str, float]:
    problem = facts["problem"]
    g = finetune.gather(outputs)
    truth = evals.rows["label"][g["index"]]
    result = {"loss": float(np.mean(g["loss"])), "examples": float(len(truth))}
    if problem == "single_label":
        predicted = g["logits"].argmax(-1)
        result.update(accuracy=metrics.accuracy(predicted, truth),
                      macro_f1=metrics.macro_f1(predicted, truth))
        if len(facts["labels"]) == 2:  # the second label is the positive class
            result["f1"] = metrics.binary_f1(predicted, truth, positive=1)
    elif problem == "multi_label":
        result.update(metrics.multilabel_scores(g["logits"] > 0, truth > 0.5))
    else:
        result.update(metrics.regression_scores(g["logits"][:, 0], truth))
    return result


def predict(outputs: list, *, config, facts: dict, evals) -> list[dict]:
    problem, labels = facts["problem"], facts["labels"]
    g = finetune.gather(outputs)
    out = []
    for i, logits in zip(g["index"], g["logits"]):
        rec = evals.records[i]
        row = {"id": finetune.example_id(rec, int(i)), "label": rec["label"]}
        if problem == "single_label":
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            row.update(predicted=labels[int(logits.argmax())],
                       probabilities={n: round(float(p), 6) for n, p in zip(labels, probs)})
        elif problem == "multi_label":
            probs = 1 / (1 + np.exp(-logits))
            row.update(predicted=[n for n, p in zip(labels, probs) if p > 0.5],
                       probabilities={n: round(float(p), 6) for n, p in zip(labels, probs)})
        else:
            row["predicted"] = float(logits[0])
        out.append(row)
    return out


SPEC = finetune.Spec(
    head=LongformerForSequenceClassification, default_global="cls",
    global_modes=("cls", "none"), budget_hint="classification needs 1 for <s>",
    synthetic=synthetic.classification,
    synthetic_options=lambda config: {"problem": config.data.problem},
    check_config=check_config, prepare=prepare, encode=encode, score=score,
    summarize=summarize, predict=predict,
    per_token=("input_ids", "attention_mask", "global_attention_mask"),  # labels may be as long
    model_fields=lambda facts: dict(num_labels=max(len(facts["labels"]), 1),
                                    problem_type=_MODEL_PROBLEM[facts["problem"]]),
    info=lambda facts: {"problem": facts["problem"], "labels": len(facts["labels"])})


def build(config, workdir: str) -> Task:
    return finetune.build(config, workdir, SPEC)
