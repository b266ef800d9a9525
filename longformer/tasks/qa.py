"""Extractive question answering on SQuAD-format JSON, or JSON lines (also TriviaQA-style).

Files: SQuAD's `{"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers":
[{"text", "answer_start"}]}]}]}]}`, or one JSON object per line `{"id", "question", "context",
"answers"}` where `answers` is a list of `{"text", "answer_start"}`, the Hugging Face
`{"text": [...], "answer_start": [...]}`, or a list of strings without positions (TriviaQA's
aliases): those are looked up in the context, and only the ones found are trained on; all count
when scoring. An answer whose `answer_start` does not point at its text, or a question none of
whose answers occurs in its context, is an error naming the file and line. Unanswerable
questions (SQuAD 2.0) are not supported.

Inputs are `<s> question </s></s> context-window </s>`: questions keep their first
`data.max_question_tokens` tokens, and a context longer than what is left of `data.seq_len` is
split into windows overlapping by `data.window_overlap` tokens. A training window whose context
does not hold the whole answer points at `<s>` (position 0), as in Hugging Face's run_qa. At
evaluation the answer is the span with the best start + end logit over all windows of the
question, within the context, at most `data.max_answer_tokens` long; its text is cut from the
context through the tokens' character offsets. Global attention: `<s>` and the question (the
reference's default), or 'cls' / 'none'. Metrics: SQuAD v1.1 exact match and F1 (percent).
"""

from __future__ import annotations

import json
import logging

import jax.numpy as jnp
import numpy as np

from longformer import files, global_attention, losses, metrics, packing
from longformer.modeling import LongformerForQuestionAnswering
from longformer.tasks import finetune, synthetic
from longformer.tasks.base import Task

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- reading
def _line(raw: str, needle: str, start: int) -> tuple[int, int]:
    """(line number, index) of `needle` in raw at or after `start` (best effort)."""
    at = raw.find(needle, start)
    if at < 0:
        return 0, start
    return raw.count("\n", 0, at) + 1, at


_SQUAD = 'SQuAD-format JSON ({"data": [{"paragraphs": [{"context", "qas"}]}]}) or JSON lines'


def _listed(path: str, parent: dict, key: str, pointer: str) -> list:
    value = parent.get(key)
    if not isinstance(value, list):
        got = "missing" if key not in parent else f"{files.json_type(value)}, not a list"
        name = f"{pointer}.{key}" if pointer else key
        raise finetune.DataError(f"{path}: {name} is {got}; expected {_SQUAD}")
    return value


def _object(path: str, value, pointer: str) -> dict:
    if not isinstance(value, dict):
        raise finetune.DataError(f"{path}: {pointer} is {files.json_type(value)}, not an "
                                 f"object; expected {_SQUAD}")
    return value


def read_squad(path: str) -> list[dict]:
    """Flat question records from a SQuAD-format .json file, a JSON list, or JSON lines."""
    if path.endswith(".jsonl"):
        return finetune.read_jsonl(path)
    raw = files.read_text(path, _SQUAD)
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as e:
        first = next(line for line in raw.splitlines() if line.strip())
        try:
            json.loads(first)
        except ValueError:  # not JSON lines either: the whole-file error says where it broke
            raise finetune.DataError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: "
                                     f"{e.msg}); expected {_SQUAD}") from None
        return finetune.read_jsonl(path)  # JSON lines under another name
    if isinstance(doc, list):
        for i, rec in enumerate(doc):
            _object(path, rec, f"item {i}")["_where"] = f"{path} (item {i})"
        return doc
    if not isinstance(doc, dict) or "data" not in doc:
        raise finetune.DataError(f"{path}: a SQuAD file needs a top-level \"data\" list; it holds "
                                 f"{files.json_type(doc)}" + (f" with keys {sorted(doc)[:8]}"
                                                               if isinstance(doc, dict) else ""))
    out, cursor = [], 0
    for i, article in enumerate(_listed(path, doc, "data", "")):
        article = _object(path, article, f"data[{i}]")
        for j, para in enumerate(_listed(path, article, "paragraphs", f"data[{i}]")):
            where = f"data[{i}].paragraphs[{j}]"
            para = _object(path, para, where)
            context = para.get("context")
            if not isinstance(context, str):
                got = "missing" if "context" not in para else files.json_type(context)
                raise finetune.DataError(f"{path}: {where}.context is {got}; expected the "
                                         "paragraph's text (a string)")
            for k, qa in enumerate(_listed(path, para, "qas", where)):
                pointer = f"{where}.qas[{k}]"
                qa = _object(path, qa, pointer)
                line = 0
                if "id" in qa:
                    line, cursor = _line(raw, json.dumps(qa["id"]), cursor)
                rec = {**qa, "_where": f"{path}:{line} ({pointer}, id {qa.get('id')!r})"
                       if line else f"{path} ({pointer})"}
                rec["context"] = context
                out.append(rec)
    return out


