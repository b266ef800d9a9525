"""longformer.metrics against values worked out by hand (scikit-learn, seqeval and the official
SQuAD v1.1 script define them; none of those is a dependency)."""

import pytest

from longformer import metrics


def test_accuracy_and_macro_f1():
    assert metrics.accuracy([0, 1, 1, 2], [0, 1, 2, 2]) == 0.75
    # class 0: F1 1; class 1: tp 1 fp 1 -> 2/3; class 2: tp 1 fn 1 -> 2/3.
    assert metrics.macro_f1([0, 1, 1, 2], [0, 1, 2, 2]) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    # A class only predicted (3) counts, with F1 0, as in scikit-learn.
    assert metrics.macro_f1([0, 3], [0, 0]) == pytest.approx((2 / 3 + 0) / 2)


def test_multilabel_and_regression():
    scores = metrics.multilabel_scores([[1, 0, 0], [0, 1, 0]], [[1, 0, 0], [0, 1, 1]])
    assert scores["micro_f1"] == pytest.approx(0.8)  # tp 2, fn 1
    assert scores["macro_f1"] == pytest.approx(2 / 3)  # columns 1, 1, 0
    assert scores["subset_accuracy"] == 0.5
    reg = metrics.regression_scores([1, 2, 3], [1, 2, 5])
    assert reg["mse"] == pytest.approx(4 / 3)
    assert 0.9 < reg["pearson"] < 1.0


@pytest.mark.parametrize("tags, expected", [
    (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),
    (["B-PER", "I-LOC"], [("PER", 0, 0), ("LOC", 1, 1)]),  # a type change opens a chunk
    (["I-PER", "I-PER", "B-PER"], [("PER", 0, 1), ("PER", 2, 2)]),  # I- after O starts one
    (["O", "I-MISC", "B-MISC", "I-MISC"], [("MISC", 1, 1), ("MISC", 2, 3)]),
    (["S-PER", "B-LOC", "E-LOC", "O"], [("PER", 0, 0), ("LOC", 1, 2)]),  # IOBES
    (["B-ORG"], [("ORG", 0, 0)]),  # a chunk at the end
    (["O", "O"], []),
])
def test_entities_like_seqeval(tags, expected):
    assert metrics.entities(tags) == expected


def test_entity_and_token_scores():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["I-ORG", "O"]]
    scores = metrics.entity_scores(gold, pred)  # tp: PER, and ORG in sentence 2
    assert scores == pytest.approx({"entity_precision": 2 / 3, "entity_recall": 2 / 3,
                                    "entity_f1": 2 / 3})
    partial = metrics.entity_scores([["B-PER", "I-PER"]], [["B-PER", "O"]])
    assert partial["entity_f1"] == 0.0  # a span that is only partly right does not count
    tokens = metrics.token_scores([["B-PER", "I-PER", "O", "B-LOC"]],
                                  [["B-PER", "O", "O", "B-ORG"]])
    assert tokens["token_accuracy"] == 0.5
    assert tokens["token_f1"] == pytest.approx(2 / 5)  # tp 1, predicted 2, gold 3
    with pytest.raises(ValueError, match="length"):
        metrics.entity_scores([["O"]], [["O", "O"]])


def test_squad_normalisation_and_scores():
    assert metrics.normalize_answer("The  Quick, brown FOX!") == "quick brown fox"
    assert metrics.normalize_answer("an apple a day") == "apple day"
    assert metrics.normalize_answer("theater U.S.") == "theater us"
    assert metrics.normalize_answer("Café\u00a0au lait") == "café au lait"
    assert metrics.exact_match("the Eiffel Tower", "Eiffel tower.") == 1.0
    assert metrics.f1("the cat sat on the mat", "cat on mat") == pytest.approx(6 / 7)
    assert metrics.f1("x y y", "y y z") == pytest.approx(2 / 3)  # counts, not sets
    assert metrics.f1("", "x") == 0.0
    assert metrics.f1("the", "a") == 0.0  # both normalise to nothing: 0 in SQuAD v1.1
    scores = metrics.squad_scores(["Eiffel Tower", "blue", "cat sat"],
                                  [["the Eiffel Tower", "Paris"], ["red"], ["cat", "cat sat on"]])
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 0 + 0.8) / 3)  # best gold per question
