"""MLM pretraining: the train state, pure train and eval steps, and the loop.

Read top to bottom: mesh, tokenizer, data, model, optimizer, sharded state, checkpoint/resume,
the compiled step, the loop. The train state is a plain dict {'step', 'params', 'opt_state'};
dropout keys come from `fold_in(seed, step)`, so nothing random needs saving and a resumed run
reproduces the uninterrupted one bit for bit.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from longformer import checkpoints, data as data_lib, hf_checkpoint, sharding
from longformer.config import LongformerConfig
from longformer.modeling import LongformerForMaskedLM
from longformer.tokenizer import LongformerTokenizer

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """The loss or the gradient stopped being finite."""


# ----------------------------------------------------------------------------- optimizer
def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warm-up to the peak, then polynomial decay to the end rate at total_steps."""
    peak = config.optimizer.learning_rate
    warmup = config.schedule.warmup_steps
    decay_steps = max(config.total_steps - warmup, 1)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, max(warmup, 1)),
         optax.polynomial_schedule(peak, config.schedule.end_learning_rate,
                                   config.schedule.power, decay_steps)],
        boundaries=[warmup])


def _decay_mask(params):
    """Weight decay on matrices and embeddings, not on biases and LayerNorm scales."""
    def keep(path, _):
        names = [getattr(k, "key", None) for k in path]
        return not ({"bias", "scale"} & set(names))
    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    opt = config.optimizer
    return optax.chain(
        optax.clip_by_global_norm(opt.grad_clip_norm) if opt.grad_clip_norm > 0
        else optax.identity(),
        optax.adamw(learning_rate_schedule(config), b1=opt.b1, b2=opt.b2, eps=opt.eps,
                    weight_decay=opt.weight_decay, mask=_decay_mask))


# ----------------------------------------------------------------------------- model and state
def model_config(config: ml_collections.ConfigDict, **overrides) -> LongformerConfig:
    kwargs = config.model.to_dict()
    window = kwargs.get("attention_window")
    if isinstance(window, (tuple, list)) and len(window) == 1:
        kwargs["attention_window"] = int(window[0])  # one value from the command line: every layer
    kwargs.update(overrides)
    return LongformerConfig(**kwargs)


def create_train_state(model, tx, mesh, rng, *, rules=sharding.DEFAULT_RULES,
                       init_params: Any = None):
    """The train state, created directly with its shardings (never whole on one device).

    Returns (state, shardings). With `init_params` (host arrays of the same tree) the parameters
    are those instead of random ones.
    """
    def init(rng):
        params = hf_checkpoint.init_params(model, rng, boxed=True)
        return {"step": jnp.zeros((), jnp.int32), "params": params,
                "opt_state": tx.init(params)}

    abstract = jax.eval_shape(init, rng)
    shardings = sharding.param_shardings(abstract, mesh, rules)
    if init_params is None:
        state = jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(rng)
    else:
        def from_params(params):
            return {"step": jnp.zeros((), jnp.int32), "params": params,
                    "opt_state": tx.init(params)}
        params = jax.device_put(init_params, shardings["params"])
        state = jax.jit(from_params, out_shardings=shardings)(params)
    return state, shardings


# ----------------------------------------------------------------------------- steps
def _mlm_sums(model, params, batch, rng, deterministic):
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


def train_step(state, batch, base_rng, *, model, tx, accum_steps: int):
    """One optimizer update over the global batch, in `accum_steps` micro-batches.

    The gradient is that of the mean token loss over the WHOLE batch. A non-finite loss or
    gradient leaves the state unchanged and is reported in the metrics.
    """
    step = state["step"]
    rng = jax.random.fold_in(base_rng, step)
    total = jnp.maximum(jnp.sum(batch["labels"] != -100), 1).astype(jnp.float32)
    micro = jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape((x.shape[0] // accum_steps, accum_steps) + x.shape[1:]),
                               0, 1), batch)

    def micro_loss(params, mb, key):
        loss_sum, count, correct = _mlm_sums(model, params, mb, key, deterministic=False)
        return loss_sum / total, (loss_sum, count, correct)

    grad_fn = jax.grad(micro_loss, has_aux=True)

    def body(carry, xs):
        grads, sums = carry
        mb, i = xs
        g, aux = grad_fn(state["params"], mb, jax.random.fold_in(rng, i))
        return (jax.tree.map(jnp.add, grads, g), jax.tree.map(jnp.add, sums, aux)), None

    zeros = jax.tree.map(jnp.zeros_like, state["params"])
    sums0 = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
    (grads, (loss_sum, count, correct)), _ = jax.lax.scan(
        body, (zeros, sums0), (micro, jnp.arange(accum_steps)))

    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss_sum) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = {"step": step + 1, "params": params, "opt_state": opt_state}
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state,
                             {**state, "step": step + 1})
    metrics = {"loss_sum": loss_sum, "tokens": count, "correct": correct,
               "grad_norm": grad_norm, "finite": finite}
    return new_state, metrics