def answer_spans(rec: dict) -> tuple[list[str], list[tuple[int, int]]]:
    """Validates a record: (every gold answer text, char spans of those found in the context)."""
    where = finetune.where(rec)
    question = finetune.field(rec, "question", str, "a string")
    context = finetune.field(rec, "context", str, "a string")
    if not question.strip():
        raise finetune.DataError(f"{where}: the question is empty")
    if rec.get("is_impossible"):
        raise finetune.DataError(f"{where}: unanswerable questions (SQuAD 2.0) are not supported")
    answers = finetune.field(rec, "answers", (list, dict), "a list of answers")
    if isinstance(answers, dict):  # {"text": [...], "answer_start": [...]}
        texts = answers.get("text") or []
        starts = answers.get("answer_start") or [None] * len(texts)
        answers = [{"text": t, "answer_start": s} for t, s in zip(texts, starts)]
    if not answers:
        raise finetune.DataError(f"{where}: no answers (unanswerable questions are not "
                                 "supported)")
    golds, spans = [], []
    for a in answers:
        text, start = (a, None) if isinstance(a, str) else (
            (a.get("text"), a.get("answer_start")) if isinstance(a, dict) else (None, None))
        if not isinstance(text, str) or not text.strip():
            raise finetune.DataError(f"{where}: answer {a!r} has no text")
        golds.append(text)
        if start is not None:
            if not isinstance(start, int) or isinstance(start, bool) or start < 0:
                raise finetune.DataError(f"{where}: answer_start {start!r} is not a character "
                                         "position")
            if start + len(text) > len(context):
                raise finetune.DataError(
                    f"{where}: answer {text!r} at answer_start={start} runs past the end of "
                    f"the context ({len(context)} characters)")
            if context[start:start + len(text)] != text:
                raise finetune.DataError(
                    f"{where}: answer {text!r} is not at answer_start={start} in the context "
                    f"(found {context[start:start + len(text)]!r})")
            spans.append((start, start + len(text)))
        else:
            at = context.find(text)
            if at >= 0:
                spans.append((at, at + len(text)))
    if not spans:
        raise finetune.DataError(f"{where}: no answer occurs in the context (answers: "
                                 f"{golds[:5]})")
    return golds, spans


# ----------------------------------------------------------------------------- features
def char_span_to_tokens(offsets: np.ndarray, start: int, end: int) -> tuple[int, int] | None:
    """First and last token whose characters overlap [start, end), or None."""
    a, b = offsets[:, 0], offsets[:, 1]
    hit = np.flatnonzero((b > a) & (b > start) & (a < end))
    return (int(hit[0]), int(hit[-1])) if hit.size else None


def window_inputs(config, tokenizer, questions: list[np.ndarray],
                  contexts: list[tuple[np.ndarray, np.ndarray]], mode: str):
    """`<s> question </s></s> context-window </s>` rows for every window of every record: the one
    layout of the extractive QA tasks, so their inputs and global attention never differ.

    `questions` are token ids, `contexts` (ids, character offsets) per record (`encode_segments`).
    Returns (rows: input_ids, attention_mask, global_attention_mask; windows: (rows, 4) int
    record, first and one-past-last context token, row position of the first; offsets: (rows,
    seq_len, 2) the context character offsets of each row's tokens, -1 elsewhere).
    """
    length = config.data.seq_len
    qmax = config.data.max_question_tokens
    bos, sep, pad = tokenizer.bos_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    ids, spans, offsets_out = [], [], []
    cut = 0
    for i, (q, (c, offsets)) in enumerate(zip(questions, contexts)):
        cut += len(q) > qmax
        q = q[:qmax]
        room = length - len(q) - 4
        if room < 1:
            raise ValueError(f"data.seq_len={length} leaves no room for the context after a "
                             f"question of {len(q)} tokens")
        first = len(q) + 3
        for ws, we in finetune.windows(len(c), room, config.data.window_overlap):
            row = np.full(length, pad, np.int32)
            row[:first + we - ws + 1] = [bos, *q, sep, sep, *c[ws:we], sep]
            offs = np.full((length, 2), -1, np.int32)
            offs[first:first + we - ws] = offsets[ws:we]
            ids.append(row)
            spans.append((i, ws, we, first))
            offsets_out.append(offs)
    if cut:
        log.info("%d of %d questions were cut to %d tokens", cut, len(questions), qmax)
    ids = np.stack(ids)
    if mode == "question":
        global_mask = global_attention.question_answering(ids, sep)
    elif mode == "cls":
        global_mask = global_attention.classification(ids)
    else:
        global_mask = np.zeros_like(ids)
    rows = {"input_ids": ids, "attention_mask": (ids != pad).astype(np.int32),
            "global_attention_mask": global_mask}
    return rows, np.asarray(spans, np.int64).reshape(-1, 4), np.stack(offsets_out)


