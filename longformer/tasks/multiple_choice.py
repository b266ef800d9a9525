"""Multiple choice on JSON lines `{"question", "context", "choices": [...], "label"}`.

`label` is the index of the right choice (or its text). Instead of one shared `context` a record
may give `contexts`, one per choice (evidence retrieved for each answer, or SWAG-style
endings). Each choice becomes one input

    <s> context </s></s> question choice </s>

with the context FIRST: the reference's default global attention for this head marks every token
after the `</s></s>` pair, so this layout makes the question and the choice global (what the
paper did for WikiHop) and keeps the global-token budget small however long the context is. The
question and choice keep their last `data.max_choice_tokens` tokens; with the default rule
`model.max_global_tokens` must be one more (the final `</s>` is global too). The context is cut
to fill `data.seq_len`. Modes: 'default' (that rule), 'question' (the question and choice
only), 'cls', 'none'. Examples with fewer choices than the most in the data get masked filler
choices. Metric: accuracy.
"""

from __future__ import annotations

import functools
import logging

import jax.numpy as jnp
import numpy as np
import optax

from longformer import metrics
from longformer.modeling import LongformerForMultipleChoice
from longformer.tasks import finetune, init_from, synthetic
from longformer.tasks.base import Task

log = logging.getLogger(__name__)


def check_record(rec: dict) -> int:
    """Validates one record; returns the label as an index."""
    finetune.field(rec, "question", str, "a string")
    choices = finetune.field(rec, "choices", list, "a list of strings")
    if len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise finetune.DataError(f"{finetune.where(rec)}: choices must be a list of at least two "
                                 f"strings, got {choices!r}")
    if "contexts" in rec:
        contexts = finetune.field(rec, "contexts", list, "a list of strings, one per choice")
        if len(contexts) != len(choices) or not all(isinstance(c, str) for c in contexts):
            raise finetune.DataError(f"{finetune.where(rec)}: contexts must be {len(choices)} "
                                     "strings, one per choice")
    else:
        finetune.field(rec, "context", str, "a string")
    label = finetune.field(rec, "label", (int, str), "a choice index or a choice's text")
    if isinstance(label, str):
        if label not in choices:
            raise finetune.DataError(f"{finetune.where(rec)}: label {label!r} is not one of the "
                                     f"choices {choices}")
        return choices.index(label)
    if not 0 <= label < len(choices):
        raise finetune.DataError(f"{finetune.where(rec)}: label {label} is outside the "
                                 f"{len(choices)} choices")
    return label


def _contexts(rec: dict) -> list[str]:
    """The context texts to encode: the shared one once, or one per choice."""
    return rec["contexts"] if "contexts" in rec else [rec["context"]]


def encode(config, tokenizer, records: list[dict], num_choices: int, budget: int, mode: str):
    """(batch, choices, seq_len) inputs, the choice mask and the labels."""
    length = config.data.seq_len
    labels = np.asarray([check_record(r) for r in records], np.int32)
    for r in records:
        if len(r["choices"]) > num_choices:
            raise finetune.DataError(f"{finetune.where(r)}: {len(r['choices'])} choices, more "
                                     f"than data.num_choices={num_choices}")
    firsts = iter(finetune.encode_segments(
        tokenizer, [c for r in records for c in _contexts(r)]))
    pairs = [f"{r['question']} {c}" for r in records for c in r["choices"]]
    seconds = iter(finetune.encode_segments(tokenizer, pairs))
    n = len(records)
    ids = np.full((n, num_choices, length), tokenizer.pad_token_id, np.int32)
    global_mask = np.zeros_like(ids)
    choice_mask = np.zeros((n, num_choices), np.int32)
    bos, sep = tokenizer.bos_token_id, tokenizer.sep_token_id
    cut = 0
    for i, rec in enumerate(records):
        shared = "contexts" not in rec
        context = next(firsts)[0] if shared else None
        for j in range(num_choices):
            if j >= len(rec["choices"]):  # filler choice, masked out of the softmax
                ids[i, j, :4] = [bos, sep, sep, sep]
                continue
            if not shared:
                context = next(firsts)[0]
            second = next(seconds)[0][-budget:]
            room = length - 4 - len(second)
            cut += len(context) > room
            first = context[:room]
            row = [bos, *first, sep, sep, *second, sep]
            ids[i, j, :len(row)] = row
            choice_mask[i, j] = 1
            start = len(first) + 3  # the first token after `</s></s>`
            if mode == "default":
                global_mask[i, j, start:len(row)] = 1
            elif mode == "question":
                global_mask[i, j, start:len(row) - 1] = 1
            elif mode == "cls":
                global_mask[i, j, 0] = 1
    if cut:
        log.info("%d of %d (context, choice) inputs were cut to %d tokens", cut,
                 int(choice_mask.sum()), length)
    return {"input_ids": ids, "attention_mask": (ids != tokenizer.pad_token_id).astype(np.int32),
            "global_attention_mask": global_mask, "choice_mask": choice_mask, "label": labels}


