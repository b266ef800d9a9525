"""Hand-written VJPs for XLA:CPU: pure functions on arrays, used only when the model is built for
the CPU (`LongformerConfig.platform == "cpu"`, chosen in `layers.py`); every other platform
differentiates the plain forms in `layers.py`. Each is tested against autodiff of its plain form
(`tests/test_layers.py`), and each stays only while `bench/` shows it helps on the CPU
(`python -m bench.kernels`; figures in bench/README.md).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@jax.custom_vjp
def gelu(x):
    """The exact (erf) GELU, x * Phi(x), in float32, with a VJP that evaluates erf and exp once
    per element (autodiff of the erfc form makes more passes over the FFN's largest
    activation)."""
    xf = x.astype(jnp.float32)
    return (xf * (0.5 + 0.5 * jax.lax.erf(xf * _SQRT_HALF))).astype(x.dtype)


def _gelu_fwd(x):
    return gelu(x), x


def _gelu_bwd(x, g):
    xf = x.astype(jnp.float32)
    cdf = 0.5 + 0.5 * jax.lax.erf(xf * _SQRT_HALF)
    pdf = jnp.exp(-0.5 * jnp.square(xf)) * _INV_SQRT_2PI
    return ((g.astype(jnp.float32) * (cdf + xf * pdf)).astype(x.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


@jax.custom_vjp
def matmul_f32(x, w):
    """x (..., K) @ w (K, N) in their dtype with a float32 result, and a backward pass whose two
    matmuls ask for float32 results too: XLA:CPU runs bfloat16 matmuls fast only with float32
    results, and autodiff's transpose would round the products to bfloat16 inside the kernel.
    In float32 the written-out backward is faster on CPU too (bench/README.md)."""
    return jnp.dot(x, w, preferred_element_type=jnp.float32)


def _matmul_f32_fwd(x, w):
    return matmul_f32(x, w), (x, w)


def _matmul_f32_bwd(res, g):
    x, w = res
    g = g.astype(x.dtype)  # the output is rounded to x.dtype by its consumer: no loss
    gx = jnp.dot(g, w.T, preferred_element_type=jnp.float32).astype(x.dtype)
    gw = jnp.tensordot(x, g, axes=(_leading(x), _leading(g)),
                       preferred_element_type=jnp.float32).astype(w.dtype)
    return gx, gw


def _leading(x) -> tuple[int, ...]:
    """Every axis but the last: the rows that a weight gradient sums over. Contracted as they
    are, not reshaped into one, so that rows split over a mesh (a document's positions over the
    `sequence` axis) stay split: GSPMD cannot merge a split axis into an unsplit one."""
    return tuple(range(x.ndim - 1))


matmul_f32.defvjp(_matmul_f32_fwd, _matmul_f32_bwd)


def normalise(x, eps):
    """(x - mean) / std over the last axis, and 1 / std."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    rstd = jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True) + eps)
    return centred * rstd, rstd


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x, scale, bias, eps):
    """LayerNorm over the last axis (float32 in, float32 out) whose backward keeps only the
    normalised rows and 1 / std, and forms the scale and bias gradients (sums over every row) as
    matrix-vector products rather than column reductions, which XLA:CPU runs slowly."""
    return normalise(x, eps)[0] * scale + bias


def _layer_norm_fwd(x, scale, bias, eps):
    normed, rstd = normalise(x, eps)
    return normed * scale + bias, (normed, rstd, scale)


def _layer_norm_bwd(eps, res, g):
    normed, rstd, scale = res
    ones = jnp.ones(g.shape[:-1], jnp.float32)
    lead = _leading(g)
    d_bias = jnp.tensordot(ones, g, axes=(lead, lead))
    d_scale = jnp.tensordot(ones, g * normed, axes=(lead, lead))
    d_normed = g * scale
    d_x = rstd * (d_normed - jnp.mean(d_normed, axis=-1, keepdims=True)
                  - normed * jnp.mean(d_normed * normed, axis=-1, keepdims=True))
    return d_x, d_scale, d_bias


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def scan(f, carry, xs, consts_xs):
    """`lax.scan` of `carry = f(carry, x, c)` over (xs, consts_xs), the final carry, with a
    hand-written VJP: a scan that keeps each step's `jax.vjp` residuals and a reverse scan that
    applies them. Only carry and xs are differentiated (consts_xs: layer indices and the like).

    Why: XLA:CPU slices and updates no 16-bit float array in a loop; its float normalisation
    widens every stacked bfloat16 residual of autodiff's scan to float32 (a whole-stack convert
    between the two loops, and float32 slices in the backward one). Here such residuals cross
    between the scans as their bits (uint16), which XLA moves as they are.
    """
    treedef = []  # the residuals' structure, known once the forward scan is traced

    def step_vjp(c, x, k):
        return jax.vjp(lambda c, x: f(c, x, k), c, x)

    @jax.custom_vjp
    def run(carry, xs):
        return jax.lax.scan(lambda c, xk: (f(c, *xk), None), carry, (xs, consts_xs))[0]

    def run_fwd(carry, xs):
        def step(c, xk):
            out, vjp = step_vjp(c, *xk)
            leaves, tree = jax.tree.flatten(vjp)
            treedef[:] = [(tree, [leaf.dtype for leaf in leaves])]
            return out, [_to_bits(leaf) for leaf in leaves]
        return jax.lax.scan(step, carry, (xs, consts_xs))

    def run_bwd(residuals, g):
        tree, dtypes = treedef[0]

        def step(gc, bits):
            vjp = jax.tree.unflatten(tree, [_from_bits(b, d) for b, d in zip(bits, dtypes)])
            return vjp(gc)
        return jax.lax.scan(step, g, residuals, reverse=True)

    run.defvjp(run_fwd, run_bwd)
    return run(carry, xs)


def _to_bits(x):
    if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype.itemsize == 2:
        return jax.lax.bitcast_convert_type(x, jnp.uint16)
    return x


def _from_bits(x, dtype):
    return jax.lax.bitcast_convert_type(x, dtype) if x.dtype != dtype else x