def encode(config, tokenizer, records: list[dict], facts: dict, mode: str):
    """Window rows and (per row its example, per row the context offsets of its tokens (-1
    elsewhere), per record its gold answers)."""
    checked = [answer_spans(r) for r in records]
    questions = finetune.encode_segments(tokenizer, [r["question"] for r in records])
    contexts = finetune.encode_segments(tokenizer, [r["context"] for r in records])
    answers = []
    for rec, (_, offsets), (_, spans) in zip(records, contexts, checked):
        answer = char_span_to_tokens(offsets, *spans[0])
        if answer is None:
            raise finetune.DataError(f"{finetune.where(rec)}: the answer at characters "
                                     f"{spans[0]} covers no token of the context")
        answers.append(answer)
    rows, windows, offsets = window_inputs(config, tokenizer, [q for q, _ in questions],
                                           contexts, mode)
    starts, ends = np.zeros(len(windows), np.int32), np.zeros(len(windows), np.int32)
    for k, (i, ws, we, first) in enumerate(windows):
        a, b = answers[i]
        if ws <= a and b < we:  # else the window points at <s> (position 0)
            starts[k], ends[k] = first + a - ws, first + b - ws
    rows.update(start_positions=starts, end_positions=ends)
    return rows, (windows[:, 0], offsets, [g for g, _ in checked])


def best_span(start_logits: np.ndarray, end_logits: np.ndarray, offsets: np.ndarray,
              max_tokens: int) -> tuple[float, int, int]:
    """(score, start, end) of the best context span of at most max_tokens tokens (end >= start)."""
    ok = offsets[:, 1] > offsets[:, 0]
    s = np.where(ok, start_logits, -np.inf)
    e = np.where(ok, end_logits, -np.inf)
    best = (-np.inf, -1, -1)
    for d in range(min(max_tokens, len(s))):
        scores = s[:len(s) - d] + e[d:]
        i = int(np.argmax(scores))
        if scores[i] > best[0]:
            best = (float(scores[i]), i, i + d)
    return best


def decode(outputs: list, *, feature_example, feature_offsets, records, max_tokens):
    """Per question whose windows were all evaluated: (predicted text, score); else None."""
    g = finetune.gather(outputs)
    seen = np.zeros(len(feature_example), bool)
    seen[g["index"]] = True
    complete = np.ones(len(records), bool)
    np.logical_and.at(complete, feature_example, seen)
    best = [(-np.inf, "") for _ in records]
    for k, f in enumerate(g["index"]):
        i = feature_example[f]
        score, s, e = best_span(g["start_logits"][k], g["end_logits"][k], feature_offsets[f],
                                max_tokens)
        if s >= 0 and score > best[i][0]:
            offs = feature_offsets[f]
            best[i] = (score, records[i]["context"][offs[s, 0]:offs[e, 1]])
    return [(text, score) if ok else None for ok, (score, text) in zip(complete, best)], g


def real_logits(out, batch):
    """(start, end) logits in float32 with padding at NO_SCORE: padding is no answer, so a
    window's softmax is the same however much padding its row has (alone, packed with others,
    or cut to a length bucket). The head's own `loss` keeps the reference's softmax over the
    whole row."""
    real = batch["attention_mask"] > 0
    return (jnp.where(real, out.start_logits.astype(jnp.float32), packing.NO_SCORE),
            jnp.where(real, out.end_logits.astype(jnp.float32), packing.NO_SCORE))


def score(out, batch, facts: dict):
    """Per-window loss (padding left out: `real_logits`) and whole-span hits; the logits for
    decoding."""
    start, end = real_logits(out, batch)
    loss = losses.question_answering_losses(start, end, batch["start_positions"],
                                            batch["end_positions"])
    exact = ((jnp.argmax(start, -1) == batch["start_positions"])
             & (jnp.argmax(end, -1) == batch["end_positions"])).astype(jnp.float32)
    return loss, {"span_accuracy": exact}, {"start_logits": start, "end_logits": end,
                                            "loss": loss}


def _decoded(outputs: list, config, evals):
    feature_example, feature_offsets, golds = evals.extra
    decoded, g = decode(outputs, feature_example=feature_example, feature_offsets=feature_offsets,
                        records=evals.records, max_tokens=config.data.max_answer_tokens)
    return decoded, golds, g


def summarize(outputs: list, *, config, facts: dict, evals) -> dict[str, float]:
    decoded, golds, g = _decoded(outputs, config, evals)
    pairs = [(p[0], gold) for p, gold in zip(decoded, golds) if p is not None]
    return {"loss": float(np.mean(g["loss"])), "examples": float(len(pairs)),
            **metrics.squad_scores([p for p, _ in pairs], [a for _, a in pairs])}


def predict(outputs: list, *, config, facts: dict, evals) -> list[dict]:
    decoded, golds, _ = _decoded(outputs, config, evals)
    return [{"id": finetune.example_id(r, i), "question": r["question"], "predicted": p[0],
             "score": round(p[1], 6), "answers": gold}
            for i, (r, p, gold) in enumerate(zip(evals.records, decoded, golds)) if p is not None]


SPEC = finetune.Spec(
    head=LongformerForQuestionAnswering, default_global="question",
    global_modes=("question", "cls", "none"),
    budget_hint="it must be at least data.max_question_tokens + 1 (<s> and the question are "
                "global)",
    synthetic=synthetic.question_answering, reader=read_squad, encode=encode, score=score,
    summarize=summarize, predict=predict, model_fields=lambda facts: dict(num_labels=2),
    unit="questions", windowed=True)


def build(config, workdir: str) -> Task:
    return finetune.build(config, workdir, SPEC)
