"""HotpotQA, distractor setting: answer (span, yes or no) and supporting sentences, one stage.

Files: HotpotQA's own JSON (`hotpot_train_v1.1.json`, `hotpot_dev_distractor_v1.json`): a list
of `{"_id", "question", "answer", "type", "level", "supporting_facts": [[title, sentence index],
...], "context": [[title, [sentence, ...]], ...]}` (or the same objects one per line, `.jsonl`).
Eval files may leave out `answer` and `supporting_facts` (the test set): their questions get
predictions and no scores. Errors name the file, the item and its `_id`.

Input, the paper's layout (Appendix D) with the tokenizer's own special tokens as the markers,
so nothing is added to the vocabulary (a pretrained embedding table fits as it is) and no text
can produce a marker (`encode_segments` drops specials from text):

    <s> question </s> <unk> title_1 </s> sent_1,1 </s> sent_1,2 </s> ... <unk> title_2 </s> ...

`<s>` is the paper's [CLS], `</s>` after the question its [/q], `<unk>` its paragraph-title
start <t>, the `</s>` after a title its </t> and the `</s>` after each sentence its [s] (BERT-
style: a segment end). Questions keep their first `data.max_question_tokens` tokens. What does
not fit in `data.seq_len` is left out whole, in document order: the row stops at the first
paragraph header or sentence (with its marker) that does not fit, or past `max_sentences`
sentence slots; left-out sentences are never predicted as supporting. Global attention
(`default`, the paper's): `<s>`, the question, its `</s>`, the `<unk>` paragraph markers and the
sentence markers; `question`: `<s>` and the question only; `none`.

Labels: the answer type (span / yes / no: an answer that normalises to yes or no); for a span,
the answer text's first occurrence in a supporting sentence, else in any sentence of the row
(exact string match; HotpotQA gives no positions). An answer found nowhere in the row trains the
type and supporting facts only. Supporting facts are per sentence and per paragraph (a paragraph
whose title a fact names). A fact naming a sentence the context lacks (the real data has some)
labels nothing, but stays in the gold set when scoring, as the official script keeps it.

Decoding: the type with the best logit; for a span, the best start + end logit within one
sentence, at most `data.max_answer_tokens` long, cut from the sentence through the tokens'
character offsets. Supporting facts, constrained as the paper does (after Groeneveld et al.
2020) to exactly two paragraphs: the two with the best paragraph logits, and in them every
sentence with a positive logit, or at least each one's best sentence. Metrics: the official
`hotpot_evaluate_v1.py`'s answer, supporting-fact and joint EM/F1/precision/recall (percent).
Predictions (eval.py's JSON lines) convert to the official `{"answer": {_id: text}, "sp": {_id:
[[title, index], ...]}}` with `python -m longformer.tasks.hotpotqa predictions.jsonl pred.json`.

This is the paper's second-stage model run over all ten paragraphs: the paper's first stage
(the same model, keeping at most 5 paragraphs scoring above -3.0) is not built here; the paper
says the two stages gain about 4.2 joint F1 over one.
"""

from __future__ import annotations

import json
import logging
import sys

import jax.numpy as jnp
import numpy as np

from longformer import files, losses, metrics
from longformer.modeling import HOTPOTQA_ANSWER_TYPES, NO_SCORE, LongformerForHotpotQA, hotpotqa_global_mask
from longformer.tasks import finetune, synthetic
from longformer.tasks.base import Task
from longformer.tasks.qa import char_span_to_tokens

log = logging.getLogger(__name__)
IGNORE = losses.IGNORE_INDEX
_FORMAT = ('HotpotQA JSON: a list of {"_id", "question", "answer", "supporting_facts", '
           '"context": [[title, [sentence, ...]], ...]}')


# ----------------------------------------------------------------------------- reading
def read_hotpot(path: str) -> list[dict]:
    """The question records of a HotpotQA .json file (a list) or of JSON lines (.jsonl)."""
    if path.endswith(".jsonl"):
        return finetune.read_jsonl(path)
    doc = files.read_json(path, _FORMAT, kind=list)
    for i, rec in enumerate(doc):
        if not isinstance(rec, dict):
            raise finetune.DataError(f"{path} (item {i}): {files.json_type(rec)}, not an object;"
                                     f" expected {_FORMAT}")
        rec["_where"] = f"{path} (item {i}, _id {rec.get('_id')!r})"
    return doc


