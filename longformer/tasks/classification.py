"""Sequence classification on JSON lines `{"text", "label"}`: single-, multi-label or regression.

`config.data.problem` picks the kind: 'single_label' (label: one name or number from the label
set), 'multi_label' (label: a list of names) or 'regression' (label: a number). The label set is
`config.data.labels` (comma-separated) or, when empty, every label of the train file, sorted.
Inputs are `<s> text </s>`; texts longer than `data.seq_len` are cut at the end (the documents
this model is for usually fit whole: 4096 tokens for longformer-base). Global attention: `<s>`
(the reference's default for this head; 'none' also works). Metrics: accuracy and macro F1;
micro/macro F1 and subset accuracy (multi-label); MSE and Pearson's r (regression).
"""

from __future__ import annotations

import functools
import logging

import jax.numpy as jnp
import numpy as np
import optax

from longformer import metrics
from longformer.modeling import LongformerForSequenceClassification
from longformer.tasks import finetune, init_from, synthetic
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


def encode(config, tokenizer, records: list[dict], labels: list[str], problem: str,
           mode: str) -> dict[str, np.ndarray]:
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
    global_mask = np.zeros_like(ids)
    if mode == "cls":
        global_mask[:, 0] = 1
    return {"input_ids": ids, "attention_mask": attention, "global_attention_mask": global_mask,
            "label": encode_labels(records, labels, problem)}


def _per_example(problem: str, logits, label):
    """(loss, correct) per example, float32."""
    logits = logits.astype(jnp.float32)
    if problem == "single_label":
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, label)
        return loss, (jnp.argmax(logits, -1) == label).astype(jnp.float32)
    if problem == "multi_label":
        loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, label), -1)
        return loss, jnp.all((logits > 0) == (label > 0.5), -1).astype(jnp.float32)
    return (logits[:, 0] - label) ** 2, jnp.zeros_like(label)


def summarize(outputs: list, *, problem: str, gold: np.ndarray) -> dict[str, float]:
    g = finetune.gather(outputs)
    truth = gold[g["index"]]
    result = {"loss": float(np.mean(g["loss"])), "examples": float(len(truth))}
    if problem == "single_label":
        predicted = g["logits"].argmax(-1)
        result.update(accuracy=metrics.accuracy(predicted, truth),
                      macro_f1=metrics.macro_f1(predicted, truth))
    elif problem == "multi_label":
        result.update(metrics.multilabel_scores(g["logits"] > 0, truth > 0.5))
    else:
        result.update(metrics.regression_scores(g["logits"][:, 0], truth))
    return result


def predict(outputs: list, *, problem: str, labels: list[str], records: list[dict]) -> list[dict]:
    g = finetune.gather(outputs)
    out = []
    for i, logits in zip(g["index"], g["logits"]):
        rec = records[i]
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


def _synthetic(config):
    syn = config.data.synthetic
    return functools.partial(synthetic.classification, num_words=syn.num_words,
                             num_labels=syn.num_labels, problem=config.data.problem,
                             distractors=syn.distractors)


def build(config, workdir: str) -> Task:
    problem = config.data.problem
    if problem not in PROBLEMS:
        raise ValueError(f"data.problem {problem!r} is not one of {PROBLEMS}")
    mode = finetune.global_mode(config, "cls", ("cls", "none"))
    train_records = finetune.load_records(config, "train", _synthetic(config))
    eval_records = finetune.load_records(config, "eval", _synthetic(config))
    for r in train_records + (eval_records or []):  # before collecting the label set
        finetune.field(r, "text", str, "a string")
        finetune.field(r, "label", (str, int, float, list), "a label")
    labels = label_set(config, train_records, problem)
    if problem != "regression" and len(labels) < 2:
        raise finetune.DataError(f"{config.data.train_file or 'synthetic data'}: fewer than two "
                                 f"labels ({labels}); set data.labels or check data.problem")
    tokenizer = finetune.load_tokenizer(
        config, workdir, lambda: synthetic.corpus(train_records))
    model_cfg = init_from.model_config(
        config, num_labels=max(len(labels), 1), problem_type=_MODEL_PROBLEM[problem])
    finetune.check_vocab(tokenizer, model_cfg)
    finetune.check_length(config, model_cfg)
    init_from.save_model_config(workdir, model_cfg)
    model = LongformerForSequenceClassification(model_cfg)

    train_rows = encode(config, tokenizer, train_records, labels, problem, mode)
    eval_rows = (None if eval_records is None
                 else encode(config, tokenizer, eval_records, labels, problem, mode))
    finetune.check_global_budget(train_rows["global_attention_mask"], model_cfg,
                                 "classification needs 1 for <s>")
    train_iter, eval_data = finetune.make_pipelines(config, train_rows, eval_rows)

    def forward(params, batch, rng):
        out = finetune.apply(model, params, batch, rng)
        return out.logits.astype(jnp.float32)

    def loss_fn(params, batch, rng):
        loss, correct = _per_example(problem, forward(params, batch, rng), batch["label"])
        valid = batch["valid"].astype(jnp.float32)
        aux = {} if problem == "regression" else {"accuracy": jnp.sum(correct * valid)}
        return jnp.sum(loss * valid), aux

    def eval_fn(params, batch):
        logits = forward(params, batch, None)
        loss, _ = _per_example(problem, logits, batch["label"])
        return {"index": batch["index"], "valid": batch["valid"], "logits": logits, "loss": loss}

    gold = None if eval_rows is None else eval_rows["label"]
    return Task(
        model=model, train_data=train_iter, eval_data=eval_data,
        batch_spec=finetune.batch_spec(config, train_rows),
        weight_fn=lambda batch: jnp.sum(batch["valid"]),
        loss_fn=loss_fn, eval_fn=eval_fn,
        summarize=functools.partial(summarize, problem=problem, gold=gold),
        predict=functools.partial(predict, problem=problem, labels=labels,
                                  records=eval_records),
        identity=finetune.identity(config, model_cfg, labels=labels, problem=problem),
        initial_params=init_from.init_fn(config, model, workdir),
        tokenizer=tokenizer,
        info={"problem": problem, "labels": len(labels), "train examples": len(train_records),
              "eval examples": 0 if eval_records is None else len(eval_records),
              "global attention": mode})

