"""WikiHop (QAngaroo v1.1) as the paper ran it: every answer candidate scored from its marker.

Files: `qangaroo_v1.1/wikihop/{train,dev}.json`, each one JSON list of `{"id", "query",
"answer", "candidates": [...], "supports": [...]}`. The query is a relation and a subject
("country_of_citizenship john smith"); it is read as it stands, underscores included, as the
authors' script did. The answer must be one of the candidates (else a DataError naming the file,
the record and its id). Every text gets the authors' clean-up (no space before `. , ! ? )` or
`'s`, none after `(`, single spaces) and a leading space, so a candidate's tokens are those of
its mentions inside a sentence.

Each example becomes `data.max_chunks` rows of `data.seq_len` tokens. A row is the prefix

    <s> query </s> <mask> candidate 1 <mask> candidate 2 ... <mask> candidate N

followed by as much of `</s> support 1 </s></s> support 2 </s> ...` as fits; the next row
repeats the prefix with the next stretch of the supports, until they are used up (later ones are
dropped, with a log line: raise `data.max_chunks`). Missing chunks are filler rows. The paper
writes `<s> [q] question [/q] [ent] candidate [/ent] ...` with four tokens added to RoBERTa's
vocabulary; here the markers are tokens every RoBERTa vocabulary already has and no text
produces: `</s>` closes the question and `<mask>` opens each candidate (the one read for its
score); `[q]` is `<s>` itself and `[/ent]` is left out (the next marker or the supports' `</s>`
ends a candidate, and leaving it out saves a global token per candidate). So the pretrained
vocabulary and embedding table are used as they are (new tokens would need new embedding rows,
which `init_from` does not make). Global attention: the whole prefix (the
authors'), or 'none'; `model.max_global_tokens` must hold the longest prefix.

The model is `LongformerForCandidateScoring`: a linear layer on the marker's final state gives a
logit per candidate and chunk, averaged over the example's chunks (the paper's rule; the
authors' script summed them, which picks the same answer), then one softmax over the real
candidates (`data.max_candidates` slots, the filler ones masked) and cross-entropy with the
answer. Metric: accuracy. Predictions: one JSON line per question with its scores;
`python -m longformer.tasks.wikihop predictions.jsonl > dev_predictions.json` writes the
leaderboard's `{id: answer}` file.
"""

from __future__ import annotations

import json
import logging
import re
import sys

import jax.numpy as jnp
import numpy as np

from longformer import files, losses, metrics
from longformer.modeling import LongformerForCandidateScoring
from longformer.tasks import finetune, synthetic
from longformer.tasks.base import Task

log = logging.getLogger(__name__)

_FORMAT = ('a QAngaroo WikiHop JSON file (a list of {"id", "query", "answer", "candidates", '
           '"supports"})')


# ----------------------------------------------------------------------------- reading
def read_wikihop(path: str) -> list[dict]:
    """The records of one WikiHop file, each tagged with `_where` = 'path (record i, id ...)'."""
    records = files.read_json(path, _FORMAT, kind=list)
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise finetune.DataError(f"{path}: record {i} is {files.json_type(rec)}, not an "
                                     f"object; expected {_FORMAT}")
        rec["_where"] = f"{path} (record {i}, id {rec.get('id')!r})"
    return records


def check_record(rec: dict) -> int:
    """Validates one record; returns the answer's index among its candidates."""
    where = finetune.where(rec)
    finetune.field(rec, "id", (str, int), "a string")
    if not finetune.field(rec, "query", str, "a string").strip():
        raise finetune.DataError(f"{where}: the query is empty")
    candidates = finetune.field(rec, "candidates", list, "a list of strings")
    if len(candidates) < 2 or not all(isinstance(c, str) and c.strip() for c in candidates):
        raise finetune.DataError(f"{where}: candidates must be at least two non-empty strings, "
                                 f"got {candidates[:8]!r}")
    supports = finetune.field(rec, "supports", list, "a list of strings")
    if not all(isinstance(s, str) for s in supports):
        raise finetune.DataError(f"{where}: supports must be strings")
    answer = finetune.field(rec, "answer", str, "a string")
    if answer not in candidates:
        raise finetune.DataError(f"{where}: answer {answer!r} is not one of its "
                                 f"{len(candidates)} candidates {candidates[:8]!r}")
    return candidates.index(answer)


