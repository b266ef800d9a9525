"""The benchmarked cases: how each implementation builds its model and runs one step.

Every case is the base size (12 layers, hidden 768, 12 heads, ffn 3072, vocab 50265, window 512),
batch 1, random weights, dropout 0, one global token (token 0) for the Longformer models, and the
same loss for every train step: mean(last_hidden_state ** 2), then backward and an AdamW update.

A case runs in its own process (`bench/worker.py`) so that its peak memory is its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import re
import time

BASE = dict(vocab=50265, hidden=768, layers=12, heads=12, ffn=3072, window=512)

# name -> (family, compute dtype, remat policy)
IMPLS = {
    "jax-f32": ("jax", "float32", "none"),
    "jax-f32-min": ("jax", "float32", "minimal"),  # keeps matmul outputs, recomputes the rest
    "jax-f32-remat": ("jax", "float32", "full"),
    "jax-bf16": ("jax", "bfloat16", "none"),
    "jax-bf16-min": ("jax", "bfloat16", "minimal"),
    "jax-bf16-remat": ("jax", "bfloat16", "full"),
    "jax-dense": ("jax-dense", "float32", "none"),  # this model's layers, (N, N) masked attention
    "ref": ("ref", "float32", "none"),  # transformers' PyTorch Longformer (the reference)
    # The reference in its best bfloat16 configuration: float32 weights and AdamW under
    # torch.autocast(bfloat16) (oneDNN's bf16 kernels, AMX where the CPU has it).
    "ref-bf16": ("ref", "bfloat16", "none"),
    "roberta-sdpa": ("roberta", "float32", "none"),  # transformers' RoBERTa, torch fused attention
}
REFERENCE = "ref"
REFERENCE_BF16 = "ref-bf16"


# ----------------------------------------------------------------------------- model FLOPs
def model_flops(family: str, length: int, train: bool, global_tokens: int = 1) -> float:
    """Useful FLOPs of one step (a multiply-add is 2; a train step is 3x the forward).

    Longformer: the dense projections (q, k, v, output, ffn), the global key/value projections
    (every token), the exact band (2 * (w + 1) keys per query: scores and values), the global
    columns and rows. Full attention (RoBERTa, dense baseline): N keys per query.
    The embedding lookup, LayerNorms and softmax are not counted (no multiply-adds).
    """
    h, ffn, layers, w = BASE["hidden"], BASE["ffn"], BASE["layers"], BASE["window"]
    n, g = length, global_tokens
    dense = 2 * n * (4 * h * h + 2 * h * ffn)
    if family in ("roberta", "jax-dense"):
        attn = 4 * n * n * h
        extra = 0
    else:
        attn = 4 * n * (w + 1) * h + 4 * n * g * h  # band + global columns
        extra = 2 * n * 2 * h * h + 2 * g * h * h + 4 * g * n * h  # global k/v/q proj + rows
    fwd = layers * (dense + attn + extra)
    return 3 * fwd if train else fwd


# ----------------------------------------------------------------------------- memory
def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmHWM: peak resident set, VmRSS: current)."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) * 1024


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    return _status("VmHWM")


def measured_peak(fn) -> int:
    """Peak resident set of one more call of fn, after handing freed heap pages back to the OS
    (glibc's malloc_trim) and restarting the count: what the step needs (parameters, optimizer
    state, activations, runtime), not garbage left by setup or compilation. Done alike for every
    implementation, after its timed calls, so that the trim cannot change their timing."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    reset_peak_rss()
    fn()
    return peak_rss()


# ----------------------------------------------------------------------------- timing
@dataclasses.dataclass
class Timing:
    compile_s: float
    times: list
    peak_rss: int
    analysis: dict | None = None

    @property
    def best(self):
        return min(self.times)


