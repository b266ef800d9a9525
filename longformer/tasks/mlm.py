"""Masked-language-model pretraining (RoBERTa dynamic masking on packed documents)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from longformer import data as data_lib, hf_checkpoint
from longformer import config as config_lib
from longformer.config import LongformerConfig
from longformer.modeling import LongformerForMaskedLM
from longformer.tasks.base import Task
from longformer.tokenizer import LongformerTokenizer

log = logging.getLogger(__name__)

# Options that config.json does not carry: taken from our config when loading init_from.
JAX_ONLY = tuple(f.name for f in dataclasses.fields(LongformerConfig)
                 if f.name not in config_lib.HF_FIELDS)


def model_config(config, **overrides) -> LongformerConfig:
    kwargs = config.model.to_dict()
    window = kwargs.get("attention_window")
    if isinstance(window, (tuple, list)) and len(window) == 1:
        kwargs["attention_window"] = int(window[0])  # one value from the command line: every layer
    kwargs.update(overrides)
    return LongformerConfig(**kwargs)


def load_tokenizer(config, workdir: str, documents=None) -> LongformerTokenizer:
    """The configured tokenizer, init_from's, one trained earlier in the workdir, or a new one."""
    for folder in (config.tokenizer, config.init_from, os.path.join(workdir, "tokenizer")):
        if folder and os.path.isdir(folder) and any(
                os.path.exists(os.path.join(folder, f)) for f in ("tokenizer.json", "vocab.json")):
            return LongformerTokenizer.from_pretrained(folder)
    if config.tokenizer:
        raise FileNotFoundError(f"no tokenizer files in {config.tokenizer}")
    log.info("training a byte-level BPE tokenizer (vocab %d) on the corpus", config.model.vocab_size)
    documents = data_lib.load_documents(config.data) if documents is None else documents
    out = os.path.join(workdir, "tokenizer") if jax.process_index() == 0 else None
    return LongformerTokenizer.train(documents, vocab_size=config.model.vocab_size,
                                     save_dir=out, model_max_length=config.data.seq_len)


def load_initial_params(config, model_cfg: LongformerConfig, task: str = "masked_lm"):
    """Parameters from `init_from` (a Longformer or RoBERTa folder) as host arrays, or None."""
    if not config.init_from:
        return None
    with open(os.path.join(config.init_from, "config.json")) as f:
        model_type = json.load(f).get("model_type")
    jax_only = {k: getattr(model_cfg, k) for k in JAX_ONLY}
    if model_type == "roberta":
        from longformer import convert
        model, params = convert.load_roberta_as_longformer(
            config.init_from, max_length=model_cfg.max_sequence_length,
            attention_window=model_cfg.attention_window, task=task, **jax_only)
    else:
        model, params = hf_checkpoint.load_hf_checkpoint(config.init_from, task=task, **jax_only)
    loaded = model.config
    structural = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "max_position_embeddings", "type_vocab_size")
    diffs = [f"{k}: checkpoint {getattr(loaded, k)} vs config {getattr(model_cfg, k)}"
             for k in structural if getattr(loaded, k) != getattr(model_cfg, k)]
    if diffs:
        raise hf_checkpoint.CheckpointMismatchError(
            f"init_from={config.init_from} does not match config.model:\n  " + "\n  ".join(diffs))
    return params


def token_char_lengths(tokenizer: LongformerTokenizer, vocab_size: int) -> np.ndarray:
    """Characters each token id decodes to (for bits per character of the masked tokens)."""
    lengths = np.zeros((vocab_size,), np.int32)
    n = min(vocab_size, tokenizer.vocab_size)
    lengths[:n] = [len(tokenizer.decode([i])) for i in range(n)]
    lengths[list(tokenizer.all_special_ids)] = 0
    return lengths


def mlm_sums(model, params, batch, rng, deterministic):
    """Summed token cross-entropy, labelled-token count and correct predictions."""
    out = model.apply(params, batch["input_ids"], attention_mask=batch["attention_mask"],
                      deterministic=deterministic, rngs=None if deterministic else {"dropout": rng})
    labels = batch["labels"]
    valid = labels != -100
    logits = out.logits.astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
    loss_sum = jnp.sum(jnp.where(valid, losses, 0.0))
    correct = jnp.sum(valid & (jnp.argmax(logits, -1) == labels))
    return loss_sum, jnp.sum(valid), correct


def summarize_eval(outputs: list) -> dict[str, float]:
    """Token-weighted MLM loss, perplexity, accuracy and bits per token / per character."""
    sums = {k: float(sum(np.asarray(o[k], np.float64) for o in outputs)) for k in outputs[0]}
    tokens = max(sums["tokens"], 1.0)
    loss = sums["loss_sum"] / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)),
            "accuracy": sums["correct"] / tokens, "bits_per_token": loss / math.log(2),
            "bits_per_char": sums["loss_sum"] / math.log(2) / max(sums["chars"], 1.0),
            "tokens": tokens}


def build(config, workdir: str) -> Task:
    documents = data_lib.load_documents(config.data)
    tokenizer = load_tokenizer(config, workdir, documents)
    data = data_lib.make_mlm_datasets(
        config.data, tokenizer, seed=config.seed, global_batch_size=config.batch_size,
        process_index=jax.process_index(), process_count=jax.process_count(),
        documents=documents)
    model_cfg = model_config(config)
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but "
                         f"model.vocab_size is {model_cfg.vocab_size}")
    if config.data.seq_len > model_cfg.max_sequence_length:
        raise ValueError(f"data.seq_len {config.data.seq_len} exceeds the position table "
                         f"({model_cfg.max_sequence_length} tokens)")
    model = LongformerForMaskedLM(model_cfg)
    token_chars = jnp.asarray(token_char_lengths(tokenizer, model_cfg.vocab_size))

    def loss_fn(params, batch, rng):
        loss_sum, _, correct = mlm_sums(model, params, batch, rng, deterministic=False)
        return loss_sum, {"correct": correct}

    def eval_fn(params, batch):
        loss_sum, count, correct = mlm_sums(model, params, batch, None, deterministic=True)
        labels = batch["labels"]
        chars = jnp.sum(jnp.where(labels != -100, token_chars[jnp.maximum(labels, 0)], 0))
        return {"loss_sum": loss_sum, "tokens": count, "correct": correct, "chars": chars}

    shape = (config.batch_size, config.data.seq_len)
    return Task(
        model=model, train_data=data.train, eval_data=data.eval,
        batch_spec={k: (shape, jnp.int32) for k in ("input_ids", "attention_mask", "labels")},
        weight_fn=lambda batch: jnp.sum(batch["labels"] != -100),
        loss_fn=loss_fn, eval_fn=eval_fn, summarize=summarize_eval,
        identity={"task": "mlm", "model": config.model.to_dict(), "seq_len": config.data.seq_len,
                  "batch_size": config.batch_size, "seed": config.seed},
        initial_params=lambda: load_initial_params(config, model_cfg), tokenizer=tokenizer,
        info={"train sequences per epoch": data.num_train_sequences,
              "eval sequences": data.num_eval_sequences})