def check_config(config) -> None:
    if config.data.max_chunks < 1:
        raise ValueError(f"data.max_chunks={config.data.max_chunks} must be at least 1")


def prepare(config, train_records: list[dict], eval_records: list[dict] | None) -> dict:
    """Checks every record -> the candidate slots and chunks per example (the batch shape)."""
    records = train_records + (eval_records or [])
    for r in records:
        check_record(r)
    most = max(len(r["candidates"]) for r in records)
    slots = config.data.max_candidates or most
    for r in records:
        if len(r["candidates"]) > slots:
            raise finetune.DataError(f"{finetune.where(r)}: {len(r['candidates'])} candidates, "
                                     f"more than data.max_candidates={slots}")
    return {"max_candidates": slots, "max_chunks": config.data.max_chunks}


# ----------------------------------------------------------------------------- encoding
_NO_SPACE_BEFORE = re.compile(r" ([.,!?)]|'s)")


def clean(text: str) -> str:
    """The authors' clean-up of WikiHop's tokenised text, and the leading space every word has
    inside a sentence (RoBERTa's tokens differ for a word with and without it)."""
    text = _NO_SPACE_BEFORE.sub(r"\1", text).replace("( ", "(")
    return " " + " ".join(text.split())


def encode(config, tokenizer, records: list[dict], facts: dict, mode: str):
    """(examples, max_chunks, seq_len) rows, the candidates' marker positions in each row
    (examples, max_chunks, max_candidates; -1 where none) and the answers' indices."""
    length, max_chunks, slots = config.data.seq_len, facts["max_chunks"], facts["max_candidates"]
    labels = np.asarray([check_record(r) for r in records], np.int32)
    bos, sep, pad = tokenizer.bos_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    marker = tokenizer.mask_token_id
    texts = [clean(t) for r in records for t in (r["query"], *r["candidates"], *r["supports"])]
    tokens = iter(ids for ids, _ in finetune.encode_segments(tokenizer, texts))
    n = len(records)
    ids = np.full((n, max_chunks, length), pad, np.int32)
    ids[:, :, :2] = [bos, sep]  # filler chunks: no candidate, nothing global
    global_mask = np.zeros((n, max_chunks, length), np.int32)
    positions = np.full((n, max_chunks, slots), -1, np.int32)
    cut = 0
    for i, rec in enumerate(records):
        prefix = [bos, *next(tokens), sep]
        markers = []
        for _ in rec["candidates"]:
            markers.append(len(prefix))
            prefix += [marker, *next(tokens)]
        context = [t for _ in rec["supports"] for t in (sep, *next(tokens), sep)]
        room = length - len(prefix)
        if room < 1:
            raise finetune.DataError(
                f"{finetune.where(rec)}: the query and {len(markers)} candidates take "
                f"{len(prefix)} tokens, which leaves no room for the supports in "
                f"data.seq_len={length}")
        spans = finetune.windows(len(context), room, 0)
        cut += len(spans) > max_chunks
        for k, (start, end) in enumerate(spans[:max_chunks]):
            row = prefix + context[start:end]
            ids[i, k, :len(row)] = row
            global_mask[i, k, :len(prefix)] = mode == "question"
            positions[i, k, :len(markers)] = markers
    if cut:
        log.info("%d of %d examples need more than data.max_chunks=%d chunks; their later "
                 "supports were left out", cut, n, max_chunks)
    return {"input_ids": ids, "attention_mask": (ids != pad).astype(np.int32),
            "global_attention_mask": global_mask, "candidate_positions": positions,
            "label": labels}, None