def labelled(rec: dict) -> bool:
    return "answer" in rec or "supporting_facts" in rec


def check_record(rec: dict, need_labels: bool) -> None:
    """Validates one record's fields and shapes (DataError naming its file, item and _id)."""
    where = finetune.where(rec)
    finetune.field(rec, "_id", str, "a string")
    if not finetune.field(rec, "question", str, "a string").strip():
        raise finetune.DataError(f"{where}: the question is empty")
    context = finetune.field(rec, "context", list, "a list of [title, [sentence, ...]]")
    for p, para in enumerate(context):
        if not (isinstance(para, list) and len(para) == 2 and isinstance(para[0], str)
                and isinstance(para[1], list) and all(isinstance(s, str) for s in para[1])):
            raise finetune.DataError(f"{where}: context[{p}] must be [title, [sentence, ...]], "
                                     f"got {str(para)[:80]!r}")
    if not (need_labels or labelled(rec)):
        return
    finetune.field(rec, "answer", str, "a string")
    facts = finetune.field(rec, "supporting_facts", list, "a list of [title, sentence index]")
    for fact in facts:
        if not (isinstance(fact, list) and len(fact) == 2 and isinstance(fact[0], str)
                and isinstance(fact[1], int) and not isinstance(fact[1], bool) and fact[1] >= 0):
            raise finetune.DataError(f"{where}: supporting fact {fact!r} is not [title, "
                                     "sentence index]")


def prepare(config, train_records: list[dict], eval_records: list[dict] | None) -> dict:
    """Checks every record -> the slot counts (the data's largest, unless the config fixes them)."""
    for r in train_records:
        check_record(r, need_labels=True)
    for r in eval_records or []:
        check_record(r, need_labels=False)
    records = train_records + (eval_records or [])
    return {"max_sentences": config.data.max_sentences or max(
                sum(len(s) for _, s in r["context"]) for r in records),
            "max_paragraphs": max(len(r["context"]) for r in records)}


# ----------------------------------------------------------------------------- encoding
def answer_type(rec: dict) -> int:
    """0 span, 1 yes, 2 no (HOTPOTQA_ANSWER_TYPES); IGNORE without an answer."""
    if "answer" not in rec:
        return IGNORE
    closed = metrics.normalize_answer(rec["answer"])
    return HOTPOTQA_ANSWER_TYPES.index(closed) if closed in ("yes", "no") else 0


