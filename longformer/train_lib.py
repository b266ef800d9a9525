"""Training: the train state, the pure train step, and the loop, for any task.

Read top to bottom: optimizer, sharded state, the step, then the loop (mesh, task, state,
checkpoint/resume, the compiled step, logging, evaluation). What is specific to an objective
(model, data, loss, metrics) lives in `longformer.tasks`. The train state is a plain dict
{'step', 'params', 'opt_state'}, its parameters in the model's own layout (the checkpoints' too);
dropout keys come from `fold_in(seed, step)`, so nothing random needs saving and a resumed run
reproduces the uninterrupted one bit for bit.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from longformer import checkpoints, evaluation, hf_checkpoint, sharding, tasks
from longformer.config import LongformerConfig
from longformer.tasks.base import Task

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


# ----------------------------------------------------------------------------- state
def _init_state(model, tx):
    """rng -> a fresh train state whose leaves are boxed with their logical axis names."""
    def init(rng):
        params = hf_checkpoint.init_params(model, rng, boxed=True)
        return {"step": jnp.zeros((), jnp.int32), "params": params,
                "opt_state": tx.init(params)}
    return init


def state_shardings(model, tx, mesh, rng, *, rules=sharding.DEFAULT_RULES):
    """NamedShardings of the train state (the model's own layout, which checkpoints hold too)."""
    abstract = jax.eval_shape(_init_state(model, tx), rng)
    return sharding.param_shardings(abstract, mesh, rules)


def create_train_state(model, tx, mesh, rng, *, rules=sharding.DEFAULT_RULES,
                       init_params: Any = None):
    """The train state, created directly with its shardings (never whole on one device).

    Returns (state, shardings). With `init_params` (host arrays of the model's parameter tree)
    the parameters are those instead of random ones.
    """
    shardings = state_shardings(model, tx, mesh, rng, rules=rules)
    if init_params is None:
        init = _init_state(model, tx)
        state = jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(rng)
    else:
        def from_params(params):
            return {"step": jnp.zeros((), jnp.int32), "params": params,
                    "opt_state": tx.init(params)}
        params = jax.device_put(init_params, shardings["params"])
        state = jax.jit(from_params, out_shardings=shardings)(params)
    return state, shardings


# ----------------------------------------------------------------------------- steps
def train_step(state, batch, base_rng, *, task: Task, tx, accum_steps: int):
    """One optimizer update over the global batch, in `accum_steps` micro-batches.

    The gradient is that of the task's loss averaged over the WHOLE batch (its weight is
    counted before the split). A non-finite loss or gradient leaves the state unchanged and is
    reported in the metrics.
    """
    step = state["step"]
    rng = jax.random.fold_in(base_rng, step)
    weight = task.weight_fn(batch)
    total = jnp.maximum(weight, 1).astype(jnp.float32)
    micro = jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape((x.shape[0] // accum_steps, accum_steps) + x.shape[1:]),
                               0, 1), batch)

    def micro_loss(params, mb, key):
        loss_sum, aux = task.loss_fn(params, mb, key)
        return loss_sum / total, (loss_sum, aux)

    grad_fn = jax.grad(micro_loss, has_aux=True)

    def body(carry, xs):
        mb, i = xs
        grads, sums = grad_fn(state["params"], mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (grads, sums)), None

    zeros = jax.eval_shape(grad_fn, state["params"], jax.tree.map(lambda x: x[0], micro), rng)
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), zeros)
    (grads, (loss_sum, aux)), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum_steps)))

    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss_sum) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = {"step": step + 1, "params": params, "opt_state": opt_state}
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state,
                             {**state, "step": step + 1})
    metrics = {"loss_sum": loss_sum, "weight": weight, "grad_norm": grad_norm, "finite": finite,
               **aux}
    return new_state, metrics


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
class WorkdirError(OSError):
    """The workdir cannot be created or written."""


