"""Tests of the Longformer attention op (longformer/attention.py) against the dense reference of
`tests/reference.py` (explicit (N, N) masks from the rules of REFERENCE.md, small N only).

Each parametrized case runs one batch holding many padding / global patterns at once (one compile
per case), so the file stays fast on a small CPU machine.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longformer import attention as A
from tests.reference import band_mask, dense_attention, effective_globals

H, D = 2, 4
ATOL = 1e-5


# ----------------------------------------------------------------------------- reference layout
def expected_local_layout(p, onehot, left, right):
    """Dense local probs (B,H,N,N) -> (B,H,N,G + left + right + 1) in the op's layout."""
    p = np.asarray(p)
    b, h, n, _ = p.shape
    isg = onehot.any(axis=1)
    g_cols = np.einsum("bhij,bgj->bhig", p, onehot)
    width = left + right + 1
    band = np.zeros((b, h, n, width), np.float32)
    for i in range(n):
        for t in range(width):
            j = i - left + t
            if 0 <= j < n:
                band[:, :, i, t] = np.where(isg[:, None, j], 0.0, p[:, :, i, j])
    return np.concatenate([g_cols, band], axis=-1)


# ----------------------------------------------------------------------------- inputs
def patterns(length, budget, seed=0):
    """A batch of (attention_mask, is_global) patterns; globals are always real tokens."""
    rng = np.random.default_rng(seed)
    n = length
    budget = budget or 0
    ams, gls = [], []

    def add(am, gl):
        am = np.asarray(am, bool)
        ams.append(am)
        gls.append(np.asarray(gl, bool) & am)

    ones, zeros = np.ones(n, bool), np.zeros(n, bool)
    add(ones, zeros)  # no padding, no globals
    trail = ones.copy()
    trail[max(1, (3 * n) // 5):] = False  # trailing padding
    first = zeros.copy()
    first[0] = True
    add(trail, first)  # first token global
    mid = ones.copy()
    mid[n // 3: n // 3 + max(1, n // 4)] = False  # padding in the middle
    last = zeros.copy()
    if mid.any():
        last[np.flatnonzero(mid)[-1]] = True
    add(mid, last)  # last real token global
    add(zeros, zeros)  # all padding
    add(ones, ones)  # every token global (overflows when n > budget)
    real = np.flatnonzero(trail)
    several = zeros.copy()  # exactly `budget` globals (as many as fit), trailing padding
    several[rng.choice(real, size=min(budget, real.size), replace=False)] = True
    add(trail, several)
    real = np.flatnonzero(mid)
    fewer = zeros.copy()  # fewer globals than the budget, middle padding
    if budget > 1 and real.size:
        fewer[rng.choice(real, size=min(budget - 1, real.size), replace=False)] = True
    add(mid, fewer)
    real = np.flatnonzero(trail)
    over = zeros.copy()  # more globals than the budget, padding: the extra ones are local
    over[rng.choice(real, size=min(budget + 2, real.size), replace=False)] = True
    add(trail, over)
    return np.stack(ams), np.stack(gls)


def random_arrays(seed, count, shape, dtype=np.float32):
    """numpy normals (no jax op runs eagerly: every jax computation of a test is jitted once)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape, np.float32).astype(dtype) for _ in range(count)]


def make_case(length, budget, seed=0):
    """Inputs of one batch of patterns, all numpy.

    qg holds `query_global` of the slots, taken from a per-token array with the reference's own
    slot assignment (`onehot`), independent of `global_token_indices`.
    """
    am, gl = patterns(length, budget, seed)
    batch = am.shape[0]
    q, k, v, qg_full, kg, vg = random_arrays(seed, 6, (batch, length, H, D))
    onehot = effective_globals(gl, budget or 0)
    qg = np.einsum("bgn,bnhd->bghd", onehot, qg_full)
    return dict(q=q, k=k, v=v, qg=qg, kg=kg, vg=vg, am=am, gl=gl, onehot=onehot, budget=budget)


ARG_NAMES = ("q", "k", "v", "qg", "kg", "vg", "am", "gl", "onehot")


def case_args(c):
    return [c[n] for n in ARG_NAMES]


def op(q, k, v, qg, kg, vg, am, gl, *, left, right, budget, block=None, **kw):
    """`longformer_attention` with the slots built by `global_token_indices` (None: no globals)."""
    if budget is None:
        return A.longformer_attention(q, k, v, am, left=left, right=right, block=block, **kw)
    globals_ = A.global_token_indices(gl, budget)
    return A.longformer_attention(q, k, v, am, left=left, right=right, globals_=globals_,
                                  q_global=qg, k_global=kg, v_global=vg, block=block, **kw)


def ref(q, k, v, qg, kg, vg, am, onehot, *, left, right):
    """The reference with the op's conventions: padding rows zero, globals from `onehot`."""
    return dense_attention(q, k, v, am, left=left, right=right, query_mask=am, onehot=onehot,
                           qg=qg, kg=kg, vg=vg)


def assert_close(a, b, atol=ATOL, what=""):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    assert np.all(np.isfinite(a)), what
    diff = np.max(np.abs(a - b), initial=0.0)
    assert diff <= atol, f"{what}: max abs diff {diff}"


# ----------------------------------------------------------------------------- values and probs
# (N, left, right, block, budget); budget None: no globals_ at all, 0: an empty budget.
LONGFORMER_CASES = [
    (1, 8, 8, 1, 2),
    (5, 1, 1, 1, 2),
    (5, 2, 2, 3, 3),
    (5, 3, 0, 16, 1),  # block larger than the sequence
    (16, 1, 1, 16, 4),
    (16, 2, 3, None, 3),
    (16, 3, 8, 1, 16),
    (16, 40, 40, 16, 2),
    (16, 3, 3, None, None),
    (37, 3, 3, 16, 4),
    (37, 16, 16, 16, 3),  # block divides both extents
    (37, 8, 8, None, 6),
    (37, 8, 2, 3, 3),
    (37, 40, 40, None, 8),
    (37, 2, 2, 1, 40),
    (37, 8, 8, 16, 0),
]


@pytest.mark.parametrize("length,left,right,block,budget", LONGFORMER_CASES)
def test_longformer_matches_dense(length, left, right, block, budget):
    c = make_case(length, budget, seed=length + left + 7 * right)
    kw = dict(left=left, right=right, budget=budget, block=block)

    @jax.jit
    def run(q, k, v, qg, kg, vg, am, gl, onehot):
        with_probs = op(q, k, v, qg, kg, vg, am, gl, return_probs=True, **kw)
        plain = op(q, k, v, qg, kg, vg, am, gl, **kw)
        index = A.global_token_indices(gl, budget or 0)
        return with_probs, plain, ref(q, k, v, qg, kg, vg, am, onehot, left=left, right=right), \
            index

    with_probs, plain, (ref_out, ref_p, ref_pg), index = run(*case_args(c))
    out, local_p, global_p = with_probs
    assert (global_p is None) == (not budget)
    am, onehot = c["am"], c["onehot"]
    isg = onehot.any(axis=1)

    # the slots are the reference's: ascending positions, first `budget` of those asked for
    if budget:
        valid = np.asarray(index.valid)
        np.testing.assert_array_equal(valid, onehot.any(axis=2))
        np.testing.assert_array_equal(np.asarray(index.index)[valid], onehot.argmax(2)[valid])

    assert out.shape == c["q"].shape and out.dtype == jnp.float32
    assert_close(out, ref_out, what="out")
    assert_close(plain, out, atol=0.0, what="return_probs must not change the output")
    assert np.all(np.asarray(out)[~am] == 0.0), "padding rows must be exactly zero"

    g = budget or 0
    assert local_p.shape == (out.shape[0], H, length, g + left + right + 1)
    assert_close(local_p, expected_local_layout(ref_p, onehot, left, right), what="local probs")
    lp = np.asarray(local_p).transpose(0, 2, 1, 3)  # (B, N, H, W)
    assert np.all(lp[isg] == 0.0), "rows of global tokens must be zero"
    assert np.all(lp[~am] == 0.0), "padding rows must be zero"
    np.testing.assert_allclose(lp.sum(-1)[am & ~isg], 1.0, atol=1e-5)  # every real row sees itself
    if budget:
        assert global_p.shape == (out.shape[0], H, length, budget)
        assert_close(global_p, np.asarray(ref_pg).transpose(0, 1, 3, 2), what="global probs")
        gp = np.asarray(global_p).transpose(0, 3, 1, 2)  # (B, G, H, N)
        assert np.all(gp[~valid] == 0.0), "unused slots must be zero"
        np.testing.assert_allclose(gp[valid].sum(-1), 1.0, atol=1e-5)


# (N, left, right, block, with query_mask)
BAND_CASES = [
    (1, 1, 0, None, True),
    (5, 2, 0, 3, True),
    (5, 0, 2, 1, True),
    (5, 40, 3, 16, False),
    (16, 3, 0, None, True),
    (16, 3, 0, 3, True),
    (16, 0, 0, 3, True),  # window of one: each row sees only itself
    (16, 8, 1, 3, True),
    (37, 40, 0, 16, True),
    (37, 8, 3, None, True),
    (37, 2, 40, 1, True),
    (37, 3, 3, 3, False),
]


@pytest.mark.parametrize("length,left,right,block,with_query_mask", BAND_CASES)
def test_band_matches_dense(length, left, right, block, with_query_mask):
    am, _ = patterns(length, 0, seed=length)
    q, k, v = random_arrays(length + left, 3, (am.shape[0], length, H, D))
    key_mask = am.copy()  # differs from the query mask: each must be used in its own role
    key_mask[:, ::4] = False
    qm = am if with_query_mask else None

    @jax.jit
    def run(q, k, v, key_mask, qm):
        got = A.band_attention(q, k, v, key_mask, left=left, right=right, block=block,
                               query_mask=qm, return_probs=True)
        return got, dense_attention(q, k, v, key_mask, left=left, right=right, query_mask=qm)[:2]

    (out, probs), (ref_out, ref_p) = run(q, k, v, key_mask, qm)
    assert_close(out, ref_out, what="band out")
    assert probs.shape == (am.shape[0], H, length, left + right + 1)
    no_globals = np.zeros((am.shape[0], 0, length), np.float32)
    assert_close(probs, expected_local_layout(ref_p, no_globals, left, right), what="band probs")
    if qm is not None:
        assert np.all(np.asarray(out)[~qm] == 0.0)
    # a row with no visible key gives zeros, never NaN (all-padding example, key_mask holes)
    visible = (band_mask(length, left, right)[None] & key_mask[:, None, :]).any(-1)
    assert np.all(np.asarray(out)[~visible] == 0.0)


# ----------------------------------------------------------------------------- gradients
GRAD_CASES = [
    (37, 8, 8, 4, 4),  # block divides both extents
    (16, 40, 3, None, 2),  # window beyond the sequence, left != right
    (37, 3, 0, 3, 2),  # causal, block divides both extents
]


@pytest.mark.parametrize("length,left,right,block,budget", GRAD_CASES)
def test_gradients_match_dense(length, left, right, block, budget):
    c = make_case(length, budget, seed=3 * length + left)
    (ct,) = random_arrays(99, 1, c["q"].shape)
    kw = dict(left=left, right=right)

    def loss_op(q, k, v, qg, kg, vg, am, gl, onehot):
        return jnp.sum(op(q, k, v, qg, kg, vg, am, gl, budget=budget, block=block, **kw) * ct)

    def loss_ref(q, k, v, qg, kg, vg, am, gl, onehot):
        return jnp.sum(ref(q, k, v, qg, kg, vg, am, onehot, **kw)[0] * ct)

    @jax.jit
    def run(*args):
        six = tuple(range(6))
        return jax.grad(loss_op, argnums=six)(*args), jax.grad(loss_ref, argnums=six)(*args)

    g_op, g_ref = run(*case_args(c))
    for name, a, b in zip(["q", "k", "v", "q_global", "k_global", "v_global"], g_op, g_ref):
        assert_close(a, b, atol=1e-5, what=f"grad {name}")
    # padding query rows get no gradient through q; nor do global rows (their local row is
    # replaced), and padding keys get none through k
    am, isg = c["am"], c["onehot"].any(axis=1)
    assert np.all(np.asarray(g_op[0])[~am | isg] == 0.0)
    assert np.all(np.asarray(g_op[1])[~am] == 0.0)


@pytest.mark.parametrize("loop", [True, False])
def test_budgets_run_the_smallest_that_holds_the_batch(loop):
    """With `budgets` the op runs the first b slots, b the smallest budget holding every
    example's global tokens (one `lax.switch` branch per budget), and gives what the whole
    budget gives, values and gradients, whichever branch runs: rows 0-3 of the patterns have at
    most one global token (budget 1), rows 5 and 6 eight and seven, row 4 more than eight."""
    budget, budgets, left, right = 8, A.budget_buckets(8, 4), 3, 3
    assert budgets == (1, 2, 8)
    c = make_case(37, budget, seed=5)
    counts = c["gl"].sum(1)
    (ct,) = random_arrays(7, 1, c["q"].shape)

    def loss(args, ct, buckets):
        out = op(*args, left=left, right=right, budget=budget, block=16, loop=loop,
                 budgets=buckets)
        return jnp.sum(out * ct), out

    @jax.jit
    def run(args, ct):
        grad = jax.grad(lambda six, rest, b: loss(six + rest, ct, b)[0])
        return [(loss(args, ct, b)[1], grad(args[:6], args[6:], b)) for b in (budgets, ())]

    for rows, branch in [([0, 1, 2, 3], 1), ([0, 1, 5, 6], budget), ([3, 4, 5, 6], budget)]:
        assert budgets[int(A.budget_branch(jnp.asarray(counts[rows]), budgets))] == branch
        args = [a[rows] for a in case_args(c)[:8]]
        (out_b, grads_b), (out, grads) = run(args, ct[rows])
        assert_close(out_b, out, atol=1e-6, what=f"rows {rows}")
        for name, a, b in zip(["q", "k", "v", "q_global", "k_global", "v_global"], grads_b,
                              grads):
            assert_close(a, b, atol=1e-6, what=f"rows {rows}: grad {name}")
    assert "cond" in str(jax.make_jaxpr(lambda *a: op(
        *a, left=left, right=right, budget=budget, budgets=budgets))(*case_args(c)[:8]))


def test_gradients_finite_with_fully_masked_rows():
    """All-padding examples, band holes with nothing visible: values and grads are finite."""
    length, left, right = 9, 1, 0
    q, k, v = random_arrays(5, 3, (2, length, H, D))
    key_mask = np.ones((2, length), bool)
    key_mask[0] = False  # every row of example 0 sees nothing
    key_mask[1, 2:6] = False  # rows 3..5 of example 1 see nothing (causal window of 2)

    def loss_band(q, k, v, key_mask):
        out = A.band_attention(q, k, v, key_mask, left=left, right=right, block=4)
        return jnp.sum(out ** 2) + jnp.sum(out)

    def loss_dense(q, k, v, key_mask):
        out = dense_attention(q, k, v, key_mask, left=left, right=right)[0]
        return jnp.sum(out ** 2) + jnp.sum(out)

    c = make_case(7, 2, seed=1)  # the full op, with an all-padding example and globals elsewhere

    def loss_full(q, k, v, qg, kg, vg, am, gl, onehot):
        return jnp.sum(op(q, k, v, qg, kg, vg, am, gl, left=2, right=2, budget=2) ** 2)

    @jax.jit
    def run(q, k, v, key_mask, full_args):
        return (jax.value_and_grad(loss_band, argnums=(0, 1, 2))(q, k, v, key_mask),
                jax.grad(loss_dense, argnums=(0, 1, 2))(q, k, v, key_mask),
                jax.grad(loss_full, argnums=tuple(range(6)))(*full_args))

    (val, grads), ref_grads, full_grads = run(q, k, v, key_mask, case_args(c))
    assert np.isfinite(val)
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, what="masked-row grads")
    for g in full_grads:
        assert np.all(np.isfinite(np.asarray(g)))


# ----------------------------------------------------------------------------- global slots
def test_global_token_indices_exact():
    is_global = np.array([[0, 1, 0, 1, 1, 0],
                          [1, 1, 1, 1, 0, 1],
                          [0, 0, 0, 0, 0, 0],
                          [1, 0, 0, 0, 0, 0],
                          [0, 0, 0, 0, 0, 1]], bool)

    @jax.jit
    def run(is_global):
        return (A.global_token_indices(is_global, 3),
                A.global_token_indices(is_global.astype(jnp.int32), 5),
                A.global_token_indices(is_global, 0))

    gi, gi5, gi0 = run(is_global)
    np.testing.assert_array_equal(gi.index, [[1, 3, 4], [0, 1, 2], [0, 0, 0], [0, 0, 0],
                                             [5, 0, 0]])
    np.testing.assert_array_equal(gi.valid, [[1, 1, 1], [1, 1, 1], [0, 0, 0], [1, 0, 0],
                                             [1, 0, 0]])
    np.testing.assert_array_equal(gi.count, [3, 5, 0, 1, 1])
    np.testing.assert_array_equal(gi.overflow, [0, 1, 0, 0, 0])
    assert gi.index.dtype == jnp.int32 and gi.valid.dtype == jnp.bool_
    # a budget larger than every count (int input)
    np.testing.assert_array_equal(gi5.index, [[1, 3, 4, 0, 0], [0, 1, 2, 3, 5], [0] * 5,
                                              [0] * 5, [5, 0, 0, 0, 0]])
    np.testing.assert_array_equal(gi5.valid.sum(1), [3, 5, 0, 1, 1])
    np.testing.assert_array_equal(gi5.overflow, [0, 0, 0, 0, 0])
    # a zero budget: empty slots, every global asked for is an overflow
    assert gi0.index.shape == (5, 0) and gi0.valid.shape == (5, 0)
    np.testing.assert_array_equal(gi0.overflow, [1, 1, 0, 1, 1])


def test_gather_scatter_rows():
    x = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    index = np.array([[4, 1], [0, 0]], np.int32)
    valid = np.array([[True, True], [True, False]])
    rows = -np.ones((2, 2, 3), np.float32)
    gathered, scattered = jax.jit(lambda x, i, m, r: (A.gather_rows(x, i),
                                                      A.scatter_rows(x, i, m, r)))(
        x, index, valid, rows)
    np.testing.assert_array_equal(gathered, x[[[0], [1]], index])
    want = x.copy()
    want[0, 4] = want[0, 1] = want[1, 0] = -1
    np.testing.assert_array_equal(scattered, want)


def test_overflow_tokens_are_local():
    """Tokens past the budget act as local tokens (band keys and rows), not global ones."""
    length, left, right, budget = 12, 2, 2, 2
    am = np.ones((1, length), bool)
    am[0, 10:] = False
    gl = np.zeros((1, length), bool)
    gl[0, [1, 5, 6, 9]] = True  # 4 asked for, budget 2: 6 and 9 are local
    q, k, v, qg_full, kg, vg = random_arrays(11, 6, (1, length, H, D))
    onehot = np.zeros((1, budget, length), np.float32)
    onehot[0, 0, 1] = onehot[0, 1, 5] = 1.0
    onehot4 = np.zeros((1, 4, length), np.float32)
    for s, pos in enumerate([1, 5, 6, 9]):
        onehot4[0, s, pos] = 1.0

    @jax.jit
    def run(q, k, v, qg_full, kg, vg, am, gl):
        globals_ = A.global_token_indices(gl, budget)
        qg = A.gather_rows(qg_full, globals_.index)
        out = A.longformer_attention(q, k, v, am, left=left, right=right, globals_=globals_,
                                     q_global=qg, k_global=kg, v_global=vg)
        ref2 = ref(q, k, v, qg, kg, vg, am, onehot, left=left, right=right)[0]
        qg4 = A.gather_rows(qg_full, jnp.array([[1, 5, 6, 9]]))
        ref4 = ref(q, k, v, qg4, kg, vg, am, onehot4, left=left, right=right)[0]
        return globals_, out, ref2, ref4

    globals_, out, ref2, ref4 = run(q, k, v, qg_full, kg, vg, am, gl)
    assert bool(globals_.overflow[0]) and int(globals_.count[0]) == 4
    np.testing.assert_array_equal(globals_.index, [[1, 5]])
    assert_close(out, ref2, what="overflow")
    # and it is not what treating all four as global would give
    assert np.max(np.abs(np.asarray(out) - np.asarray(ref4))) > 1e-3


# ----------------------------------------------------------------------------- dropout
def test_dropout():
    c = make_case(16, 3, seed=21)
    q, k, v, qg, kg, vg, am, gl, _ = case_args(c)
    # "rbg" keys: same semantics, and XLA:CPU compiles them ~4x faster than threefry ones
    r1, r2 = jax.random.key(1, impl="rbg"), jax.random.key(2, impl="rbg")

    @functools.partial(jax.jit, static_argnames="rate")
    def f(v, vg, rng, rate):
        return op(q, k, v, qg, kg, vg, am, gl, left=3, right=3, budget=3, dropout_rate=rate,
                  dropout_rng=rng)

    det = np.asarray(f(v, vg, None, 0.0))
    a, a2, b = (np.asarray(f(v, vg, r, 0.3)) for r in (r1, r1, r2))  # one compile
    np.testing.assert_array_equal(a, a2)  # reproducible for one rng
    assert np.max(np.abs(a - det)) > 1e-3
    assert np.max(np.abs(a - b)) > 1e-3
    assert np.all(np.isfinite(a))
    assert np.all(a[~c["am"]] == 0.0)  # padding rows stay zero
    isg = c["onehot"].any(1)  # global rows are dropped out too
    assert np.max(np.abs(a[isg] - det[isg])) > 1e-3
    assert_close(f(v, vg, r1, 0.0), det, atol=0.0, what="rate 0")
    assert_close(f(v, vg, None, 0.5), det, atol=0.0, what="no rng: deterministic")
    # inverted dropout keeps the expectation: with values all one, each output is the kept
    # weights' sum / (1 - rate), so the mean over (real row, head) is near 1 (not 1 - rate)
    ones = np.asarray(f(np.ones_like(v), np.ones_like(vg), r2, 0.3))[..., 0][c["am"]]
    assert ones.size >= 150 and abs(ones.mean() - 1.0) < 0.12, ones.mean()

    # band only (no globals), causal
    @functools.partial(jax.jit, static_argnames="rate")
    def band(rng, rate):
        return A.band_attention(q, k, v, am, left=2, right=0, query_mask=am, dropout_rate=rate,
                                dropout_rng=rng)

    band_det, band_a = np.asarray(band(None, 0.0)), np.asarray(band(r1, 0.2))
    np.testing.assert_array_equal(band_a, band(r1, 0.2))
    assert np.max(np.abs(band_a - band_det)) > 1e-3
    assert np.all(band_a[~c["am"]] == 0.0)
    assert_close(band(r1, 0.0), band_det, atol=0.0, what="band rate 0")


# ----------------------------------------------------------------------------- dtypes
def test_bfloat16_close_to_float32():
    length, left, right, budget = 37, 8, 8, 4
    c = make_case(length, budget, seed=4)
    kw = dict(left=left, right=right, budget=budget)

    @jax.jit
    def run(q, k, v, qg, kg, vg, am, gl, onehot):
        six = (q, k, v, qg, kg, vg)
        bf = [x.astype(jnp.bfloat16) for x in six]
        rounded = [x.astype(jnp.float32) for x in bf]
        return (op(*bf, am, gl, **kw), op(*rounded, am, gl, **kw), op(*six, am, gl, **kw))

    out_b, out_r, out_32 = run(*case_args(c))
    assert out_b.dtype == jnp.bfloat16
    assert np.all(np.isfinite(np.asarray(out_b, np.float32)))
    assert_close(out_b, out_r, atol=2e-2, what="bf16 vs f32 on the same rounded inputs")
    assert_close(out_b, out_32, atol=5e-2, what="bf16 vs f32")
    assert np.all(np.asarray(out_b, np.float32)[~c["am"]] == 0.0)


# ----------------------------------------------------------------------------- no n x n array
def _iter_avals(jaxpr):
    """Every variable's abstract value in a jaxpr, nested jaxprs included."""
    for var in list(jaxpr.invars) + list(jaxpr.constvars):
        yield var.aval
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            yield var.aval
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (tuple, list)) else (p,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _iter_avals(inner)


def quadratic_vars(closed_jaxpr, length):
    """Shapes of variables that are O(N^2): two dimensions >= N, or N*N/4 elements or more."""
    bad = []
    for aval in _iter_avals(closed_jaxpr.jaxpr):
        shape = tuple(getattr(aval, "shape", ()))
        big = sum(d >= length for d in shape)
        if big >= 2 or int(np.prod(shape, dtype=np.int64)) >= length * length // 4:
            bad.append(shape)
    return bad


def _big_inputs(length, budget=4, batch=1):
    q = jax.ShapeDtypeStruct((batch, length, H, 8), jnp.float32)
    qg = jax.ShapeDtypeStruct((batch, budget, H, 8), jnp.float32)
    am = jax.ShapeDtypeStruct((batch, length), jnp.bool_)
    gl = jax.ShapeDtypeStruct((batch, length), jnp.bool_)
    return q, qg, am, gl


def _op_loss(q, k, v, qg, kg, vg, am, gl, *, dense=False, budget=4, window=64, block=None):
    globals_ = A.global_token_indices(gl, budget)
    if dense:  # the checker must flag this one
        out = dense_attention(q, k, v, am, left=window, right=window)[0]
    else:
        out = A.longformer_attention(q, k, v, am, left=window, right=window, globals_=globals_,
                                     q_global=qg, k_global=kg, v_global=vg, block=block)
    return jnp.sum(out)


@pytest.mark.parametrize("block", [None, 48])  # the default block (64) divides the window; 48 not
def test_no_quadratic_intermediate(block):
    n = 4096
    q, qg, am, gl = _big_inputs(n)
    args = (q, q, q, qg, q, q, am, gl)
    loss = functools.partial(_op_loss, block=block)
    fwd = jax.make_jaxpr(loss)(*args)
    bwd = jax.make_jaxpr(jax.grad(loss, argnums=tuple(range(6))))(*args)
    assert quadratic_vars(fwd, n) == []
    assert quadratic_vars(bwd, n) == []
    # the checker can fail: a dense implementation is flagged, forward and backward
    dense = functools.partial(_op_loss, dense=True)
    assert quadratic_vars(jax.make_jaxpr(dense)(*args), n)
    assert quadratic_vars(jax.make_jaxpr(jax.grad(dense, argnums=(0, 1, 2)))(*args), n)


def test_compiled_temp_memory_is_subquadratic():
    """XLA's temp buffers are far below N*N floats and grow linearly with N (2x from N to 2N)."""
    temps = {}
    for n in (4096, 8192):
        q, qg, am, gl = _big_inputs(n)
        args = (q, q, q, qg, q, q, am, gl)
        for name, f in (("op", _op_loss), ("dense", functools.partial(_op_loss, dense=True))):
            if name == "dense" and n > 4096:
                continue
            stats = jax.jit(f).lower(*args).compile().memory_analysis()
            if stats is None:
                pytest.skip("no memory analysis on this backend")
            temps[name, n] = stats.temp_size_in_bytes
    n = 4096
    assert temps["op", n] < n * n * 4 // 4, temps
    assert temps["op", 2 * n] < 2.5 * temps["op", n], temps
    # the bound can fail: a dense implementation is far above it
    assert temps["dense", n] >= n * n * 4, temps


def test_padding_token_in_global_slots_is_ignored():
    """A slot pointing at padding changes nothing: padding is never global."""
    rng = np.random.RandomState(11)
    q, k, v, kg, vg = (jnp.asarray(rng.randn(1, 6, 2, 4), jnp.float32) for _ in range(5))
    am = jnp.asarray([[1, 1, 1, 1, 0, 0]], bool)
    slots = A.global_token_indices(jnp.asarray([[0, 0, 0, 0, 1, 0]]), 1)
    with_pad = A.longformer_attention(q, k, v, am, left=1, right=1, globals_=slots,
                                      q_global=A.gather_rows(q, slots.index), k_global=kg,
                                      v_global=vg)
    local = A.longformer_attention(q, k, v, am, left=1, right=1)
    np.testing.assert_array_equal(np.asarray(with_pad), np.asarray(local))
    assert np.all(np.asarray(with_pad)[0, 4:] == 0)


@pytest.mark.parametrize("rate,g", [(0.0, 2), (0.3, 2), (0.0, 8)])
def test_global_projection_equals_projected_keys(rate, g):
    """The factored global rows (keys/values left unprojected) equal projecting every token;
    from g = head size on the op projects them itself (`GlobalProjection.projected`)."""
    rng = np.random.RandomState(3)
    b, n, e, h, d = 2, 29, 24, 3, 8
    x = jnp.asarray(rng.randn(b, n, e), jnp.float32)
    wk, wv = (jnp.asarray(rng.randn(e, h, d) / 5, jnp.float32) for _ in range(2))
    bk, bv = (jnp.asarray(rng.randn(h, d), jnp.float32) for _ in range(2))
    qg = jnp.asarray(rng.randn(b, g, h, d), jnp.float32)
    mask = jnp.asarray(rng.rand(b, n) > 0.3)
    kw = dict(dropout_rate=rate, dropout_rng=jax.random.key(0) if rate else None)
    k = jnp.einsum("bne,ehd->bnhd", x, wk) + bk
    v = jnp.einsum("bne,ehd->bnhd", x, wv) + bv
    want, want_p = A.global_attention(qg, k, v, mask, **kw)
    got, got_p = A.global_attention(qg, A.GlobalProjection(x, wk, bk, wv, bv), None, mask, **kw)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(got_p, want_p, atol=1e-6)
    grad = jax.grad(lambda x, f: jnp.sum(jnp.sin(f(x))), argnums=0)
    np.testing.assert_allclose(
        grad(x, lambda x: A.global_attention(qg, A.GlobalProjection(x, wk, bk, wv, bv), None,
                                             mask)[0]),
        grad(x, lambda x: A.global_attention(qg, jnp.einsum("bne,ehd->bnhd", x, wk) + bk,
                                             jnp.einsum("bne,ehd->bnhd", x, wv) + bv, mask)[0]),
        atol=2e-5)
