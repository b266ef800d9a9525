"""Synthetic fine-tuning data, generated on the fly, for running every task config with no files.

Each task's answer depends on text far from the start of a long document, so a model that only
sees the first window, or whose `<s>`/question tokens cannot attend globally, stays at chance:

* classification: the label is the colour in the one `code <colour>` phrase, placed in the second
  half of the document; the same colours also occur elsewhere as distractors (not after `code`).
  Multi-label: every colour that follows `code` (1 to 3 phrases). Regression: how many `code`
  phrases there are (0 to 4).
* token classification: names (`B-`/`I-` tags; a given name, sometimes with a surname) are
  declared as `<name> is a person|place|company .` and mentioned again up to `max_distance`
  words later; a mention's type is only known from its declaration, so the window has to reach
  back to it.
* multiple choice: "which colour follows code ?", each choice with its own document (the
  `contexts` form, as for evidence retrieved per answer); only the right choice's document has
  `code <colour>`, in its second half, while every document mentions its colour elsewhere.
  (With one shared context a model trained from scratch has to learn to match the choice against
  the context before any signal reaches its loss, which takes far longer than a demo.)
* question answering: the document names one colour, one number, one animal and one city (one
  or two words each) at random places; the question asks for one of them ("which animal ?").
  The answer can be anywhere in a document longer than one input, so it lands in any window,
  and the context tokens only see the question through global attention: without it a model
  can do no better than guessing among the four.

Records have exactly the fields of the task's JSON lines format, so they go through the same
validation as files. Everything is a pure function of the seed.
"""

from __future__ import annotations

import numpy as np

FILLER = (
    "the of and to in is was for on with as by at from that this it be are were his her they "
    "we you one two new old day year time way man world life hand part child eye work "
    "week case point home water room mother area money story fact month lot right study book "
    "job word business issue side kind head house service friend father power hour game line "
    "end member law car city name team minute idea kid body face level office door health art "
    "war history party result change morning reason research girl guy moment air teacher force "
    "education river stone field light song paper road wind tree bird snow").split()
COLORS = ("red", "green", "blue", "gold", "pink", "gray", "white", "black")
CATEGORIES = {
    "colour": ("red", "green", "blue", "gold", "dark red", "light blue", "silver", "purple"),
    "number": ("seven", "eleven", "forty", "ninety", "twenty one", "sixty two", "three", "nine"),
    "animal": ("horse", "tiger", "eagle", "otter", "sea lion", "brown bear", "wolf", "crow"),
    "city": ("paris", "lima", "oslo", "cairo", "new york", "hong kong", "quito", "rome"),
}
TYPES = {"person": "PER", "place": "LOC", "company": "ORG"}
_SYLLABLES = ("ka", "lo", "mi", "ra", "ten", "bor", "vel", "zu", "pin", "dar", "sel", "mo", "ri",
              "tal", "nek", "fa")


def names(count: int = 48, seed: int = 1234) -> list[str]:
    """Made-up capitalised names of two syllables, fixed for a seed."""
    rng = np.random.default_rng(seed)
    out: set[str] = set()
    while len(out) < count:
        out.add("".join(rng.choice(_SYLLABLES, size=2)).capitalize())
    return sorted(out)


NAMES = names()
# Second words of two-word names come from their own pool ("Ekholm"), as surnames do.
SURNAMES = tuple(a + b for a in ("Ek", "Sand", "Lind", "Nord", "Hag", "Berg")
                 for b in ("holm", "gren", "strom", "lund", "quist", "dahl"))


def _filler(rng, n: int) -> list[str]:
    return [str(w) for w in rng.choice(FILLER, size=n)] if n > 0 else []


def _join(words: list[str]) -> str:
    return " ".join(words)


def _generate(n: int, seed: int, one) -> list[dict]:
    """`one(rng, i)` for i < n from one seeded stream, so the records are a function of the seed."""
    rng = np.random.default_rng(seed)
    return [one(rng, i) for i in range(n)]


def _document(rng, num_words: int, distractors: int, colour) -> list[str]:
    """Filler words with `distractors` colour words (`colour()` each) anywhere but first."""
    words = _filler(rng, num_words)
    for _ in range(distractors):
        words[int(rng.integers(1, num_words))] = colour()
    return words