def check_writable(workdir: str) -> None:
    """Creates `workdir` and writes a file in it, so a run that cannot save fails before any
    training work rather than at its first checkpoint."""
    probe = os.path.join(workdir, f".write_test.{jax.process_index()}.{os.getpid()}")
    try:
        os.makedirs(workdir, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise WorkdirError(f"the workdir {os.path.abspath(workdir)} cannot be written "
                           f"({e.strerror or e}: {e.filename or workdir}); choose another "
                           f"--workdir or fix its permissions") from None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) training of `config.task` in `workdir`; returns the last metrics."""
    maybe_initialize_distributed(config)
    check_writable(workdir)
    if config.batch_size % config.grad_accum_steps:
        raise ValueError(f"batch_size {config.batch_size} is not a multiple of grad_accum_steps "
                         f"{config.grad_accum_steps}")

    # Mesh.
    mesh = sharding.make_mesh(tuple(config.mesh.shape))
    batch_sh = sharding.batch_sharding(mesh)
    log.info("mesh %s over %d devices, %d processes", dict(mesh.shape), jax.device_count(),
             jax.process_count())

    # Task: model, input pipelines, loss and evaluation.
    task = tasks.build(config, workdir)
    model = task.model
    model_cfg = getattr(model, "config", None)
    if isinstance(model_cfg, LongformerConfig):  # built for the mesh's platform, or refused
        platform = model_cfg.replace(platform="auto").resolve(mesh).platform
        if model_cfg.platform != platform:
            raise ValueError(f"the model was built for platform {model_cfg.platform!r} but the "
                             f"mesh's devices are {platform!r}; set model.platform='auto'")
        log.info("model built for %s: attention layout %r", platform, model_cfg.band_impl)
    tx = make_optimizer(config)
    schedule = learning_rate_schedule(config)

    # Sharded state: from a checkpoint in the workdir, from init_from, or random.
    ckpt = checkpoints.Checkpointer(
        os.path.join(workdir, "checkpoints"), every=config.checkpoint.every_steps,
        keep=config.checkpoint.keep, async_save=config.checkpoint.async_save,
        identity=task.identity, data_files=task.data_files)
    ckpt.fingerprints()  # of the data as this run reads it
    init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
    latest = ckpt.latest_step()
    if latest is not None:
        ckpt.check_identity(latest, unreadable_ok=True)  # refuse before building anything big
    initial = task.initial_params() if latest is None else None
    state, state_sh = create_train_state(model, tx, mesh, init_rng, init_params=initial)
    if latest is not None:
        resumed, restored = ckpt.restore_latest(
            checkpoints.abstract_like(state, state_sh), task.train_data,
            allow_data_change=config.checkpoint.allow_data_change)
        state = restored
        log.info("resumed from %s at step %d", ckpt.directory, resumed)
    start = int(jax.device_get(state["step"]))

    # The compiled steps.
    repl = sharding.replicated(mesh)
    step_fn = jax.jit(
        functools.partial(train_step, task=task, tx=tx, accum_steps=config.grad_accum_steps),
        in_shardings=(state_sh, batch_sh, repl), out_shardings=(state_sh, repl),
        donate_argnums=(0,))
    eval_fn = jax.jit(task.eval_fn, in_shardings=(state_sh["params"], batch_sh),
                      out_shardings=repl)
    example = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sh)
               for k, (shape, dtype) in task.batch_spec.items()}
    t0 = time.time()
    with sharding.activation_context(mesh):
        compiled = step_fn.lower(state, example, dropout_rng).compile()
    log.info("train step compiled in %.1f s", time.time() - t0)
    print_memory_analysis(compiled, "train step")

    writer = MetricsWriter(workdir)
    if start == 0 and jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json(indent=2))
    tokens_per_step = int(np.prod(next(iter(task.batch_spec.values()))[0]))  # all of input_ids
    log.info("training %s (%s) from step %d to %d: batch %s; %s", type(model).__name__,
             config.task, start, config.total_steps,
             "x".join(map(str, next(iter(task.batch_spec.values()))[0])),
             ", ".join(f"{k} {v}" for k, v in task.info.items()))

    last: dict[str, Any] = {}
    pending = None  # the previous step's metrics, read one step late to keep the device busy
    window: dict[str, float] = {}
    t_window = time.time()

    def check(step_done: int, metrics) -> None:
        m = jax.device_get(metrics)
        if not bool(m["finite"]):
            ckpt.close()
            raise NonFiniteError(
                f"step {step_done}: loss or gradient is not finite (loss sum {m['loss_sum']}, "
                f"gradient norm {m['grad_norm']}); the update was skipped and the run stopped. "
                f"The last good checkpoint is in {ckpt.directory} (latest step "
                f"{ckpt.latest_step()}). Lower the learning rate or check the data.")
        for k, v in m.items():
            if k not in ("finite", "grad_norm"):
                window[k] = window.get(k, 0.0) + float(v)
        window["steps"] = window.get("steps", 0) + 1
        window["grad_norm"] = float(m["grad_norm"])

    end = min(config.stop_after_steps or config.total_steps, config.total_steps)
    try:
        for step in range(start, end):
            batch = next(task.train_data)
            task.check_batch(batch, f"training batch of step {step + 1}: ")
            batch = sharding.host_batch_to_global(batch, batch_sh)
            state, metrics = compiled(state, batch, dropout_rng)
            if pending is not None:
                check(*pending)
            pending = (step + 1, metrics)
            done = step + 1
            if done % config.logging.every_steps == 0 or done == end:
                check(*pending)
                pending = None
                elapsed = time.time() - t_window
                weight = max(window.pop("weight"), 1.0)
                steps = window.pop("steps")
                train = {"loss": window.pop("loss_sum") / weight,
                         "grad_norm": window.pop("grad_norm"),
                         "learning_rate": float(schedule(done - 1)),
                         "tokens_per_sec": steps * tokens_per_step / max(elapsed, 1e-9),
                         **{k: v / weight for k, v in window.items()}}
                eta = (end - done) * elapsed / max(steps, 1)
                log.info("step %d/%d | loss %.4f | lr %.2e | %s tok/s | ETA %s", done,
                         config.total_steps, train["loss"], train["learning_rate"],
                         f"{train['tokens_per_sec']:,.0f}", _format_eta(eta))
                writer.write(done, "train", train)
                last["train"] = train
                window = {}
                t_window = time.time()
            if task.eval_data is not None and (done % config.logging.eval_every_steps == 0
                                               or done == end):
                with sharding.activation_context(mesh):
                    outputs = evaluation.eval_outputs(
                        eval_fn, state["params"], task.eval_data, batch_sh,
                        config.logging.eval_batches, check=task.check_batch)
                if outputs:
                    ev = task.summarize(outputs)
                    log.info("eval at step %d | %s", done,
                             " | ".join(f"{k} {v:.4g}" for k, v in ev.items()))
                    writer.write(done, "eval", ev)
                    last["eval"] = ev
                t_window = time.time()
            if done % config.checkpoint.every_steps == 0 or done == end:
                if pending is not None:
                    check(*pending)  # never save a state after an unchecked step
                    pending = None
                ckpt.save(done, state, task.train_data, force=True)
        if pending is not None:
            check(*pending)
    except BaseException:
        ckpt.close(quiet=True)  # the error under way is the one to report
        raise
    else:
        ckpt.close()
    finally:
        writer.close()
    last["step"] = int(jax.device_get(state["step"]))
    last["params"] = state["params"]
    last["task"] = task
    return last
