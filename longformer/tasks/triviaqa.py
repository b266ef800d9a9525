"""TriviaQA reading comprehension, Wikipedia setting, as the Longformer paper ran it (sec. 6.1,
appendix D), on the dataset's own files.

Files: `qa/wikipedia-{train,dev,test-without-answers}.json` (`{"Data": [{"Question",
"QuestionId", "Answer": {"Value", "Aliases", "NormalizedAliases", ...}, "EntityPages":
[{"Filename", "Title", ...}]}], "Domain": "Wikipedia", ...}`) and the evidence texts under
`evidence/wikipedia/<Filename>` (`data.evidence_dir`; by default `../evidence/wikipedia` from the
JSON file, the release's layout). A verified file (`"VerifiedEval": true`) keeps only the questions
marked `QuestionPartOfVerifiedEval`, as the official reader does.

* Records: one per (question, entity page), since each page is its own document; a missing
  evidence file stops the run naming the question and the file (the official conversion
  script crashes on it too).
* Answers: no span is annotated. Every occurrence in the document of every form of the answer
  (`Value`, `Aliases`, `NormalizedAliases`, `NormalizedValue`) is a target: case-insensitive
  like the authors' matching, but literal, as whole words (the authors' `re.finditer` also found
  "us" inside "campus") and with any whitespace between the alias's words. Many occurrences, one
  or none are all fine: the loss (`losses.distant_supervision_losses`, Clark and Gardner 2017)
  only needs one of them right. At most `data.max_answer_spans` per window (the authors' 64),
  the first in the text.
* Inputs: `<s> question </s></s> document-window </s>` with `<s>` and the question global (the
  paper: global attention on the question tokens), built by `qa.window_inputs`. The document is
  cut to its first `data.max_doc_tokens` tokens (the paper: 4096) and split into windows of
  `data.seq_len` overlapping by `data.window_overlap` tokens. Training leaves out windows in
  which no answer occurs (the authors keep them, but their loss is infinite and dropped, so
  they add no gradient there either); evaluation keeps every window of every record.
* Prediction, as the official Wikipedia evaluation keys it, per QUESTION: the best start + end
  logit span over all windows of all its pages (`qa.decode` per page, then the best page). The
  metrics are TriviaQA's EM and F1 (`metrics.triviaqa_scores`: max over the NormalizedAliases
  and HumanAnswers) over the questions that have answers; eval.py also writes
  `predictions_step_<step>.json`, `{QuestionId: answer}`, which the official
  `triviaqa_evaluation.py --dataset_file wikipedia-dev.json --prediction_file ...` reads.

Without files, a synthetic task in the same format (`synthetic_items`): each document names one
item of each of four categories, each item several times and in varying case, and the question
asks for one category.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
from typing import Callable, Iterable

import jax.numpy as jnp
import numpy as np

from longformer import files, losses, metrics
from longformer.modeling import LongformerForQuestionAnswering
from longformer.tasks import finetune, qa, synthetic
from longformer.tasks.base import Task

log = logging.getLogger(__name__)

_WHAT = ('TriviaQA JSON ({"Data": [{"Question", "QuestionId", "Answer", "EntityPages": '
         '[{"Filename"}]}], "Domain": "Wikipedia"})')
_ANSWER_FORMS = ("Value", "Aliases", "NormalizedValue", "NormalizedAliases")


# ----------------------------------------------------------------------------- reading
def _strings(rec: dict, answer: dict, key: str) -> list[str]:
    value = answer.get(key, [])
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise finetune.DataError(f"{finetune.where(rec)}: Answer.{key} must be a string or a list "
                                 f"of strings, got {str(value)[:80]!r}")
    return value


def question_records(item, source: str, pointer: str, evidence: Callable[[str], str]
                     ) -> list[dict]:
    """The records of one TriviaQA question (`pointer` in `source`), one per entity page.
    `evidence(filename)` gives a page's text (raising FileNotFoundError or
    files.FileFormatError when it cannot)."""
    if not isinstance(item, dict):
        raise finetune.DataError(f"{source} ({pointer}): {files.json_type(item)}, not a question "
                                 "object")
    qid = finetune.field({**item, "_where": f"{source} ({pointer})"}, "QuestionId", str,
                         "a string")
    pointer = f"{pointer}, QuestionId {qid!r}"
    where = f"{source} ({pointer})"
    item = {**item, "_where": where}
    question = finetune.field(item, "Question", str, "a string")
    if not question.strip():
        raise finetune.DataError(f"{where}: the question is empty")
    aliases, truths = [], None
    if "Answer" in item:  # the test set has none
        answer = finetune.field(item, "Answer", dict, "an object")
        aliases = [a for key in _ANSWER_FORMS for a in _strings(item, answer, key)]
        truths = metrics.triviaqa_ground_truths(
            {k: _strings(item, answer, k) for k in ("NormalizedAliases", "HumanAnswers")})
        if not truths:
            raise finetune.DataError(f"{where}: the Answer has no NormalizedAliases")
    out = []
    for j, page in enumerate(finetune.field(item, "EntityPages", list, "a list of pages")):
        here = f"{source} ({pointer}, EntityPages[{j}])"
        if not isinstance(page, dict):
            raise finetune.DataError(f"{here}: {files.json_type(page)}, not a page object")
        filename = finetune.field({**page, "_where": here}, "Filename", str, "a string")
        try:
            text = evidence(filename)
        except (FileNotFoundError, files.FileFormatError) as e:
            raise finetune.DataError(f"{here}: evidence file {filename!r}: {e}") from None
        out.append({"id": f"{qid}--{filename}", "question_id": qid, "question": question,
                    "context": text, "document": filename, "aliases": aliases,
                    "ground_truths": truths, "_where": here})
    return out


def _evidence_folder(path: str, evidence_dir: str) -> str:
    if evidence_dir:
        return evidence_dir
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), os.pardir,
                                         "evidence", "wikipedia"))


def _read_evidence(folder: str, filename: str) -> str:
    path = os.path.join(folder, filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing (set data.evidence_dir to the release's "
                                "evidence/wikipedia folder)")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise files.FileFormatError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})"
                                    ) from None


def read_wikipedia(path: str, evidence_dir: str = "") -> list[dict]:
    """The (question, page) records of a TriviaQA Wikipedia-setting JSON file."""
    doc = files.read_json(path, _WHAT)
    domain = doc.get("Domain", "Wikipedia")
    if domain != "Wikipedia":
        raise finetune.DataError(f"{path}: Domain is {domain!r}; only the Wikipedia setting is "
                                 "read here (the Web setting scores per question-document pair)")
    data = doc.get("Data")
    if not isinstance(data, list):
        got = "missing" if "Data" not in doc else files.json_type(data)
        raise finetune.DataError(f"{path}: \"Data\" is {got}; expected {_WHAT}")
    items = list(enumerate(data))
    if doc.get("VerifiedEval"):
        items = [(i, d) for i, d in items if isinstance(d, dict)
                 and d.get("QuestionPartOfVerifiedEval")]
    evidence = functools.lru_cache(maxsize=None)(
        functools.partial(_read_evidence, _evidence_folder(path, evidence_dir)))
    out, no_pages = [], 0
    for i, item in items:
        records = question_records(item, path, f"Data[{i}]", evidence)
        no_pages += not records
        out.extend(records)
    if no_pages:
        log.warning("%s: %d questions have no entity page: the official evaluation scores "
                    "them 0, these metrics leave them out", path, no_pages)
    return out


# ----------------------------------------------------------------------------- answers
def occurrences(text: str, aliases: Iterable[str]) -> list[tuple[int, int]]:
    """Sorted character spans [start, end) of every occurrence of every alias in `text`:
    case-insensitive, whole words only, any whitespace between an alias's words; each span once.
    """
    spans = set()
    for alias in {a.strip().lower() for a in aliases}:
        if not alias:
            continue
        pattern = r"\s+".join(re.escape(w) for w in alias.split())
        spans.update(m.span() for m in re.finditer(rf"(?<!\w){pattern}(?!\w)", text,
                                                   re.IGNORECASE))
    return sorted(spans)


def answer_tokens(text: str, offsets: np.ndarray, aliases: Iterable[str]
                  ) -> list[tuple[int, int]]:
    """(first, last) context tokens of every answer occurrence within the tokens kept."""
    end = int(offsets[-1, 1]) if len(offsets) else 0
    found = (qa.char_span_to_tokens(offsets, s, e) for s, e in occurrences(text[:end], aliases))
    return sorted({span for span in found if span is not None})


# ----------------------------------------------------------------------------- the task
def check_config(config) -> None:
    if config.data.max_answer_spans < 1:
        raise ValueError(f"data.max_answer_spans={config.data.max_answer_spans} must be >= 1")
    if config.data.max_doc_tokens < 0:
        raise ValueError(f"data.max_doc_tokens={config.data.max_doc_tokens} must be >= 0 "
                         "(0: the whole document)")


def prepare(config, train_records: list[dict], eval_records: list[dict] | None) -> dict:
    """Training needs answers; its records are marked, so that their answerless windows are left
    out (`encode` sees one split at a time)."""
    for r in train_records:
        if r["ground_truths"] is None:
            raise finetune.DataError(f"{finetune.where(r)}: no Answer (a test-set file?); "
                                     "training needs answers")
        r["_train"] = True
    return {}


def encode(config, tokenizer, records: list[dict], facts: dict, mode: str):
    """Window rows with up to `data.max_answer_spans` answer spans each (start_positions,
    end_positions: (rows, K), -1 padding), and (per row its record, per row the context offsets
    of its tokens, the records) for decoding."""
    cap, most = config.data.max_doc_tokens, config.data.max_answer_spans
    questions = finetune.encode_segments(tokenizer, [r["question"] for r in records])
    contexts = finetune.encode_segments(tokenizer, [r["context"] for r in records])
    if cap:
        contexts = [(ids[:cap], offsets[:cap]) for ids, offsets in contexts]
    answers = [answer_tokens(r["context"], offsets, r["aliases"])
               for r, (_, offsets) in zip(records, contexts)]
    rows, windows, offsets = qa.window_inputs(config, tokenizer, [q for q, _ in questions],
                                              contexts, mode)
    starts = np.full((len(windows), most), -1, np.int32)
    ends = np.full((len(windows), most), -1, np.int32)
    keep = np.ones(len(windows), bool)
    cut = 0
    for k, (i, ws, we, first) in enumerate(windows):
        inside = [(first + a - ws, first + b - ws) for a, b in answers[i] if ws <= a and b < we]
        cut += len(inside) > most
        inside = inside[:most]
        keep[k] = bool(inside) or not records[i].get("_train")
        if inside:
            starts[k, :len(inside)], ends[k, :len(inside)] = np.asarray(inside).T
    if cut:
        log.info("%d windows hold more than %d answer occurrences; the first %d are kept", cut,
                 most, most)
    if not keep.any():
        raise finetune.DataError(f"no answer occurs in any training window (the first record: "
                                 f"{finetune.where(records[0])})")
    rows.update(start_positions=starts, end_positions=ends)
    rows = {k: v[keep] for k, v in rows.items()}
    return rows, (windows[keep, 0], offsets[keep], records)


def _answered(batch):
    return jnp.any(batch["start_positions"] >= 0, axis=-1)


def score(out, batch, facts: dict):
    """Per-window distant-supervision loss (0 where no answer occurs) and hits (the best start
    and end are one listed span); the logits for decoding."""
    start, end = qa.real_logits(out, batch)
    spans_start, spans_end = batch["start_positions"], batch["end_positions"]
    loss = losses.distant_supervision_losses(start, end, spans_start, spans_end)
    hit = jnp.any((jnp.argmax(start, -1)[:, None] == spans_start)
                  & (jnp.argmax(end, -1)[:, None] == spans_end), axis=-1)
    return loss, {"span_accuracy": hit.astype(jnp.float32)}, {
        "start_logits": start, "end_logits": end, "loss": loss,
        "answered": _answered(batch).astype(jnp.int32)}


def weight(batch):
    """The loss and hits average over windows in which an answer occurs."""
    return jnp.sum(batch["valid"] * _answered(batch))


def answers(outputs: list, config, evals) -> tuple[dict, dict]:
    """({QuestionId: (score, text, best page's record)} for the questions all of whose windows
    were evaluated, gathered outputs)."""
    examples, offsets, records = evals.extra
    decoded, g = qa.decode(outputs, feature_example=examples, feature_offsets=offsets,
                           records=records, max_tokens=config.data.max_answer_tokens)
    best, partial = {}, set()
    for rec, d in zip(records, decoded):
        qid = rec["question_id"]
        if d is None:
            partial.add(qid)
        elif qid not in best or d[1] > best[qid][0]:
            best[qid] = (d[1], d[0], rec)
    return {q: v for q, v in best.items() if q not in partial}, g


def summarize(outputs: list, *, config, facts: dict, evals) -> dict[str, float]:
    best, g = answers(outputs, config, evals)
    scored = [(text, rec["ground_truths"]) for _, text, rec in best.values()
              if rec["ground_truths"] is not None]
    answered = g["answered"] > 0
    return {"loss": float(np.mean(g["loss"][answered])) if answered.any() else 0.0,
            "questions": float(len(scored)),
            **metrics.triviaqa_scores([t for t, _ in scored], [a for _, a in scored])}


def predict(outputs: list, *, config, facts: dict, evals) -> list[dict]:
    best, _ = answers(outputs, config, evals)
    return [{"id": qid, "question": rec["question"], "predicted": text, "document":
             rec["document"], "score": round(s, 6) if np.isfinite(s) else None,
             "answers": rec["ground_truths"]} for qid, (s, text, rec) in best.items()]


def official_predictions(rows: list[dict]) -> dict[str, str]:
    """eval.py's predictions as the official evaluation reads them: {QuestionId: answer} (the
    Wikipedia setting's key; the Web setting would key by QuestionId--Filename)."""
    return {r["id"]: r["predicted"] for r in rows}


# ----------------------------------------------------------------------------- synthetic data
def synthetic_items(n: int, seed: int, *, num_words: int = 300, num_categories: int = 4
                    ) -> tuple[list[dict], dict[str, str]]:
    """(TriviaQA `Data` items, {Filename: evidence text}): one or two pages per question, each
    naming one item of each category 1-3 times (as written, capitalised or upper case); the
    question asks for one category, and the answer's aliases are the item and its plural."""
    kinds = list(synthetic.CATEGORIES)[:num_categories]
    rng = np.random.default_rng(seed)
    items, texts = [], {}
    for i in range(n):
        picked = {k: str(rng.choice(synthetic.CATEGORIES[k])) for k in kinds}
        asked = str(rng.choice(kinds))
        pages = []
        for j in range(int(rng.integers(1, 3))):
            words = [str(w) for w in rng.choice(synthetic.FILLER, size=num_words)]
            mentions = [(k, int(rng.integers(3))) for k in kinds for _ in range(
                int(rng.integers(1, 4)))]
            slots = rng.choice(np.arange(0, num_words, 3), size=len(mentions), replace=False)
            for slot, (k, style) in zip(slots, mentions):
                words[slot] = (str.lower, str.title, str.upper)[style](picked[k])
            filename = f"Synthetic_{seed}_{i}_{j}.txt"
            texts[filename] = " ".join(words)
            pages.append({"Filename": filename, "Title": filename[:-4], "DocSource": "TagMe"})
        value = picked[asked]
        aliases = [value.title(), value.title() + "s"]
        answer = {"Value": value.title(), "Aliases": aliases, "Type": "WikipediaEntity",
                  "NormalizedValue": metrics.triviaqa_normalize(value),
                  "NormalizedAliases": [metrics.triviaqa_normalize(a) for a in aliases]}
        items.append({"Question": f"which {asked} ?", "QuestionId": f"syn_{seed}_{i}",
                      "QuestionSource": "synthetic", "Answer": answer, "EntityPages": pages,
                      "SearchResults": []})
    return items, texts


def synthetic_records(n: int, seed: int, **options) -> list[dict]:
    """The records of `synthetic_items`, read the way the files are."""
    items, texts = synthetic_items(n, seed, **options)
    return [r for i, item in enumerate(items)
            for r in question_records(item, "synthetic data", f"question {i}",
                                      texts.__getitem__)]


SPEC = finetune.Spec(
    head=LongformerForQuestionAnswering, default_global="question",
    global_modes=("question", "cls", "none"),
    budget_hint="it must be at least data.max_question_tokens + 1 (<s> and the question are "
                "global)",
    synthetic=synthetic_records, reader=read_wikipedia, check_config=check_config,
    prepare=prepare, encode=encode, score=score, weight=weight, summarize=summarize,
    predict=predict, model_fields=lambda facts: dict(num_labels=2), unit="question-page pairs",
    windowed=True, per_token=("input_ids", "attention_mask", "global_attention_mask"))


def build(config, workdir: str) -> Task:
    reader = functools.partial(read_wikipedia, evidence_dir=config.data.evidence_dir)
    return finetune.build(config, workdir, dataclasses.replace(SPEC, reader=reader))