def encode(config, tokenizer, records: list[dict], facts: dict, mode: str):
    """One row per question: inputs, labels and the marker slots; beside them, per row the
    first token of each sentence slot (its last is the slot's marker - 1) and the tokenizer,
    with which decoding cuts a span's text from its sentence."""
    length, qmax = config.data.seq_len, config.data.max_question_tokens
    num_s, num_p = facts["max_sentences"], facts["max_paragraphs"]
    bos, sep, mark, pad = (tokenizer.bos_token_id, tokenizer.sep_token_id,
                           tokenizer.unk_token_id, tokenizer.pad_token_id)
    questions = finetune.encode_segments(tokenizer, [r["question"] for r in records])
    pieces = iter(finetune.encode_segments(
        tokenizer, [t for r in records for title, sents in r["context"] for t in [title, *sents]]))
    n = len(records)
    ids = np.full((n, length), pad, np.int32)
    s_pos, s_start, s_label = (np.full((n, num_s), v, np.int32) for v in (-1, -1, IGNORE))
    p_pos, p_label = (np.full((n, num_p), v, np.int32) for v in (-1, IGNORE))
    starts, ends = np.full(n, IGNORE, np.int32), np.full(n, IGNORE, np.int32)
    cut = lost_facts = not_found = 0
    for i, (rec, (q, _)) in enumerate(zip(records, questions)):
        gold = {tuple(f) for f in rec.get("supporting_facts", [])}
        row = [bos, *q[:qmax], sep]
        if len(row) > length:
            raise ValueError(f"data.seq_len={length} cannot hold a question of "
                             f"{len(row) - 2} tokens; lower data.max_question_tokens")
        sentences = []  # (slot, text, char offsets, first token, supporting?) of those in the row
        full = False
        for p, (title, sents) in enumerate(rec["context"]):
            title_ids, _ = next(pieces)
            encoded = [next(pieces) for _ in sents]
            if full or len(row) + len(title_ids) + 2 > length:
                full = True
                continue
            p_pos[i, p] = len(row)
            row += [mark, *title_ids, sep]
            for j, (text, (tokens, offsets)) in enumerate(zip(sents, encoded)):
                k = len(sentences)
                if full or k == num_s or len(row) + len(tokens) + 1 > length:
                    full = True
                    break
                s_start[i, k] = len(row)
                sentences.append((k, text, offsets, len(row), (title, j) in gold))
                row += [*tokens, sep]
                s_pos[i, k] = len(row) - 1
        cut += full
        ids[i, :len(row)] = row
        if labelled(rec):
            for k, *_, is_gold in sentences:
                s_label[i, k] = is_gold
            titles = {t for t, _ in gold}
            for p, (title, _) in enumerate(rec["context"]):
                if p_pos[i, p] >= 0:
                    p_label[i, p] = title in titles
            known = {(t, j) for t, sents in rec["context"] for j in range(len(sents))}
            lost_facts += len(gold - known)
        if answer_type(rec) == 0:
            span = _locate(rec["answer"], sentences)
            if span is None:
                not_found += 1
            else:
                starts[i], ends[i] = span
    if cut:
        log.info("%d of %d questions did not fit whole in %d tokens (or %d sentence slots): "
                 "their last sentences are left out", cut, n, length, num_s)
    if lost_facts:
        log.info("%d supporting facts name a sentence the context lacks: they label nothing "
                 "(and still count when scoring, as in the official script)", lost_facts)
    if not_found:
        log.info("%d span answers occur in no sentence of their row: trained on the answer type "
                 "and supporting facts only", not_found)
    attention = (ids != pad).astype(np.int32)
    if mode == "default":
        global_mask = hotpotqa_global_mask(ids, sep, s_pos, p_pos)
    elif mode == "question":
        global_mask = hotpotqa_global_mask(ids, sep, s_pos[:, :0], p_pos[:, :0])
    else:
        global_mask = np.zeros_like(ids)
    types = np.asarray([answer_type(r) for r in records], np.int32)
    rows = {"input_ids": ids, "attention_mask": attention, "global_attention_mask": global_mask,
            "start_positions": starts, "end_positions": ends, "answer_type": types,
            "sentence_positions": s_pos, "sentence_labels": s_label,
            "paragraph_positions": p_pos, "paragraph_labels": p_label}
    return rows, (s_start, tokenizer)


def _locate(answer: str, sentences: list) -> tuple[int, int] | None:
    """Row positions of the answer's first occurrence in a supporting sentence, else in any."""
    for want_gold in (True, False):
        for _, text, offsets, first, is_gold in sentences:
            at = text.find(answer)
            if at >= 0 and is_gold >= want_gold:
                span = char_span_to_tokens(offsets, at, at + len(answer))
                if span is not None:
                    return first + span[0], first + span[1]
    return None


# ----------------------------------------------------------------------------- decoding
def best_span(start: np.ndarray, end: np.ndarray, group: np.ndarray, max_tokens: int
              ) -> tuple[int, int]:
    """(start, end) of the best start + end logit with end >= start, at most max_tokens long,
    both in the same group (sentence); group -1 tokens are never part of a span."""
    best, where = -np.inf, (-1, -1)
    for d in range(min(max_tokens, len(start))):
        ok = (group[:len(group) - d] >= 0) & (group[:len(group) - d] == group[d:])
        scores = np.where(ok, start[:len(start) - d] + end[d:], -np.inf)
        i = int(np.argmax(scores))
        if scores[i] > best:
            best, where = scores[i], (i, i + d)
    return where


