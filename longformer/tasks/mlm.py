"""Masked-language-model pretraining (RoBERTa dynamic masking on packed documents)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from longformer import corpus, losses
from longformer import data as data_lib
from longformer.modeling import LongformerForMaskedLM
from longformer.tasks import init_from
from longformer.tasks.base import Task
from longformer.tasks.init_from import config_model as model_config
from longformer.tokenizer import LongformerTokenizer


def token_char_lengths(tokenizer: LongformerTokenizer, vocab_size: int) -> np.ndarray:
    """Characters each token id decodes to (for bits per character of the masked tokens)."""
    lengths = np.zeros((vocab_size,), np.int32)
    n = min(vocab_size, tokenizer.vocab_size)
    lengths[:n] = [len(tokenizer.decode([i])) for i in range(n)]
    lengths[list(tokenizer.all_special_ids)] = 0
    return lengths


def mlm_sums(model, params, batch, rng, deterministic):
    """Summed token cross-entropy, labelled-token count and correct predictions; `segment_ids`,
    when the batch has them (data.separate_documents), keep each document's attention to
    itself."""
    out = model.apply(params, batch["input_ids"], attention_mask=batch["attention_mask"],
                      segment_ids=batch.get("segment_ids"), deterministic=deterministic,
                      rngs=None if deterministic else {"dropout": rng})
    labels = batch["labels"]
    logits = out.logits.astype(jnp.float32)
    token_losses, valid = losses.cross_entropy(logits, labels)
    correct = jnp.sum(valid & (jnp.argmax(logits, -1) == labels))
    return jnp.sum(token_losses), jnp.sum(valid), correct


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
    tokenizer = init_from.load_tokenizer(config, workdir, lambda: documents)
    data = data_lib.make_mlm_datasets(
        config.data, tokenizer, seed=config.seed, global_batch_size=config.batch_size,
        process_index=jax.process_index(), process_count=jax.process_count(),
        documents=documents)
    model_cfg = model_config(config)
    init_from.check_fits(config, tokenizer, model_cfg)
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
    fields = ("input_ids", "attention_mask", "labels")
    if config.data.get("separate_documents", False):
        fields += ("segment_ids",)
    return Task(
        model=model, train_data=data.train, eval_data=data.eval,
        batch_spec={k: (shape, jnp.int32) for k in fields},
        weight_fn=lambda batch: jnp.sum(batch["labels"] != -100),
        loss_fn=loss_fn, eval_fn=eval_fn, summarize=summarize_eval,
        identity={"task": "mlm", "model": config.model.to_dict(), "seq_len": config.data.seq_len,
                  "batch_size": config.batch_size, "seed": config.seed},
        initial_params=init_from.init_fn(config, model, workdir, head=True), tokenizer=tokenizer,
        data_files=tuple(data_lib.find_files(config.data.train_files)
                         if config.data.train_files.strip() else corpus.default_corpus_files()),
        info={"train sequences per epoch": data.num_train_sequences,
              "eval sequences": data.num_eval_sequences})