# ----------------------------------------------------------------------------- scoring
def score(out, batch, facts: dict):
    """Per-example loss over the real candidates, and hits; the head has read each candidate's
    logit from its markers (`candidate_positions` is one of `SPEC.model_inputs`)."""
    logits = out.logits
    loss, _ = losses.cross_entropy(logits, batch["label"])
    hits = {"accuracy": (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)}
    return loss, hits, {"logits": logits, "loss": loss}


def summarize(outputs: list, *, config, facts: dict, evals) -> dict[str, float]:
    g = finetune.gather(outputs)
    records = [evals.records[i] for i in g["index"]]
    return {"loss": float(np.mean(g["loss"])), "examples": float(len(records)),
            "accuracy": metrics.accuracy(g["logits"].argmax(-1), evals.rows["label"][g["index"]]),
            "chance": float(np.mean([1 / len(r["candidates"]) for r in records]))}


def predict(outputs: list, *, config, facts: dict, evals) -> list[dict]:
    g = finetune.gather(outputs)
    out = []
    for i, logits in zip(g["index"], g["logits"]):
        rec = evals.records[i]
        scores = logits[:len(rec["candidates"])]
        out.append({"id": finetune.example_id(rec, int(i)), "answer": rec["answer"],
                    "predicted": rec["candidates"][int(scores.argmax())],
                    "scores": [round(float(s), 6) for s in scores]})
    return out


def official_predictions(predictions: list[dict]) -> dict:
    """{id: predicted answer}, the file the QAngaroo leaderboard scores."""
    return {p["id"]: p["predicted"] for p in predictions}


# ----------------------------------------------------------------------------- synthetic data
def synthetic_records(n: int, seed: int, *, num_words: int = 300, num_candidates: int = 6,
                      num_supports: int = 4, mention_others: bool = True) -> list[dict]:
    """WikiHop records with 2 to `num_candidates` colour candidates whose answer is the one that
    follows `code` somewhere in the supports (the rule of the other tasks' synthetic data); with
    `mention_others` every other candidate is mentioned too, after another word, in any support.

    Without them the marker only has to find its own candidate in the supports (one hop: its
    neighbour's colour, then that colour among the supports), which a model trained from scratch
    learns in minutes; with them it must also check the word before each mention (two hops),
    which it does not learn in the thousands of steps tried (see configs/wikihop.py)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        count = int(rng.integers(2, num_candidates + 1))
        candidates = [str(c) for c in rng.choice(synthetic.COLORS, size=count, replace=False)]
        answer = candidates[int(rng.integers(count))]
        per = num_words // num_supports
        docs = [[str(w) for w in rng.choice(synthetic.FILLER, size=per)]
                for _ in range(num_supports)]
        # Slots 3 words apart, so no mention (or `code`) overwrites another.
        slots = rng.choice([(d, p) for d in range(num_supports) for p in range(1, per, 3)],
                           size=count, replace=False)
        for colour, (d, p) in zip(candidates, slots):
            if colour == answer:
                docs[d][p - 1:p + 1] = "code", colour
            elif mention_others:
                docs[d][p] = colour
        out.append({"id": f"synthetic-{seed}-{i}", "query": "code_colour thing",
                    "answer": answer, "candidates": candidates,
                    "supports": [" ".join(words) for words in docs]})
    return out


SPEC = finetune.Spec(
    head=LongformerForCandidateScoring, default_global="question",
    global_modes=("question", "none"),
    budget_hint="the query and candidates are global: raise it to the longest such prefix",
    synthetic=synthetic_records, reader=read_wikihop, check_config=check_config,
    prepare=prepare, encode=encode, score=score, summarize=summarize, predict=predict,
    info=lambda facts: {"candidate slots": facts["max_candidates"], "chunks": facts["max_chunks"]},
    unit="questions",
    no_packing="each example is already its own (chunks, seq_len) rows",
    model_inputs=("candidate_positions",))


def build(config, workdir: str) -> Task:
    return finetune.build(config, workdir, SPEC)


if __name__ == "__main__":  # predictions_step_N.jsonl (eval.py's) -> the leaderboard's JSON
    rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8") if line.strip()]
    json.dump(official_predictions(rows), sys.stdout, ensure_ascii=False, indent=1)