def supporting(sentence_logits: np.ndarray, paragraph_logits: np.ndarray,
               sentence_paragraph: np.ndarray) -> list[int]:
    """Sentence slots predicted supporting: within the two best paragraphs, every sentence
    with a positive logit, or else that paragraph's best sentence."""
    chosen = np.argsort(-paragraph_logits, kind="stable")[:2]
    out = []
    for p in chosen:
        if paragraph_logits[p] <= NO_SCORE / 2:  # an empty slot
            continue
        slots = np.flatnonzero(sentence_paragraph == p)
        if slots.size:
            keep = slots[sentence_logits[slots] > 0]
            out += list(keep if keep.size else slots[[np.argmax(sentence_logits[slots])]])
    return sorted(int(k) for k in out)


def decode(outputs: list, *, config, evals) -> tuple[dict, dict, dict]:
    """(answers {_id: text}, supporting facts {_id: [[title, index], ...]}, gathered outputs)
    of the eval rows that ran."""
    g = finetune.gather(outputs)
    s_start, tokenizer = evals.extra
    rows = evals.rows
    answers, facts, pending = {}, {}, []
    for k, i in enumerate(g["index"]):
        rec = evals.records[i]
        keys = [(p, title, j) for p, (title, sents) in enumerate(rec["context"])
                for j in range(len(sents))]
        used = rows["sentence_positions"][i] >= 0
        slot_paragraph = np.asarray([keys[s][0] for s in range(int(used.sum()))], np.int32)
        picked = supporting(g["sentence_logits"][k][:len(slot_paragraph)],
                            g["paragraph_logits"][k], slot_paragraph)
        facts[rec["_id"]] = [[keys[s][1], keys[s][2]] for s in picked]
        kind = HOTPOTQA_ANSWER_TYPES[int(np.argmax(g["type_logits"][k]))]
        if kind != "span":
            answers[rec["_id"]] = kind
            continue
        group = np.full(rows["input_ids"].shape[1], -1, np.int32)
        for s in range(len(slot_paragraph)):
            group[s_start[i, s]:rows["sentence_positions"][i, s]] = s
        a, b = best_span(g["start_logits"][k], g["end_logits"][k], group,
                         config.data.max_answer_tokens)
        if a < 0:
            answers[rec["_id"]] = ""
            continue
        s = group[a]
        _, title, j = keys[s]
        text = rec["context"][keys[s][0]][1][j]
        pending.append((rec["_id"], text, a - s_start[i, s], b - s_start[i, s]))
    encoded = finetune.encode_segments(tokenizer, [text for _, text, _, _ in pending])
    for (qid, text, a, b), (_, offsets) in zip(pending, encoded):
        answers[qid] = text[offsets[a, 0]:offsets[b, 1]]
    return answers, facts, g


# ----------------------------------------------------------------------------- task
def score(out, batch, facts: dict):
    """Per-question loss, answer-type hits; the logits for decoding."""
    loss = losses.hotpotqa_losses(
        out.start_logits, out.end_logits, out.type_logits, out.sentence_logits,
        out.paragraph_logits, batch["start_positions"], batch["end_positions"],
        batch["answer_type"], batch["sentence_labels"], batch["paragraph_labels"])
    hits = {"type_accuracy": (jnp.argmax(out.type_logits, -1) == batch["answer_type"]
                              ).astype(jnp.float32)}
    return loss, hits, {"start_logits": out.start_logits, "end_logits": out.end_logits,
                        "type_logits": out.type_logits, "sentence_logits": out.sentence_logits,
                        "paragraph_logits": out.paragraph_logits, "loss": loss}


def summarize(outputs: list, *, config, facts: dict, evals) -> dict[str, float]:
    answers, sp, g = decode(outputs, config=config, evals=evals)
    ran = {evals.records[i]["_id"] for i in g["index"]}
    gold = [r for r in evals.records if labelled(r) and r["_id"] in ran]
    return {"loss": float(np.mean(g["loss"])), "examples": float(len(gold)),
            **metrics.hotpot_scores(answers, sp, gold)}


def predict(outputs: list, *, config, facts: dict, evals) -> list[dict]:
    answers, sp, g = decode(outputs, config=config, evals=evals)
    return [{"_id": evals.records[i]["_id"], "answer": answers[evals.records[i]["_id"]],
             "sp": sp[evals.records[i]["_id"]], **({"gold_answer": evals.records[i]["answer"]}
                                                   if "answer" in evals.records[i] else {})}
            for i in g["index"]]