def eval_step(params, batch, *, model, token_chars):
    loss_sum, count, correct = _mlm_sums(model, params, batch, None, deterministic=True)
    labels = batch["labels"]
    chars = jnp.sum(jnp.where(labels != -100, token_chars[jnp.maximum(labels, 0)], 0))
    return {"loss_sum": loss_sum, "tokens": count, "correct": correct, "chars": chars}


def summarize_eval(sums: dict[str, float]) -> dict[str, float]:
    """Token-weighted MLM loss, perplexity, accuracy and bits per token / per character."""
    tokens = max(float(sums["tokens"]), 1.0)
    loss = float(sums["loss_sum"]) / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)),
            "accuracy": float(sums["correct"]) / tokens,
            "bits_per_token": loss / math.log(2),
            "bits_per_char": float(sums["loss_sum"]) / math.log(2) / max(float(sums["chars"]), 1.0),
            "tokens": tokens}


def token_char_lengths(tokenizer: LongformerTokenizer, vocab_size: int) -> np.ndarray:
    """Characters each token id decodes to (for bits per character of masked tokens)."""
    lengths = np.zeros((vocab_size,), np.int32)
    n = min(vocab_size, tokenizer.vocab_size)
    lengths[:n] = [len(tokenizer.decode([i])) for i in range(n)]
    lengths[list(tokenizer.all_special_ids)] = 0
    return lengths


# ----------------------------------------------------------------------------- set-up helpers
def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
    dist = config.distributed
    if not dist.enabled:
        return
    kwargs = {}
    if dist.coordinator_address:
        kwargs["coordinator_address"] = dist.coordinator_address
    if dist.num_processes > 0:
        kwargs["num_processes"] = dist.num_processes
    if dist.process_id >= 0:
        kwargs["process_id"] = dist.process_id
    jax.distributed.initialize(**kwargs)


def load_tokenizer(config: ml_collections.ConfigDict, workdir: str,
                   documents=None) -> LongformerTokenizer:
    """The configured tokenizer, init_from's, the one trained earlier in the workdir, or a new one."""
    for folder in (config.tokenizer, config.init_from, os.path.join(workdir, "tokenizer")):
        if folder and os.path.isdir(folder) and any(
                os.path.exists(os.path.join(folder, f)) for f in ("tokenizer.json", "vocab.json")):
            return LongformerTokenizer.from_pretrained(folder)
    if config.tokenizer:
        raise FileNotFoundError(f"no tokenizer files in {config.tokenizer}")
    log.info("training a byte-level BPE tokenizer (vocab %d) on the corpus", config.model.vocab_size)
    documents = data_lib.load_documents(config.data) if documents is None else documents
    out = os.path.join(workdir, "tokenizer")
    if jax.process_index() != 0:
        out = None  # every host trains the same vocabulary; one writes it
    return LongformerTokenizer.train(documents, vocab_size=config.model.vocab_size,
                                     save_dir=out, model_max_length=config.data.seq_len)


def load_initial_params(config: ml_collections.ConfigDict, model_cfg: LongformerConfig):
    """Parameters from `init_from` (Longformer or RoBERTa folder), as host arrays, or None."""
    if not config.init_from:
        return None
    with open(os.path.join(config.init_from, "config.json")) as f:
        model_type = json.load(f).get("model_type")
    jax_only = {k: getattr(model_cfg, k) for k in
                ("dtype", "param_dtype", "max_global_tokens", "remat", "attention_block_size")}
    if model_type == "roberta":
        from longformer import convert
        model, params = convert.load_roberta_as_longformer(
            config.init_from, max_length=model_cfg.max_sequence_length,
            attention_window=model_cfg.attention_window, task="masked_lm", **jax_only)
    else:
        model, params = hf_checkpoint.load_hf_checkpoint(config.init_from, task="masked_lm",
                                                         **jax_only)
    loaded = model.config
    structural = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "max_position_embeddings", "type_vocab_size")
    diffs = [f"{k}: checkpoint {getattr(loaded, k)} vs config {getattr(model_cfg, k)}"
             for k in structural if getattr(loaded, k) != getattr(model_cfg, k)]
    if diffs:
        raise hf_checkpoint.CheckpointMismatchError(
            f"init_from={config.init_from} does not match config.model:\n  " + "\n  ".join(diffs))
    return params


