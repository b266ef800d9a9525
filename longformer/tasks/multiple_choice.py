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

import logging

import jax.numpy as jnp
import numpy as np

from longformer import global_attention, losses, metrics
from longformer.modeling import LongformerForMultipleChoice
from longformer.tasks import finetune, synthetic
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


def check_config(config) -> None:
    if not 0 < config.data.max_choice_tokens <= config.data.seq_len - 5:
        raise ValueError(f"data.max_choice_tokens={config.data.max_choice_tokens} must be in "
                         "[1, seq_len - 5]")


def prepare(config, train_records: list[dict], eval_records: list[dict] | None) -> dict:
    """Checks every record -> the number of choices per example (filler choices pad to it)."""
    records = train_records + (eval_records or [])
    for r in records:
        check_record(r)
    return {"num_choices": config.data.num_choices or max(len(r["choices"]) for r in records)}


def encode(config, tokenizer, records: list[dict], facts: dict, mode: str):
    """(batch, choices, seq_len) inputs, the choice mask and the labels."""
    num_choices, budget = facts["num_choices"], config.data.max_choice_tokens
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
    if cut:
        log.info("%d of %d (context, choice) inputs were cut to %d tokens", cut,
                 int(choice_mask.sum()), length)
    attention = (ids != tokenizer.pad_token_id).astype(np.int32)
    # Only real tokens of real choices count against the budget (filler choices are masked out).
    if mode == "cls":
        global_mask = global_attention.classification(ids)
    elif mode in ("default", "question"):
        global_mask = global_attention.multiple_choice(ids, sep) * attention
        if mode == "question":  # the question and the choice, not the final </s>
            global_mask *= ids != sep
    else:
        global_mask = np.zeros_like(ids)
    global_mask = global_mask * choice_mask[..., None]
    return {"input_ids": ids, "attention_mask": attention, "global_attention_mask": global_mask,
            "choice_mask": choice_mask, "label": labels}, None


def score(out, batch, facts: dict):
    """Per-example loss over the real choices (filler ones get no probability), and hits."""
    logits = jnp.where(batch["choice_mask"] > 0, out.logits.astype(jnp.float32), -1e9)
    loss, _ = losses.cross_entropy(logits, batch["label"])
    hits = {"accuracy": (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)}
    return loss, hits, {"logits": logits, "loss": loss}


def summarize(outputs: list, *, config, facts: dict, evals) -> dict[str, float]:
    g = finetune.gather(outputs)
    return {"loss": float(np.mean(g["loss"])), "examples": float(len(g["index"])),
            "accuracy": metrics.accuracy(g["logits"].argmax(-1), evals.rows["label"][g["index"]])}


def predict(outputs: list, *, config, facts: dict, evals) -> list[dict]:
    g = finetune.gather(outputs)
    out = []
    for i, logits in zip(g["index"], g["logits"]):
        rec = evals.records[i]
        scores = logits[:len(rec["choices"])]
        out.append({"id": finetune.example_id(rec, int(i)), "label": int(evals.rows["label"][i]),
                    "predicted": int(scores.argmax()),
                    "scores": [round(float(s), 6) for s in scores]})
    return out


SPEC = finetune.Spec(
    head=LongformerForMultipleChoice, default_global="default",
    global_modes=("default", "question", "cls", "none"),
    budget_hint="it must be data.max_choice_tokens + 1 (the question, choice and final </s> are "
                "global)",
    synthetic=synthetic.multiple_choice, check_config=check_config, prepare=prepare,
    encode=encode, score=score, summarize=summarize, predict=predict,
    info=lambda facts: {"choices": facts["num_choices"]},
    no_packing="each example is already one row per choice, (choices, seq_len)")


def build(config, workdir: str) -> Task:
    return finetune.build(config, workdir, SPEC)