def official_predictions(predictions: list[dict]) -> dict:
    """predict's records -> the official prediction file's object."""
    return {"answer": {p["_id"]: p["answer"] for p in predictions},
            "sp": {p["_id"]: p["sp"] for p in predictions}}


# ----------------------------------------------------------------------------- synthetic data
def synthetic_records(n: int, seed: int, *, num_words: int = 4, num_paragraphs: int = 10,
                      num_sentences: int = 1) -> list[dict]:
    """Native-format questions over `num_paragraphs` paragraphs, each titled by a made-up name
    and holding `num_sentences` filler sentences of `num_words` words, `<name> likes <colour> .`
    and `<name> met <other name> .`, in random order. In two of them one sentence is replaced by
    the evidence: `the secret colour is <colour> .` and `the secret is kept|lost by <the first
    one's title> .`. Questions: "what is the secret colour ?" (span, half of them: the colour
    also occurs in the distractors' sentences) or "is the secret kept ?" (yes / no); the
    supporting facts are the two evidence sentences. A token sees its own sentence through its
    window, but `<s>`, which answers yes or no, sees the `kept`/`lost` far away only through
    global attention. (Made-up names as the only link between the paragraphs, as in real
    bridge questions, did not train beyond the priors in a few hundred steps of a demo model.)
    """
    def one(rng, i):
        names = [str(x) for x in rng.choice(synthetic.NAMES, size=num_paragraphs, replace=False)]
        context = []
        for k, name in enumerate(names):
            sents = [" ".join(synthetic._filler(rng, num_words)) + " ." for _ in
                     range(num_sentences)]
            sents += [f"{name} likes {rng.choice(synthetic.COLORS)} .",
                      f"{name} met {names[(k + 1 + int(rng.integers(num_paragraphs - 1))) % num_paragraphs]} ."]
            context.append([name, [sents[j] for j in rng.permutation(len(sents))]])
        first, second = (int(v) for v in rng.choice(num_paragraphs, size=2, replace=False))
        colour, kept = str(rng.choice(synthetic.COLORS)), bool(rng.integers(2))
        facts = []
        for p, text in ((first, f"the secret colour is {colour} ."),
                        (second, f"the secret is {'kept' if kept else 'lost'} by {names[first]} .")):
            j = int(rng.integers(len(context[p][1])))
            context[p][1][j] = text
            facts.append([names[p], j])
        span = bool(rng.integers(2))
        return {"_id": f"synthetic-{seed}-{i}",
                "question": "what is the secret colour ?" if span else "is the secret kept ?",
                "answer": colour if span else ("yes" if kept else "no"),
                "type": "bridge" if span else "comparison", "level": "easy",
                "supporting_facts": facts, "context": context}

    return synthetic._generate(n, seed, one)


SPEC = finetune.Spec(
    head=LongformerForHotpotQA, default_global="default",
    global_modes=("default", "question", "none"),
    budget_hint="it must hold <s>, the question (data.max_question_tokens) and its </s>, and one "
                "per paragraph and sentence marker",
    synthetic=synthetic_records, reader=read_hotpot, prepare=prepare, encode=encode,
    score=score, summarize=summarize, predict=predict, unit="questions",
    model_fields=lambda facts: dict(num_labels=len(HOTPOTQA_ANSWER_TYPES)),
    info=lambda facts: {"sentence slots": facts["max_sentences"],
                        "paragraph slots": facts["max_paragraphs"]},
    no_packing="a row's sentence and paragraph slots hold one question's",
    model_inputs=("sentence_positions", "paragraph_positions"))


def build(config, workdir: str) -> Task:
    return finetune.build(config, workdir, SPEC)


def main(argv: list[str]) -> None:
    """eval.py's predictions (JSON lines) -> the official prediction file."""
    if len(argv) != 3:
        raise SystemExit("usage: python -m longformer.tasks.hotpotqa predictions.jsonl pred.json")
    predictions = [json.loads(line) for line in open(argv[1], encoding="utf-8") if line.strip()]
    with open(argv[2], "w", encoding="utf-8") as f:
        json.dump(official_predictions(predictions), f, ensure_ascii=False)


if __name__ == "__main__":
    main(sys.argv)
