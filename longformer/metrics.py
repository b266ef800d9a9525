"""Fine-tuning metrics, computed on the host with numpy and plain Python.

Each follows the definition people compare numbers against, so scores are comparable with
published ones:
* classification: accuracy and macro F1 as scikit-learn computes them (`f1_score(average=
  'macro')`: the mean over the classes that occur in the gold labels or the predictions; a class
  with no predicted or no gold example scores 0 there), and the binary F1 of one class;
* multi-label: micro and macro F1 over the label columns, and subset accuracy (every label right);
* regression: mean squared error (and Pearson's r);
* token classification: word-level accuracy and micro F1 over the non-`O` tags, and entity-level
  precision/recall/F1 exactly as `seqeval` (default mode) computes them for BIO/IOBES tags;
* question answering: exact match and F1 of the official SQuAD v1.1 script (lower-case, strip
  punctuation and the articles a/an/the, squeeze whitespace; the best score over the gold answers),
  as percentages;
* HotpotQA: answer, supporting-fact and joint EM/F1 (and precision/recall) of the official
  `hotpot_evaluate_v1.py`, as percentages.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Iterable, Sequence

import numpy as np


# ----------------------------------------------------------------------------- classification
def _f1(tp: float, fp: float, fn: float) -> float:
    denom = 2 * tp + fp + fn
    return 0.0 if denom == 0 else float(2 * tp / denom)


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return float(np.mean(predictions == labels)) if labels.size else 0.0


def binary_f1(predictions: Sequence[int], labels: Sequence[int], positive: int = 1) -> float:
    """F1 of the class `positive` alone (scikit-learn's `f1_score(average='binary')`): what
    two-class tasks with a class of interest, such as Hyperpartisan's `true`, report."""
    p, g = np.asarray(predictions) == positive, np.asarray(labels) == positive
    return _f1(np.sum(p & g), np.sum(p & ~g), np.sum(~p & g))


def macro_f1(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Mean F1 over the classes seen in `labels` or `predictions` (scikit-learn's macro F1)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    classes = np.union1d(predictions, labels)
    if classes.size == 0:
        return 0.0
    scores = [_f1(np.sum((predictions == c) & (labels == c)),
                  np.sum((predictions == c) & (labels != c)),
                  np.sum((predictions != c) & (labels == c))) for c in classes]
    return float(np.mean(scores))


def multilabel_scores(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """0/1 matrices (examples, labels) -> micro F1, macro F1 (every column), subset accuracy."""
    p, g = np.asarray(predictions).astype(bool), np.asarray(labels).astype(bool)
    tp, fp, fn = (p & g).sum(0), (p & ~g).sum(0), (~p & g).sum(0)
    return {"micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum())),
            "macro_f1": float(np.mean([_f1(*c) for c in zip(tp, fp, fn)])) if p.shape[1] else 0.0,
            "subset_accuracy": float(np.mean(np.all(p == g, axis=1))) if len(p) else 0.0}


def regression_scores(predictions: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    p, g = np.asarray(predictions, np.float64), np.asarray(labels, np.float64)
    mse = float(np.mean((p - g) ** 2)) if g.size else 0.0
    pearson = 0.0
    if g.size > 1 and p.std() > 0 and g.std() > 0:
        pearson = float(np.corrcoef(p, g)[0, 1])
    return {"mse": mse, "pearson": pearson}


# ----------------------------------------------------------------------------- tagging
def _split_tag(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', '_'), as seqeval splits (prefix, type)."""
    prefix = tag[0] if tag else "O"
    kind = tag[1:].split("-", maxsplit=1)[-1] or "_"
    return prefix, kind


def _end_of_chunk(prev_tag, tag, prev_type, type_) -> bool:
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != type_


def _start_of_chunk(prev_tag, tag, prev_type, type_) -> bool:
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != type_


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first, last) chunks of one tag sequence, seqeval's `get_entities` (lenient mode).

    An `I-X` after `O` or after another type opens a new chunk, as seqeval does.
    """
    chunks, prev_tag, prev_type, begin = [], "O", "", 0
    for i, tag in enumerate(list(tags) + ["O"]):
        tag_prefix, type_ = _split_tag(tag)
        if _end_of_chunk(prev_tag, tag_prefix, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag_prefix, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag_prefix, type_
    return chunks


def entity_scores(gold: Iterable[Sequence[str]], predicted: Iterable[Sequence[str]]
                  ) -> dict[str, float]:
    """Micro-averaged entity precision, recall and F1 over sentences (seqeval's defaults)."""
    tp = n_pred = n_gold = 0
    for g, p in zip(gold, predicted):
        if len(g) != len(p):
            raise ValueError(f"gold and predicted tag sequences differ in length: {len(g)} vs "
                             f"{len(p)}")
        gs, ps = set(entities(g)), set(entities(p))
        tp += len(gs & ps)
        n_pred += len(ps)
        n_gold += len(gs)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {"entity_precision": precision, "entity_recall": recall, "entity_f1": f1}


def token_scores(gold: Iterable[Sequence[str]], predicted: Iterable[Sequence[str]],
                 outside: str = "O") -> dict[str, float]:
    """Word-level accuracy, and micro F1 over the words whose tag is not `outside`."""
    correct = total = tp = n_pred = n_gold = 0
    for g, p in zip(gold, predicted):
        for a, b in zip(g, p):
            total += 1
            correct += a == b
            n_gold += a != outside
            n_pred += b != outside
            tp += a == b and a != outside
    return {"token_accuracy": correct / total if total else 0.0,
            "token_f1": _f1(tp, n_pred - tp, n_gold - tp)}


# ----------------------------------------------------------------------------- SQuAD
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official SQuAD normalisation: lower, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def _overlap(prediction: str, truth: str) -> tuple[float, float]:
    """(precision, recall) of the normalised tokens (0, 0 when nothing overlaps)."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    same = sum((collections.Counter(pred) & collections.Counter(gold)).values())
    return (same / len(pred), same / len(gold)) if same else (0.0, 0.0)


def _harmonic(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def f1(prediction: str, truth: str) -> float:
    """Token-overlap F1 after normalisation (SQuAD v1.1: 0 when nothing overlaps)."""
    return _harmonic(*_overlap(prediction, truth))


def squad_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]]
                 ) -> dict[str, float]:
    """Mean over questions of the best EM and F1 against any gold answer, in percent."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} questions")
    em = [max((exact_match(p, a) for a in golds), default=0.0)
          for p, golds in zip(predictions, answers)]
    f = [max((f1(p, a) for a in golds), default=0.0) for p, golds in zip(predictions, answers)]
    n = max(len(predictions), 1)
    return {"exact_match": 100.0 * sum(em) / n, "f1": 100.0 * sum(f) / n}


# ----------------------------------------------------------------------------- TriviaQA
_TRIVIAQA_PUNCTUATION = _PUNCTUATION | set("\u2018\u2019\u00b4`")  # and the quotes ‘ ’ ´


def triviaqa_normalize(text: str) -> str:
    """TriviaQA's official normalisation (its triviaqa_evaluation.py): lower case, punctuation
    (underscore included) REPLACED by a space where SQuAD deletes it, so 'Jean-Paul' is two words
    there, no articles a/an/the, single spaces."""
    text = "".join(" " if ch in _TRIVIAQA_PUNCTUATION else ch for ch in text.lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def triviaqa_ground_truths(answer: dict) -> list[str]:
    """What the official script scores a prediction against: the answer's `NormalizedAliases`
    and its normalised `HumanAnswers` (where a file has them); it adds nothing else."""
    return list(answer.get("NormalizedAliases", [])) + [
        triviaqa_normalize(a) for a in answer.get("HumanAnswers", [])]


def triviaqa_scores(predictions: Sequence[str], ground_truths: Sequence[Sequence[str]]
                    ) -> dict[str, float]:
    """TriviaQA's exact match and F1 in percent: per question the best over its ground truths,
    both sides normalised by `triviaqa_normalize`, averaged over questions.

    The comparison itself is SQuAD's (`squad_scores`): SQuAD's normalisation leaves a
    TriviaQA-normalised string unchanged, so only the normalisation differs.
    """
    return squad_scores([triviaqa_normalize(p) for p in predictions],
                        [[triviaqa_normalize(g) for g in golds] for golds in ground_truths])


# ----------------------------------------------------------------------------- HotpotQA
_CLOSED_ANSWERS = ("yes", "no", "noanswer")


def hotpot_answer_scores(prediction: str, truth: str) -> tuple[float, float, float, float]:
    """(EM, F1, precision, recall) of one answer, as the official HotpotQA script scores it:
    SQuAD's normalisation and token overlap, except that when either side normalises to yes, no
    or noanswer and the two differ, everything is 0 ("yes" earns no credit for overlapping
    "yes it is")."""
    pred, gold = normalize_answer(prediction), normalize_answer(truth)
    if (pred in _CLOSED_ANSWERS or gold in _CLOSED_ANSWERS) and pred != gold:
        return 0.0, 0.0, 0.0, 0.0
    precision, recall = _overlap(prediction, truth)
    return float(pred == gold), _harmonic(precision, recall), precision, recall


def hotpot_sp_scores(predicted: Iterable[Sequence], gold: Iterable[Sequence]
                     ) -> tuple[float, float, float, float]:
    """(EM, F1, precision, recall) of one question's supporting facts, sets of (title, sentence
    index) (duplicates count once). EM is 1 when the sets are equal, also both empty; precision
    (recall) is 0 with nothing predicted (no gold). Gold facts naming a sentence that the
    context lacks stay in the gold set, as the official script keeps them."""
    pred, truth = set(map(tuple, predicted)), set(map(tuple, gold))
    hits = len(pred & truth)
    precision = hits / len(pred) if pred else 0.0
    recall = hits / len(truth) if truth else 0.0
    return float(pred == truth), _harmonic(precision, recall), precision, recall


def hotpot_scores(answers: dict, supporting: dict, gold: Sequence[dict]) -> dict[str, float]:
    """The official script's means over the gold questions (`{"_id", "answer",
    "supporting_facts"}`), in percent, for predictions in its format (`answers`: _id -> text,
    `supporting`: _id -> [[title, sentence index], ...]). A question missing from either scores
    0 there and 0 joint. Joint precision is answer precision x supporting-fact precision, joint
    recall likewise, joint F1 their harmonic mean, joint EM the product of the EMs."""
    names = ("em", "f1", "prec", "recall")
    totals = dict.fromkeys([p + n for p in ("", "sp_", "joint_") for n in names], 0.0)
    for rec in gold:
        qid = rec["_id"]
        answer = sp = None
        if qid in answers:
            answer = hotpot_answer_scores(answers[qid], rec["answer"])
            totals.update({n: totals[n] + v for n, v in zip(names, answer)})
        if qid in supporting:
            sp = hotpot_sp_scores(supporting[qid], rec["supporting_facts"])
            totals.update({"sp_" + n: totals["sp_" + n] + v for n, v in zip(names, sp)})
        if answer is not None and sp is not None:
            precision, recall = answer[2] * sp[2], answer[3] * sp[3]
            joint = (answer[0] * sp[0], _harmonic(precision, recall), precision, recall)
            totals.update({"joint_" + n: totals["joint_" + n] + v for n, v in zip(names, joint)})
    n = max(len(gold), 1)
    return {k: 100.0 * v / n for k, v in totals.items()}
