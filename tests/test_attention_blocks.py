"""The attention op gives the same values, weights and gradients whatever its query block size
(dividing the window or not, larger than the window, one block for the whole sequence), and the
same as the dense baseline (`dense_longformer_attention`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longformer import attention as A

H, D = 2, 8


def _inputs(length, budget, seed=0):
    rng = np.random.RandomState(seed)
    q, k, v, kg, vg = (jnp.asarray(rng.randn(2, length, H, D), jnp.float32) for _ in range(5))
    qg = jnp.asarray(rng.randn(2, budget, H, D), jnp.float32)
    am = np.ones((2, length), bool)
    am[1, length - 5:] = False
    gl = np.zeros((2, length), bool)
    gl[0, [0, 7]] = True
    gl[1, 3] = True
    return q, k, v, qg, kg, vg, jnp.asarray(am), jnp.asarray(gl)


def _op(fn, q, k, v, qg, kg, vg, am, gl, *, left, right, block, budget):
    g = A.global_token_indices(gl, budget)
    return fn(q, k, v, am, left=left, right=right, globals_=g, q_global=qg, k_global=kg,
              v_global=vg, block=block)


@pytest.mark.parametrize("length,left,right,block", [
    (40, 8, 8, 4), (40, 8, 8, 8), (37, 8, 0, 4), (33, 4, 12, 4), (16, 8, 8, 16), (37, 5, 3, 64)])
def test_block_sizes_match_each_other_and_dense(length, left, right, block):
    xs = _inputs(length, 3, seed=length + left)
    kw = dict(left=left, right=right, budget=3)

    def loss(fn, b):
        return lambda *a: jnp.sum(jnp.sin(_op(fn, *a, block=b, **kw)))

    grads = jax.jit(lambda *a: [jax.value_and_grad(loss(fn, b), argnums=(0, 1, 2, 3, 4, 5))(*a)
                                for fn, b in ((A.longformer_attention, block),
                                              (A.longformer_attention, 3),
                                              (A.dense_longformer_attention, None))])(*xs)
    (l0, g0), *others = grads
    for l1, g1 in others:
        np.testing.assert_allclose(l0, l1, atol=1e-4, rtol=1e-5)
        for a, b in zip(g0, g1):
            np.testing.assert_allclose(a, b, atol=2e-5)


def test_probs_match_across_block_sizes():
    xs = _inputs(48, 3, seed=1)
    g = A.global_token_indices(xs[-1], 3)
    run = jax.jit(lambda q, k, v, qg, kg, vg, am, block: A.longformer_attention(
        q, k, v, am, left=8, right=8, globals_=g, q_global=qg, k_global=kg, v_global=vg,
        block=block, return_probs=True), static_argnums=7)
    a = run(*xs[:7], 8)
    for block in (3, 48):
        b = run(*xs[:7], block)
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, atol=2e-6)


@pytest.mark.parametrize("rate", [0.0, 0.4])
def test_custom_backward_equals_autodiff(rate):
    """The band's hand-written VJP (recomputing each block) equals differentiating the forward
    (the `return_probs` path runs the same blocks, dropout masks included, through autodiff)."""
    q, k, v, qg, kg, vg, am, gl = _inputs(45, 3, seed=7)
    extra_k, extra_v = k[:, :3] * 0.5, v[:, :3] * 0.5
    extra_mask = jnp.asarray([[True, True, False], [True, False, False]])
    rng = jax.random.key(1) if rate else None

    def loss(q, k, v, extra_k, extra_v, probs):
        out = A.band_attention(q, k, v, am & ~gl, left=6, right=3, query_mask=am,
                               extra_k=extra_k, extra_v=extra_v, extra_mask=extra_mask, block=8,
                               dropout_rate=rate, dropout_rng=rng, return_probs=probs)
        out = out[0] if probs else out
        return jnp.sum(jnp.sin(out) * jnp.arange(out.size).reshape(out.shape) / out.size)

    args = (q, k, v, extra_k, extra_v)
    fast = jax.jit(jax.value_and_grad(lambda *a: loss(*a, False), argnums=range(5)))(*args)
    slow = jax.jit(jax.value_and_grad(lambda *a: loss(*a, True), argnums=range(5)))(*args)
    np.testing.assert_allclose(fast[0], slow[0], rtol=1e-6)
    for a, b in zip(fast[1], slow[1]):
        assert np.abs(np.asarray(b)).max() > 0
        np.testing.assert_allclose(a, b, atol=2e-6)


@pytest.mark.parametrize("probs", [False, True])
def test_batched_blocks_equal_the_loop(probs):
    """loop=False (all blocks as one batched computation, autodiff: the accelerator layout) gives
    the CPU loop's values, weights and gradients, dropout included."""
    q, k, v, qg, kg, vg, am, gl = _inputs(45, 3, seed=11)
    extra_mask = jnp.asarray([[True, True, False], [True, False, False]])

    def run(loop):
        def loss(q, k, v, ek, ev):
            out = A.band_attention(q, k, v, am & ~gl, left=5, right=5, query_mask=am,
                                   extra_k=ek, extra_v=ev, extra_mask=extra_mask, block=8,
                                   dropout_rate=0.3, dropout_rng=jax.random.key(2),
                                   return_probs=probs, loop=loop)
            out, w = out if probs else (out, jnp.zeros(()))
            return jnp.sum(jnp.sin(out)) + jnp.sum(jnp.cos(w)), out
        return jax.jit(jax.value_and_grad(loss, argnums=range(5), has_aux=True))(
            q, k, v, k[:, :3], v[:, :3])

    (l1, o1), g1 = run(True)
    (l2, o2), g2 = run(False)
    np.testing.assert_allclose(o1, o2, atol=1e-6)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, atol=2e-6)
