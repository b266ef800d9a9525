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
