"""The loss terms of every head, shared by the models' `loss` output and the training objectives.

Each function gives terms per example (or per position), in float32, with ignored positions 0 and
a mask of the counted ones. The two users reduce them differently, and both reductions are here:
the heads take the reference's mean (their `loss` matches transformers'), the objectives sum the
terms with validity weights (filler rows of an eval batch weigh 0) and divide by a weight counted
over the whole batch, since gradient accumulation needs sums rather than per-micro-batch means.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from longformer.config import LongformerConfig

Array = jax.Array
IGNORE_INDEX = -100


def mean(terms: Array, counted: Array) -> Array:
    """The mean over the counted terms (0 when none is counted, never NaN)."""
    return jnp.sum(terms) / jnp.maximum(jnp.sum(counted), 1)


def cross_entropy(logits: Array, labels: Array, ignore_index: int = IGNORE_INDEX):
    """(per-position cross-entropy with ignored positions 0, the mask of counted positions)."""
    counted = labels != ignore_index
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), jnp.where(counted, labels, 0))
    return jnp.where(counted, losses, 0.0), counted


def masked_cross_entropy(logits: Array, labels: Array, ignore_index: int = IGNORE_INDEX) -> Array:
    """Mean cross-entropy over labels != ignore_index (float32)."""
    return mean(*cross_entropy(logits, labels, ignore_index))


# ----------------------------------------------------------------------------- classification
def problem_type(config: LongformerConfig, labels: Array) -> str:
    """The reference's rule when config.problem_type is unset."""
    if config.problem_type:
        return config.problem_type
    if config.num_labels == 1:
        return "regression"
    if jnp.issubdtype(labels.dtype, jnp.integer):
        return "single_label_classification"
    return "multi_label_classification"


def sequence_classification_terms(kind: str, logits: Array, labels: Array):
    """(terms, counted), the first axis the example: squared errors (one per label), a
    cross-entropy per example, or a binary cross-entropy per label, as the reference averages."""
    logits = logits.astype(jnp.float32)
    num_labels = logits.shape[-1]
    if kind == "regression":
        if num_labels == 1:
            terms = (logits.reshape(-1) - labels.reshape(-1).astype(jnp.float32)) ** 2
        else:
            terms = (logits - labels.astype(jnp.float32)) ** 2
        return terms, jnp.ones(terms.shape, bool)
    if kind == "single_label_classification":
        return cross_entropy(logits.reshape(-1, num_labels), labels.reshape(-1))
    if kind == "multi_label_classification":
        terms = optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32))
        return terms, jnp.ones(terms.shape, bool)
    raise ValueError(f"unknown problem_type {kind!r}")


def sequence_classification_loss(config: LongformerConfig, logits: Array, labels: Array,
                                 valid: Array | None = None) -> Array:
    """The head's loss: the mean over every term (the reference's MSE, CE or BCE-with-logits);
    `valid` (examples,) leaves out filler examples (the empty slots of packed rows)."""
    terms, counted = sequence_classification_terms(problem_type(config, labels), logits, labels)
    if valid is not None:
        keep = valid.reshape(valid.shape + (1,) * (terms.ndim - 1))
        terms, counted = jnp.where(keep, terms, 0.0), counted & keep
    return mean(terms, counted)


def per_example(terms: Array) -> Array:
    """One loss per example: the mean of its terms (its only term for one label)."""
    return terms if terms.ndim == 1 else jnp.mean(terms, axis=-1)


# ----------------------------------------------------------------------------- question answering
def question_answering_terms(start_logits, end_logits, start_positions, end_positions):
    """((start terms, counted), (end terms, counted)) per example. The reference clamps positions
    to the input length and ignores that index, so answers outside the input count for nothing."""
    length = start_logits.shape[-1]

    def one(logits, positions):
        positions = jnp.clip(jnp.asarray(positions).reshape(-1), 0, length)
        return cross_entropy(logits, positions, ignore_index=length)

    return one(start_logits, start_positions), one(end_logits, end_positions)


def question_answering_loss(start_logits, end_logits, start_positions, end_positions):
    """The head's loss: the mean of the start and end cross-entropies."""
    start, end = question_answering_terms(start_logits, end_logits, start_positions,
                                          end_positions)
    return (mean(*start) + mean(*end)) / 2


def question_answering_losses(start_logits, end_logits, start_positions, end_positions):
    """Per example: the mean of its start and end cross-entropies."""
    (start, _), (end, _) = question_answering_terms(start_logits, end_logits, start_positions,
                                                    end_positions)
    return (start + end) / 2


def distant_supervision_losses(start_logits, end_logits, start_positions, end_positions):
    """Per example: the loss of Clark and Gardner (2017, section 2.2) for answers found by text
    matching, where any occurrence may be the one the question is about and most are noise.

    Start and end are scored independently, as in their paper and the Longformer authors'
    TriviaQA script: -log of the probability mass on the SET of listed start positions, likewise
    for the ends, averaged. Summing probabilities (not losses) over the occurrences means the
    model only has to get one of them right. `*_positions` are (batch, K), padded with -1 (any
    value outside the row is ignored); a position listed twice counts once. An example with
    none listed has no target and gets 0 (the tasks leave it out of the loss's weight).
    """
    def one(logits, positions):
        logits = logits.astype(jnp.float32)
        length = logits.shape[-1]
        listed = jnp.any(jnp.asarray(positions)[..., :, None] == jnp.arange(length), axis=-2)
        found = jnp.any(listed, axis=-1)
        # With nothing listed the row's own normaliser stands in, so no -inf reaches a gradient.
        gold = jax.nn.logsumexp(jnp.where(listed | ~found[..., None], logits, -jnp.inf), -1)
        return jnp.where(found, jax.nn.logsumexp(logits, -1) - gold, 0.0)

    return (one(start_logits, start_positions) + one(end_logits, end_positions)) / 2


# ----------------------------------------------------------------------------- HotpotQA
def _binary_mean(logits: Array, labels: Array) -> Array:
    """Per example: the mean binary cross-entropy over its slots labelled 0 or 1 (padding and
    unknown slots are IGNORE_INDEX), 0 when none is."""
    counted = labels != IGNORE_INDEX
    terms = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32),
                                               jnp.where(counted, labels, 0).astype(jnp.float32))
    return jnp.sum(jnp.where(counted, terms, 0.0), -1) / jnp.maximum(jnp.sum(counted, -1), 1)


def hotpotqa_losses(start_logits, end_logits, type_logits, sentence_logits, paragraph_logits,
                    start_positions, end_positions, answer_type, sentence_labels,
                    paragraph_labels) -> Array:
    """Per example, the sum of four losses with equal weights (the paper combines them
    linearly, weights unstated): the span's (mean of the start and end cross-entropies; an
    answer that is yes/no or not found in the input has IGNORE_INDEX positions and adds 0), the
    answer type's cross-entropy, and the mean binary cross-entropies of the supporting
    sentences and paragraphs."""
    (start, _), (end, _) = (cross_entropy(start_logits, start_positions),
                            cross_entropy(end_logits, end_positions))
    kind, _ = cross_entropy(type_logits, answer_type)
    return ((start + end) / 2 + kind + _binary_mean(sentence_logits, sentence_labels)
            + _binary_mean(paragraph_logits, paragraph_labels))