def summarize(outputs: list, *, gold: np.ndarray) -> dict[str, float]:
    g = finetune.gather(outputs)
    return {"loss": float(np.mean(g["loss"])), "examples": float(len(g["index"])),
            "accuracy": metrics.accuracy(g["logits"].argmax(-1), gold[g["index"]])}


def predict(outputs: list, *, records: list[dict], gold: np.ndarray) -> list[dict]:
    g = finetune.gather(outputs)
    out = []
    for i, logits in zip(g["index"], g["logits"]):
        rec = records[i]
        scores = logits[:len(rec["choices"])]
        out.append({"id": finetune.example_id(rec, int(i)), "label": int(gold[i]),
                    "predicted": int(scores.argmax()),
                    "scores": [round(float(s), 6) for s in scores]})
    return out


def build(config, workdir: str) -> Task:
    mode = finetune.global_mode(config, "default", ("default", "question", "cls", "none"))
    syn = config.data.synthetic
    make = functools.partial(synthetic.multiple_choice, num_words=syn.num_words,
                             num_choices=syn.num_choices)
    train_records = finetune.load_records(config, "train", make)
    eval_records = finetune.load_records(config, "eval", make)
    for r in train_records + (eval_records or []):
        check_record(r)
    num_choices = config.data.num_choices or max(
        len(r["choices"]) for r in train_records + (eval_records or []))
    tokenizer = finetune.load_tokenizer(config, workdir,
                                        lambda: synthetic.corpus(train_records))
    model_cfg = init_from.model_config(config)
    finetune.check_vocab(tokenizer, model_cfg)
    finetune.check_length(config, model_cfg)
    init_from.save_model_config(workdir, model_cfg)
    model = LongformerForMultipleChoice(model_cfg)
    budget = config.data.max_choice_tokens
    if not 0 < budget <= config.data.seq_len - 5:
        raise ValueError(f"data.max_choice_tokens={budget} must be in [1, seq_len - 5]")
    train_rows = encode(config, tokenizer, train_records, num_choices, budget, mode)
    eval_rows = (None if eval_records is None
                 else encode(config, tokenizer, eval_records, num_choices, budget, mode))
    finetune.check_global_budget(
        train_rows["global_attention_mask"], model_cfg,
        "it must be data.max_choice_tokens + 1 (the question, choice and final </s> are global)")
    train_iter, eval_data = finetune.make_pipelines(config, train_rows, eval_rows)

    def per_example(params, batch, rng):
        out = finetune.apply(model, params, batch, rng)
        logits = jnp.where(batch["choice_mask"] > 0, out.logits.astype(jnp.float32), -1e9)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        return logits, loss

    def loss_fn(params, batch, rng):
        logits, loss = per_example(params, batch, rng)
        valid = batch["valid"].astype(jnp.float32)
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        return jnp.sum(loss * valid), {"accuracy": jnp.sum(correct * valid)}

    def eval_fn(params, batch):
        logits, loss = per_example(params, batch, None)
        return {"index": batch["index"], "valid": batch["valid"], "logits": logits, "loss": loss}

    gold = None if eval_rows is None else eval_rows["label"]
    return Task(
        model=model, train_data=train_iter, eval_data=eval_data,
        batch_spec=finetune.batch_spec(config, train_rows),
        weight_fn=lambda batch: jnp.sum(batch["valid"]),
        loss_fn=loss_fn, eval_fn=eval_fn,
        summarize=functools.partial(summarize, gold=gold),
        predict=functools.partial(predict, records=eval_records, gold=gold),
        identity=finetune.identity(config, model_cfg, num_choices=num_choices),
        initial_params=init_from.init_fn(config, model, workdir),
        tokenizer=tokenizer,
        info={"choices": num_choices, "train examples": len(train_records),
              "eval examples": 0 if eval_records is None else len(eval_records),
              "global attention": mode})
