"""The platform is chosen on purpose: what `auto` resolves to, that a model built for a GPU or a
TPU lowers (jax.export, from this CPU) with the batched attention layout and no (N, N) array, and
that the batched layout's train step is memory-sound (its backward recomputes the scores)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from longformer import sharding
from longformer.config import LongformerConfig
from longformer.hf_checkpoint import abstract_params
from longformer.modeling import LongformerForMaskedLM, LongformerModel

TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=4100, attention_window=8,
            max_global_tokens=2, remat="minimal")


def test_auto_resolves_from_the_devices():
    cfg = LongformerConfig(**TINY)
    assert cfg.platform == "auto"
    assert cfg.resolve().platform == jax.devices()[0].platform == "cpu"
    assert cfg.resolve("cuda").platform == "gpu" and cfg.resolve("tpu").platform == "tpu"
    assert cfg.resolve(sharding.make_mesh((-1, 1, 1))).platform == "cpu"
    assert cfg.replace(platform="tpu").resolve("cpu").platform == "tpu"  # explicit is kept
    assert LongformerModel(cfg).config.platform == "cpu"  # resolved when the model is built
    assert cfg.resolve("cpu").band_impl == "loop" and cfg.resolve("gpu").band_impl == "batched"
    assert cfg.replace(attention_impl="batched").resolve("cpu").band_impl == "batched"
    assert LongformerConfig(**TINY, attention_impl="banded").attention_impl == "auto"  # old name
    with pytest.raises(ValueError, match="platform 'metal' is not one of"):
        cfg.replace(platform="metal")


def _module_text(model, train: bool, length: int, platform: str) -> str:
    params = {"params": _unflatten(abstract_params(model))}
    ids = jax.ShapeDtypeStruct((2, length), jnp.int32)

    def forward(p, ids):
        glob = jnp.zeros_like(ids).at[:, 0].set(1)
        return model.apply(p, ids, global_attention_mask=glob).logits

    def step(p, opt_state, ids, key):
        def loss(p):
            glob = jnp.zeros_like(ids).at[:, 0].set(1)
            return model.apply(p, ids, global_attention_mask=glob, labels=ids,
                               deterministic=False, rngs={"dropout": key}).loss
        updates, opt_state = tx.update(jax.grad(loss)(p), opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    tx = optax.adamw(1e-3)
    if train:
        args = (params, jax.eval_shape(tx.init, params), ids,
                jax.eval_shape(lambda: jax.random.key(0)))
        fn = step
    else:
        args, fn = (params, ids), forward
    return jax.export.export(jax.jit(fn), platforms=[platform])(*args).mlir_module()


def _unflatten(flat):
    from flax import traverse_util
    return traverse_util.unflatten_dict(flat)


def _square(text: str, n: int) -> int:
    return len(re.findall(rf"tensor<(?:[^>]*x)?{n}x{n}(?:x[^>]*)?>", text))


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_export_for_accelerators_uses_the_batched_layout(platform):
    """Forward and train step lower for the accelerator with all blocks batched (no loop over
    query blocks: an unrolled model has no while loop at all) and never an (N, N) array; the
    same model built for the CPU has the block loop, and the dense baseline does show (N, N)
    arrays, so the checks can fail."""
    n = 192
    cfg = LongformerConfig(**TINY)
    model = LongformerForMaskedLM(cfg.replace(platform=platform))
    assert model.config.band_impl == "batched"
    for train in (False, True):
        text = _module_text(model, train, n, platform)
        assert _square(text, n) == 0, (platform, train)
        assert "stablehlo.while" not in text, (platform, train)
    cpu = _module_text(LongformerForMaskedLM(cfg.replace(platform="cpu")), True, n, "cpu")
    assert "stablehlo.while" in cpu
    dense = LongformerForMaskedLM(cfg.replace(platform=platform, attention_impl="dense"))
    assert _square(_module_text(dense, False, n, platform), n) > 0


def _train_step_bytes(impl: str, length: int) -> int:
    """XLA's planned memory (temporaries, arguments, outputs) of a compiled train step."""
    model = LongformerModel(LongformerConfig(**TINY, attention_impl=impl, scan_layers=True),
                            add_pooling_layer=False)
    params = {"params": _unflatten(abstract_params(model))}

    def step(p, ids):
        def loss(p):
            glob = jnp.zeros_like(ids).at[:, 0].set(1)
            out = model.apply(p, ids, global_attention_mask=glob).last_hidden_state
            return jnp.mean(jnp.square(out))
        return jax.grad(loss)(p)

    ids = jax.ShapeDtypeStruct((1, length), jnp.int32)
    m = jax.jit(step).lower(params, ids).compile().memory_analysis()
    return m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes


def test_batched_layout_train_step_memory_is_linear():
    """The accelerator layout, compiled here: memory linear in length (4x the tokens, at most
    4.5x the bytes) and within 2x the CPU loop's at the same length."""
    short, long = (_train_step_bytes("batched", n) for n in (1024, 4096))
    loop = _train_step_bytes("loop", 4096)
    assert long / short < 4.5, (short, long)
    assert long < 2 * loop, (long, loop)
    np.testing.assert_array_less(0, [short, long, loop])


@pytest.mark.parametrize("loop", [True, False])
def test_both_layouts_name_their_output_for_minimal_remat(loop):
    """remat='minimal' keeps what is named "attention": the loop's output and the batched
    layout's alike."""
    from longformer import band
    q = jnp.ones((1, 32, 2, 8), jnp.float32)
    mask = jnp.ones((1, 32), bool)
    text = str(jax.make_jaxpr(lambda q: band.band_attention(q, q, q, mask, left=4, right=4,
                                                            loop=loop))(q))
    assert "name=attention" in text