# ----------------------------------------------------------------------------- classification
def classification(n: int, seed: int, *, num_words: int = 300, num_labels: int = 4,
                   problem: str = "single_label", distractors: int = 3) -> list[dict]:
    """`{"text", "label"}` records; see the module docstring for the rule."""
    if not 2 <= num_labels <= len(COLORS):
        raise ValueError(f"num_labels must be in [2, {len(COLORS)}], got {num_labels}")
    colors = COLORS[:num_labels]

    def one(rng, i):
        # colour words that are not after `code`
        words = _document(rng, num_words, distractors, lambda: str(rng.choice(colors)))
        if problem == "single_label":
            chosen = [str(rng.choice(colors))]
        elif problem == "multi_label":
            size = int(rng.integers(1, 4))
            chosen = [str(c) for c in rng.choice(colors, size=size, replace=False)]
        elif problem == "regression":
            chosen = [str(rng.choice(colors)) for _ in range(int(rng.integers(0, 5)))]
        else:
            raise ValueError(f"unknown problem {problem!r}")
        # Phrases go in the second half, at distinct positions that do not touch each other.
        slots = rng.choice(np.arange(num_words // 2, num_words - 2, 3), size=len(chosen),
                           replace=False)
        for slot, color in zip(slots, chosen):
            words[slot], words[slot + 1] = "code", color
        label = {"single_label": chosen[0] if chosen else None,
                 "multi_label": sorted(chosen),
                 "regression": float(len(chosen))}[problem]
        return {"text": _join(words), "label": label}

    return _generate(n, seed, one)


# ----------------------------------------------------------------------------- token classification
def token_classification(n: int, seed: int, *, num_words: int = 300, max_distance: int = 24,
                         entities_per_paragraph: int = 2) -> list[dict]:
    """`{"tokens", "tags"}` records (BIO tags PER/LOC/ORG); see the module docstring."""

    def one(rng, i):
        tokens: list[str] = []
        tags: list[str] = []
        pool = list(rng.permutation(NAMES))  # a name means one thing within a document

        def put(words, kind=None):
            tokens.extend(words)
            if kind is None:
                tags.extend(["O"] * len(words))
            else:
                tags.extend([f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1))

        while len(tokens) < num_words and len(pool) >= 2 * entities_per_paragraph:
            ents = []
            for _ in range(entities_per_paragraph):  # declarations
                name = [str(pool.pop())]
                if rng.random() < 0.3:
                    name.append(str(rng.choice(SURNAMES)))
                kind = str(rng.choice(list(TYPES)))
                ents.append((name, TYPES[kind]))
                put(_filler(rng, int(rng.integers(0, 4))))
                put(name, TYPES[kind])
                put(["is", "a", kind, "."])
            budget = max_distance  # mentions, at most max_distance words after the declarations
            for _ in range(int(rng.integers(2, 5))):
                gap = int(rng.integers(1, max(2, budget // 3)))
                put(_filler(rng, gap))
                name, kind = ents[int(rng.integers(len(ents)))]
                put(name, kind)
                budget -= gap + len(name)
                if budget <= 2:
                    break
            put(["."])
        return {"tokens": tokens, "tags": tags}

    return _generate(n, seed, one)


# ----------------------------------------------------------------------------- multiple choice
def multiple_choice(n: int, seed: int, *, num_words: int = 300, num_choices: int = 4,
                    distractors: int = 3) -> list[dict]:
    """`{"question", "contexts", "choices", "label"}` records (one document per choice)."""

    def one(rng, i):
        choices = [str(c) for c in rng.choice(COLORS, size=num_choices, replace=False)]
        label = int(rng.integers(num_choices))
        contexts = []
        for j, color in enumerate(choices):
            # the colour alone, anywhere: not the evidence
            words = _document(rng, num_words, distractors, lambda: color)
            if j == label:
                slot = int(rng.integers(num_words // 2, num_words - 1))
                words[slot], words[slot + 1] = "code", color
            contexts.append(_join(words))
        return {"question": "which colour follows code ?", "contexts": contexts,
                "choices": choices, "label": label}

    return _generate(n, seed, one)


# ----------------------------------------------------------------------------- question answering
def question_answering(n: int, seed: int, *, num_words: int = 300, num_categories: int = 4
                       ) -> list[dict]:
    """SQuAD-style records `{"id", "question", "context", "answers": [{"text", "answer_start"}]}`.

    The document names one item of each of `num_categories` categories (colour, number, animal,
    city; some items are two words) at random places; the question asks for one category.
    """
    if not 2 <= num_categories <= len(CATEGORIES):
        raise ValueError(f"num_categories must be in [2, {len(CATEGORIES)}]")
    kinds = list(CATEGORIES)[:num_categories]

    def one(rng, i):
        words = _filler(rng, num_words)
        # Distinct slots at least 3 words apart; replacing one word by a phrase keeps the others'
        # order, so place from the end backwards.
        slots = sorted(rng.choice(np.arange(0, num_words, 3), size=num_categories,
                                  replace=False), reverse=True)
        items = {}
        for slot, kind in zip(slots, rng.permutation(kinds)):
            item = str(rng.choice(CATEGORIES[kind]))
            words[slot:slot + 1] = item.split()
            items[kind] = item
        asked = str(rng.choice(kinds))
        answer = items[asked]
        context = _join(words)
        # The item's position: count words before it (phrases were placed back to front).
        start = _find_words(words, answer.split())
        start = sum(len(w) + 1 for w in words[:start])
        assert context[start:start + len(answer)] == answer
        return {"id": f"synthetic-{seed}-{i}", "question": f"which {asked} ?",
                "context": context, "answers": [{"text": answer, "answer_start": start}]}

    return _generate(n, seed, one)


def _find_words(words: list[str], phrase: list[str]) -> int:
    for i in range(len(words) - len(phrase) + 1):
        if words[i:i + len(phrase)] == phrase:
            return i
    raise ValueError(f"{phrase} not in the words")


def corpus(records: list[dict]) -> list[str]:
    """Every text of the records (synthetic or read from files), to train a tokenizer on."""
    texts = []
    for r in records:
        for field in ("text", "question", "context", "query"):
            if isinstance(r.get(field), str):
                texts.append(r[field])
        if isinstance(r.get("context"), list):  # HotpotQA: [[title, [sentence, ...]], ...]
            for para in r["context"]:
                if isinstance(para, list) and len(para) == 2 and isinstance(para[1], list):
                    texts.extend(t for t in [para[0], *para[1]] if isinstance(t, str))
        for field in ("tokens", "contexts", "choices", "supports", "candidates"):
            if isinstance(r.get(field), list):
                words = [w for w in r[field] if isinstance(w, str)]
                texts.extend([" ".join(words)] if field == "tokens" else words)
    return texts
