"""Dilated and causal windows (longformer/attention.py `dilated_band_attention`, config fields).

The reference (`tests/reference.py`) builds, per head, an explicit (N, N) mask: key j is visible
to query i when j - i is a multiple of the head's dilation d and lies in [-left*d, right*d]
(right=0 is causal). Values and gradients must agree for many window / dilation / length
combinations, windows longer than the sequence included. Each case runs a batch of several key-mask patterns at once
(one compile per case) so the file stays fast on two CPU cores.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longformer import attention as A
from longformer.config import LongformerConfig
from tests.reference import dense_attention, effective_globals, einsum

H, D = 4, 4
ATOL = 2e-5


def key_masks(length, seed):
    """Three patterns: all real, trailing padding, random holes (at least one real key)."""
    rng = np.random.default_rng(seed)
    full = np.ones(length, bool)
    tail = np.arange(length) < max(1, (2 * length) // 3)
    holes = rng.random(length) < 0.7
    holes[0] = True
    return np.stack([full, tail, holes])


def values_and_grads(ours, ref, cot, *args):
    """Outputs and input cotangent-gradients of both functions, in one compile."""
    @jax.jit
    def run(cot, *args):
        out, vjp = jax.vjp(ours, *args)
        want, vjp_ref = jax.vjp(ref, *args)
        return out, want, vjp(cot), vjp_ref(cot)
    return run(cot, *args)


def arrays(seed, count, shape):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.normal(size=shape).astype(np.float32)) for _ in range(count)]


# ----------------------------------------------------------------------------- cases
# (length, left, right, dilation): causal bands have right=0; 40 is longer than every sequence.
CASES = [
    (1, 3, 0, 2),
    (7, 1, 1, 2), (7, 3, 0, 3), (7, 40, 0, 2), (7, 40, 40, (1, 2, 3, 5)),
    (16, 4, 0, 1), (16, 2, 2, 4), (16, 4, 0, (1, 1, 2, 2)), (16, 3, 1, (2, 1, 4, 1)),
    (16, 8, 8, 16),
    (29, 5, 0, (1, 2, 1, 3)), (29, 40, 0, (2, 1, 1, 1)),
    (33, 8, 0, 2), (33, 16, 16, (1, 2, 4, 8)),
]


@pytest.mark.parametrize("length,left,right,dilation", CASES)
def test_dilated_band_matches_dense(length, left, right, dilation):
    q, k, v, cot = arrays(length * 7 + left, 4, (3, length, H, D))
    km = jnp.asarray(key_masks(length, seed=length))
    per_head = A.layer_dilation(dilation, H)

    def ours(q, k, v):
        return A.dilated_band_attention(q, k, v, km, left=left, right=right, dilation=dilation,
                                        query_mask=km)

    def ref(q, k, v):
        return dense_attention(q, k, v, km, left=left, right=right, dilation=per_head,
                               query_mask=km)[0]

    out, want, grads, grads_ref = values_and_grads(ours, ref, cot, q, k, v)
    np.testing.assert_allclose(out, want, atol=ATOL)
    for g, g_ref, name in zip(grads, grads_ref, "qkv"):
        np.testing.assert_allclose(g, g_ref, atol=ATOL, err_msg=f"d{name}")


@pytest.mark.parametrize("length,left,right,dilation", [
    (12, 2, 2, (1, 2, 3, 1)), (9, 40, 40, 3)])
def test_dilated_longformer_attention_with_globals(length, left, right, dilation):
    """Global tokens are not dilated: extra columns for every local row, full rows of their own."""
    q, k, v, qg_all, kg, vg, cot = arrays(length + left, 7, (3, length, H, D))
    km = key_masks(length, seed=1)
    is_global = np.zeros_like(km)
    is_global[0, [0, 5]] = True
    is_global[1, 1] = True
    is_global &= km
    budget = 2
    am, gl = jnp.asarray(km), jnp.asarray(is_global)
    per_head = A.layer_dilation(dilation, H)

    def ours(q, k, v, qg_all, kg, vg):
        g = A.global_token_indices(gl, budget)
        return A.longformer_attention(q, k, v, am, left=left, right=right, dilation=dilation,
                                      globals_=g, q_global=A.gather_rows(qg_all, g.index),
                                      k_global=kg, v_global=vg)

    onehot = effective_globals(is_global, budget)

    def ref(q, k, v, qg_all, kg, vg):
        qg = einsum("bgn,bnhd->bghd", onehot, qg_all)  # the global tokens' own queries
        return dense_attention(q, k, v, am, left=left, right=right, dilation=per_head,
                               query_mask=am, onehot=onehot, qg=qg, kg=kg, vg=vg)[0]

    real = np.asarray(km)[:, :, None, None]
    out, want, grads, grads_ref = values_and_grads(ours, ref, cot * real, q, k, v, qg_all, kg, vg)
    np.testing.assert_allclose(np.where(real, out, 0), np.where(real, want, 0), atol=ATOL)
    for g, g_ref in zip(grads, grads_ref):
        np.testing.assert_allclose(g, g_ref, atol=ATOL)


def test_probs_columns_are_dilated_offsets():
    """With return_probs, band column t holds the weight of key i + (t - left) * d."""
    length, left, right, dilation = 13, 2, 1, (1, 3, 2, 1)
    q, k, v = arrays(3, 3, (3, length, H, D))
    km = jnp.asarray(key_masks(length, seed=2))
    _, probs = jax.jit(lambda q, k, v: A.dilated_band_attention(
        q, k, v, km, left=left, right=right, dilation=dilation, query_mask=km,
        return_probs=True))(q, k, v)
    _, p_ref, _ = jax.jit(lambda q, k, v: dense_attention(
        q, k, v, km, left=left, right=right, dilation=dilation, query_mask=km))(q, k, v)
    probs, p_ref = np.asarray(probs), np.asarray(p_ref)
    assert probs.shape == (3, H, length, left + right + 1)
    for h, d in enumerate(dilation):
        for i in range(length):
            for t in range(left + right + 1):
                j = i + (t - left) * d
                want = p_ref[:, h, i, j] if 0 <= j < length else 0.0
                np.testing.assert_allclose(probs[:, h, i, t], want, atol=ATOL)


def test_dilation_one_is_the_band_op_exactly():
    """Undilated heads take the unchanged path: bit-identical to `band_attention`."""
    q, k, v = arrays(4, 3, (2, 24, H, D))
    km = jnp.ones((2, 24), bool)
    a = jax.jit(lambda q, k, v: A.dilated_band_attention(q, k, v, km, left=4, right=4,
                                                          dilation=1))(q, k, v)
    b = jax.jit(lambda q, k, v: A.band_attention(q, k, v, km, left=4, right=4))(q, k, v)
    np.testing.assert_array_equal(a, b)


def test_no_quadratic_intermediate_with_dilation():
    """Dilated causal attention at N=2048 never builds an (N, N)-sized array."""
    n = 2048
    q, k, v = [jax.ShapeDtypeStruct((1, n, H, D), jnp.float32)] * 3
    km = jax.ShapeDtypeStruct((1, n), bool)

    def loss(q, k, v, km):
        out = A.dilated_band_attention(q, k, v, km, left=32, right=0, dilation=(1, 2, 4, 1))
        return jnp.sum(out ** 2)

    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v, km)
    sizes = []

    def walk(jx):
        for eqn in jx.eqns:
            for var in eqn.outvars:
                sizes.append(int(np.prod(var.aval.shape)) if hasattr(var.aval, "shape") else 0)
            for sub in jax.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jaxpr.jaxpr)
    assert max(sizes) < n * n // 8, max(sizes)


# ----------------------------------------------------------------------------- config
def test_config_dilation_forms():
    base = dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=16, intermediate_size=32)
    c = LongformerConfig(**base)
    assert c.layer_dilations == ((1,) * 4, (1,) * 4) and not c.causal
    c = LongformerConfig(**base, attention_dilation=2)
    assert c.layer_dilations == ((2,) * 4, (2,) * 4)
    c = LongformerConfig(**base, attention_dilation=[1, 3])
    assert c.layer_dilations == ((1,) * 4, (3,) * 4)
    c = LongformerConfig(**base, attention_dilation=[1, [2, 2, 1, 1]])
    assert c.layer_dilations == ((1,) * 4, (2, 2, 1, 1))
    assert "attention_dilation" not in c.to_hf_dict() and "causal" not in c.to_hf_dict()
    c = LongformerConfig(**base, attention_window=8, causal=True, max_global_tokens=0)
    assert c.layer_extents == ((8, 0), (8, 0))
    assert LongformerConfig(**base, attention_window=8).layer_extents == ((4, 4), (4, 4))


@pytest.mark.parametrize("kw,msg", [
    (dict(attention_dilation=0), "attention_dilation"),
    (dict(attention_dilation=[1, 2, 3]), "one entry per layer"),
    (dict(attention_dilation=[1, [1, 2]]), "one per head"),
    (dict(attention_dilation=[1, [1, 2, 0, 1]]), "positive"),
    (dict(causal=True), "leaks the future"),
    (dict(attention_dilation=2, attention_impl="dense"), "dense"),
])
def test_config_validation(kw, msg):
    base = dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=16, intermediate_size=32)
    with pytest.raises(ValueError, match=msg):
        LongformerConfig(**base, **kw)


def test_encoder_wiring_causal_and_dilated():
    """LongformerModel passes the config's extents and dilation to the op: causal, and dilation
    changes the result."""
    from longformer.modeling import LongformerModel
    base = dict(vocab_size=50, num_hidden_layers=2, num_attention_heads=4, hidden_size=16,
                intermediate_size=32, max_position_embeddings=64, attention_window=(4, 8),
                causal=True, max_global_tokens=0, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0)
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 50, (2, 21)), jnp.int32)
    dilated = LongformerModel(LongformerConfig(**base, attention_dilation=[1, [1, 2, 3, 1]]),
                              add_pooling_layer=False)
    plain = LongformerModel(LongformerConfig(**base), add_pooling_layer=False)
    params = dilated.init(jax.random.key(0), ids)

    @jax.jit
    def run(ids):
        return (dilated.apply(params, ids).last_hidden_state,
                plain.apply(params, ids).last_hidden_state)

    out, out_plain = run(ids)
    assert np.abs(np.asarray(out) - np.asarray(out_plain)).max() > 1e-3
    for t in (3, 11, 20):
        changed, _ = run(ids.at[:, t].set(ids[:, t] % 40 + 4))
        np.testing.assert_allclose(changed[:, :t], out[:, :t], atol=1e-6, err_msg=f"t={t}")
        assert np.abs(np.asarray(changed[:, t] - out[:, t])).max() > 1e-4


def test_scanned_layers_keep_per_layer_dilation():
    """scan_layers groups layers by window AND dilation: same result as the unrolled encoder."""
    from longformer.layout import stack_layers
    from longformer.modeling import LongformerModel
    base = dict(vocab_size=50, num_hidden_layers=3, num_attention_heads=4, hidden_size=16,
                intermediate_size=32, max_position_embeddings=64, attention_window=8,
                attention_dilation=[1, [1, 2, 1, 1], [1, 2, 1, 1]], max_global_tokens=0,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ids = jnp.asarray(np.random.default_rng(1).integers(3, 50, (2, 19)), jnp.int32)
    unrolled = LongformerModel(LongformerConfig(**base), add_pooling_layer=False)
    scanned = LongformerModel(LongformerConfig(**base, scan_layers=True), add_pooling_layer=False)
    params = unrolled.init(jax.random.key(0), ids)
    stacked = stack_layers(params, scanned.config)  # runs: layer 0, layers 1-2
    assert sorted(stacked["params"]["encoder"])[-2:] == ["layers_0_0", "layers_1_2"]
    a = jax.jit(lambda p: unrolled.apply(p, ids).last_hidden_state)(params)
    b = jax.jit(lambda p: scanned.apply(p, ids).last_hidden_state)(stacked)
    np.testing.assert_allclose(a, b, atol=1e-5)