def _time(fn, repeats: int, budget_s: float) -> list:
    """Runs fn `repeats` times (fewer when one call takes more than budget_s / repeats)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if sum(times) > budget_s:
            break
    return times


# ----------------------------------------------------------------------------- JAX
def _jax_config(length: int, dtype: str, remat: str, dense: bool, block: int = 0,
                attention_impl: str = ""):
    from longformer.config import LongformerConfig
    # BENCH_ATTENTION_IMPL picks a layout by hand (e.g. 'batched', the accelerator's, on CPU).
    impl = attention_impl or os.environ.get("BENCH_ATTENTION_IMPL", "auto")
    kw = {"attention_impl": "dense" if dense else impl}
    return LongformerConfig(
        vocab_size=BASE["vocab"], hidden_size=BASE["hidden"], num_hidden_layers=BASE["layers"],
        num_attention_heads=BASE["heads"], intermediate_size=BASE["ffn"],
        attention_window=BASE["window"], max_position_embeddings=max(length, 512) + 2,
        type_vocab_size=1, layer_norm_eps=1e-5, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, dtype=dtype, remat=remat,
        # The library's default budget (one token used); BENCH_GLOBAL_BUDGET sets another.
        max_global_tokens=int(os.environ.get("BENCH_GLOBAL_BUDGET",
                                             LongformerConfig.max_global_tokens)),
        attention_block_size=block, scan_layers=True, **kw)  # scan: remat takes effect on CPU


def _analysis(compiled) -> dict | None:
    m = compiled.memory_analysis()
    if m is None:
        return None
    total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)
    return {"temp": m.temp_size_in_bytes, "args": m.argument_size_in_bytes,
            "out": m.output_size_in_bytes, "alias": m.alias_size_in_bytes, "total": total}


def _traced(fn, profile_dir: str, mode: str):
    """One more call of fn under the JAX profiler (a trace per mode, for TensorBoard/Perfetto)."""
    import jax
    if profile_dir:
        with jax.profiler.trace(os.path.join(profile_dir, mode)):
            fn()


def jax_train_step(model, params):
    """(step, state): the benchmarked train step, mean(last_hidden_state ** 2) + AdamW."""
    import jax
    import jax.numpy as jnp
    import optax
    opt = optax.adamw(1e-5, weight_decay=0.01)

    def loss_fn(p, ids, gmask):
        out = model.apply(p, ids, global_attention_mask=gmask).last_hidden_state
        return jnp.mean(jnp.square(out.astype(jnp.float32)))

    def step(state, ids, gmask):
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], ids, gmask)
        updates, opt_state = opt.update(grads, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt": opt_state}, loss

    return step, {"params": params, "opt": opt.init(params)}


def run_jax(impl: str, length: int, modes, repeats: int, budget_s: float, block: int = 0,
            profile_dir: str = ""):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from longformer.hf_checkpoint import init_params
    from longformer.modeling import LongformerModel

    family, dtype, remat = IMPLS[impl]
    cfg = _jax_config(length, dtype, remat, family == "jax-dense", block)
    model = LongformerModel(cfg, add_pooling_layer=False)
    params = init_params(model, jax.random.key(0))  # a scan model's layers come stacked
    rng = np.random.RandomState(0)
    ids = jnp.asarray(rng.randint(3, BASE["vocab"], (1, length)), jnp.int32)
    gmask = jnp.zeros((1, length), jnp.int32).at[:, 0].set(1)
    results = {}

    if "fwd" in modes:
        fwd = jax.jit(lambda p, ids, g: model.apply(p, ids, global_attention_mask=g)
                      .last_hidden_state)
        t = time.perf_counter()
        compiled = fwd.lower(params, ids, gmask).compile()
        compile_s = time.perf_counter() - t
        compile_peak = peak_rss()
        jax.block_until_ready(compiled(params, ids, gmask))  # warm-up
        times = _time(lambda: jax.block_until_ready(compiled(params, ids, gmask)), repeats,
                      budget_s)
        _traced(lambda: jax.block_until_ready(compiled(params, ids, gmask)), profile_dir, "fwd")
        peak = measured_peak(lambda: jax.block_until_ready(compiled(params, ids, gmask)))
        results["fwd"] = Timing(compile_s, times, peak, _analysis(compiled))
        results["fwd"].analysis = dict(results["fwd"].analysis or {}, compile_rss=compile_peak)
        del compiled

    if "train" in modes:
        step, state = jax_train_step(model, params)
        t = time.perf_counter()
        compiled = jax.jit(step, donate_argnums=0).lower(state, ids, gmask).compile()
        compile_s = time.perf_counter() - t
        compile_peak = peak_rss()
        box = [state]

        def once():
            box[0], loss = compiled(box[0], ids, gmask)
            jax.block_until_ready(loss)

        once()  # warm-up
        times = _time(once, repeats, budget_s)
        _traced(once, profile_dir, "train")
        results["train"] = Timing(compile_s, times, measured_peak(once), _analysis(compiled))
        results["train"].analysis = dict(results["train"].analysis or {}, compile_rss=compile_peak)
    return results


# ----------------------------------------------------------------------------- PyTorch
def run_torch(impl: str, length: int, modes, repeats: int, budget_s: float):
    import numpy as np
    import torch
    import transformers

    torch.set_num_threads(2)
    torch.manual_seed(0)
    family, dtype = IMPLS[impl][:2]

    def precision():
        return (torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16"
                else contextlib.nullcontext())
    common = dict(vocab_size=BASE["vocab"], hidden_size=BASE["hidden"],
                  num_hidden_layers=BASE["layers"], num_attention_heads=BASE["heads"],
                  intermediate_size=BASE["ffn"], max_position_embeddings=max(length, 512) + 2,
                  type_vocab_size=1, layer_norm_eps=1e-5, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
    if family == "ref":
        config = transformers.LongformerConfig(attention_window=BASE["window"], **common)
        model = transformers.LongformerModel(config, add_pooling_layer=False)
    else:
        config = transformers.RobertaConfig(**common)
        config._attn_implementation = "sdpa"
        model = transformers.RobertaModel(config, add_pooling_layer=False)
    rng = np.random.RandomState(0)
    ids = torch.from_numpy(rng.randint(3, BASE["vocab"], (1, length)))
    kwargs = {"input_ids": ids}
    if family == "ref":
        g = torch.zeros((1, length), dtype=torch.long)
        g[:, 0] = 1
        kwargs["global_attention_mask"] = g
    results = {}

    if "fwd" in modes:
        model.eval()

        def fwd():
            with torch.inference_mode(), precision():
                return model(**kwargs).last_hidden_state

        t = time.perf_counter()
        fwd()  # warm-up (reported as "compile": first-call overhead)
        first = time.perf_counter() - t
        results["fwd"] = Timing(0.0, _time(fwd, repeats, budget_s), measured_peak(fwd),
                                {"first_call_s": first})

    if "train" in modes:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)

        def step():
            with precision():  # autocast the forward; backward follows its dtypes
                out = model(**kwargs).last_hidden_state
                loss = out.float().square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        t = time.perf_counter()
        step()  # warm-up (creates AdamW's state)
        first = time.perf_counter() - t
        results["train"] = Timing(0.0, _time(step, repeats, budget_s), measured_peak(step),
                                  {"first_call_s": first})
    return results


# ----------------------------------------------------------------------------- matmul rate
def matmul_rate(dtype: str = "float32", n: int = 3072, repeats: int = 5) -> float:
    """FLOP/s of a jitted square jnp.dot on this machine (best of `repeats`)."""
    import jax
    import jax.numpy as jnp
    a = jnp.ones((n, n), dtype)
    b = jnp.ones((n, n), dtype)
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32)
                ).lower(a, b).compile()
    jax.block_until_ready(f(a, b))
    best = min(_time(lambda: jax.block_until_ready(f(a, b)), repeats, 1e9))
    return 2 * n ** 3 / best