class MetricsWriter:
    """JSON lines and TensorBoard event files in the workdir (process 0 only)."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        try:
            from tensorboardX import SummaryWriter
            self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except ImportError:  # optional
            self.tb = None

    def write(self, step: int, prefix: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{f"{prefix}/{k}": v for k, v in metrics.items()}}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"{prefix}/{k}", v, step)
            self.tb.flush()

    def close(self):
        if self.enabled:
            self.jsonl.close()
            if self.tb is not None:
                self.tb.close()


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def print_memory_analysis(compiled, what: str) -> None:
    try:
        mem = compiled.memory_analysis()
    except Exception:  # not every backend reports it
        mem = None
    if mem is None:
        log.info("%s: no memory analysis on this backend", what)
        return
    mib = 2.0 ** 20
    log.info("%s compiled memory per device: arguments %.1f MiB, outputs %.1f MiB, temporaries "
             "%.1f MiB, code %.1f MiB", what, mem.argument_size_in_bytes / mib,
             mem.output_size_in_bytes / mib, mem.temp_size_in_bytes / mib,
             mem.generated_code_size_in_bytes / mib)


# ----------------------------------------------------------------------------- the loop
def evaluate(eval_fn, params, eval_dataset, batch_sharding, max_batches: int):
    sums = None
    for i, batch in enumerate(eval_dataset):
        if max_batches and i >= max_batches:
            break
        out = eval_fn(params, sharding.host_batch_to_global(batch, batch_sharding))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    if sums is None:
        return None
    return summarize_eval(jax.device_get(sums))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) MLM pretraining in `workdir`; returns the last metrics."""
    maybe_initialize_distributed(config)
    os.makedirs(workdir, exist_ok=True)
    if config.batch_size % config.grad_accum_steps:
        raise ValueError(f"batch_size {config.batch_size} is not a multiple of grad_accum_steps "
                         f"{config.grad_accum_steps}")

    # Mesh.
    mesh = sharding.make_mesh(tuple(config.mesh.shape))
    batch_sh = sharding.batch_sharding(mesh)
    log.info("mesh %s over %d devices, %d processes", dict(mesh.shape), jax.device_count(),
             jax.process_count())

    # Input.
    documents = data_lib.load_documents(config.data)
    tokenizer = load_tokenizer(config, workdir, documents)
    data = data_lib.make_mlm_datasets(
        config.data, tokenizer, seed=config.seed, global_batch_size=config.batch_size,
        process_index=jax.process_index(), process_count=jax.process_count(),
        documents=documents)

    # Model and optimizer.
    model_cfg = model_config(config)
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but "
                         f"model.vocab_size is {model_cfg.vocab_size}")
    if config.data.seq_len > model_cfg.max_sequence_length:
        raise ValueError(f"data.seq_len {config.data.seq_len} exceeds the position table "
                         f"({model_cfg.max_sequence_length} tokens)")
    model = LongformerForMaskedLM(model_cfg)
    tx = make_optimizer(config)
    schedule = learning_rate_schedule(config)

    # Sharded state, from a checkpoint in the workdir, init_from, or random.
    ckpt = checkpoints.Checkpointer(
        os.path.join(workdir, "checkpoints"), every=config.checkpoint.every_steps,
        keep=config.checkpoint.keep, async_save=config.checkpoint.async_save,
        identity={"model": config.model.to_dict(), "seq_len": config.data.seq_len,
                  "batch_size": config.batch_size, "seed": config.seed})
    rng = jax.random.key(config.seed)
    init_rng, dropout_rng = jax.random.split(rng)
    latest = ckpt.latest_step()
    initial = None if latest is not None else load_initial_params(config, model_cfg)
    if latest is not None:
        ckpt.check_identity(latest)  # refuse before building anything big
    state, state_sh = create_train_state(model, tx, mesh, init_rng, init_params=initial)
    if latest is not None:
        state = ckpt.restore(latest, checkpoints.abstract_like(state, state_sh), data.train)
        log.info("resumed from %s at step %d", ckpt.directory, latest)
    start = int(jax.device_get(state["step"]))

    # The compiled steps.
    step_fn = jax.jit(
        functools.partial(train_step, model=model, tx=tx, accum_steps=config.grad_accum_steps),
        in_shardings=(state_sh, batch_sh, sharding.replicated(mesh)),
        out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=(0,))
    token_chars = jnp.asarray(token_char_lengths(tokenizer, model_cfg.vocab_size))
    eval_fn = jax.jit(functools.partial(eval_step, model=model, token_chars=token_chars),
                      in_shardings=(state_sh["params"], batch_sh),
                      out_shardings=sharding.replicated(mesh))
    example = {k: jax.ShapeDtypeStruct((config.batch_size, config.data.seq_len), jnp.int32,
                                       sharding=batch_sh)
               for k in ("input_ids", "attention_mask", "labels")}
    t0 = time.time()
    compiled = step_fn.lower(state, example, dropout_rng).compile()
    log.info("train step compiled in %.1f s", time.time() - t0)
    print_memory_analysis(compiled, "train step")

    writer = MetricsWriter(workdir)
    if start == 0 and jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json(indent=2))
    log.info("training %s from step %d to %d: %d sequences x %d tokens per step, %d train "
             "sequences per epoch", type(model).__name__, start, config.total_steps,
             config.batch_size, config.data.seq_len, data.num_train_sequences)

    last: dict[str, Any] = {}
    pending = None  # the previous step's metrics, read one step late to keep the device busy
    window = {"loss_sum": 0.0, "tokens": 0, "correct": 0, "steps": 0}
    t_window, tokens_per_step = time.time(), config.batch_size * config.data.seq_len

    def check(step_done: int, metrics) -> None:
        m = jax.device_get(metrics)
        if not bool(m["finite"]):
            ckpt.close()
            raise NonFiniteError(
                f"step {step_done}: loss or gradient is not finite (loss sum {m['loss_sum']}, "
                f"gradient norm {m['grad_norm']}); the update was skipped and the run stopped. "
                f"The last good checkpoint is in {ckpt.directory} (latest step "
                f"{ckpt.latest_step()}). Lower the learning rate or check the data.")
        for k in ("loss_sum", "tokens", "correct"):
            window[k] += float(m[k])
        window["steps"] += 1
        window["grad_norm"] = float(m["grad_norm"])

    end = min(config.stop_after_steps or config.total_steps, config.total_steps)
    try:
        for step in range(start, end):
            batch = sharding.host_batch_to_global(next(data.train), batch_sh)
            state, metrics = compiled(state, batch, dropout_rng)
            if pending is not None:
                check(*pending)
            pending = (step + 1, metrics)
            done = step + 1
            if done % config.logging.every_steps == 0 or done == end:
                check(*pending)
                pending = None
                elapsed = time.time() - t_window
                train = {"loss": window["loss_sum"] / max(window["tokens"], 1),
                         "accuracy": window["correct"] / max(window["tokens"], 1),
                         "grad_norm": window["grad_norm"],
                         "learning_rate": float(schedule(done - 1)),
                         "tokens_per_sec": window["steps"] * tokens_per_step / max(elapsed, 1e-9)}
                eta = (config.total_steps - done) * elapsed / max(window["steps"], 1)
                log.info("step %d/%d | loss %.4f | lr %.2e | %s tok/s | ETA %s", done,
                         config.total_steps, train["loss"], train["learning_rate"],
                         f"{train['tokens_per_sec']:,.0f}", _format_eta(eta))
                writer.write(done, "train", train)
                last["train"] = train
                window = {"loss_sum": 0.0, "tokens": 0, "correct": 0, "steps": 0}
                t_window = time.time()
            if data.eval is not None and (done % config.logging.eval_every_steps == 0
                                          or done == end):
                ev = evaluate(eval_fn, state["params"], data.eval, batch_sh,
                              config.logging.eval_batches)
                if ev:
                    log.info("eval at step %d | loss %.4f | ppl %.2f | acc %.3f | bits/char %.3f",
                             done, ev["loss"], ev["perplexity"], ev["accuracy"],
                             ev["bits_per_char"])
                    writer.write(done, "eval", ev)
                    last["eval"] = ev
                t_window = time.time()
            if done % config.checkpoint.every_steps == 0 or done == end:
                if pending is not None:
                    check(*pending)  # never save a state after an unchecked step
                    pending = None
                ckpt.save(done, state, data.train, force=True)
        if pending is not None:
            check(*pending)
    finally:
        ckpt.close()
        writer.close()
    last["step"] = int(jax.device_get(state["step"]))
    last["params"] = state["params"]
    return last
