"""The one dense O(N^2) reference of Longformer attention that the attention tests compare with.

It builds, for every example and head, an explicit (N, N) mask from the rules of REFERENCE.md
("Self-attention, exactly") and runs plain jnp attention with it. It calls nothing from
`longformer.attention`, so the op and its reference cannot share a mistake; the effective global
tokens (the first `budget` of those asked for, in position order) are computed here in numpy.
Only for small N, and for checking that a dense computation is caught by the memory tests.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_NEG = -1e30


def band_mask(length, left, right, dilation=1, xp=np):
    """Key j is visible to query i when j - i is a multiple of the dilation d and lies in
    [-left*d, right*d] (right=0 is causal): (N, N) for one dilation, (H, N, N) for one per head."""
    d = xp.asarray(dilation)[..., None, None]
    offset = xp.arange(length)[None, :] - xp.arange(length)[:, None]  # key - query
    return (offset % d == 0) & (offset >= -left * d) & (offset <= right * d)


def softmax_masked(scores, mask):
    """float32 softmax over the last axis restricted to mask; rows with nothing visible -> 0."""
    s = jnp.where(mask, scores.astype(jnp.float32), _NEG)
    peak = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
    e = jnp.where(mask, jnp.exp(s - peak), 0.0)
    total = jnp.sum(e, axis=-1, keepdims=True)
    return e / jnp.where(total > 0, total, 1.0)


def einsum(spec, *xs):
    return jnp.einsum(spec, *xs, precision=jax.lax.Precision.HIGHEST,
                      preferred_element_type=jnp.float32)


def effective_globals(is_global, budget):
    """numpy: the first `budget` global positions of each example, as a (B, budget, N) one-hot."""
    b, n = is_global.shape
    onehot = np.zeros((b, budget, n), np.float32)
    for e in range(b):
        for s, pos in enumerate(np.flatnonzero(is_global[e])[:budget]):
            onehot[e, s, pos] = 1.0
    return onehot


def dense_attention(q, k, v, key_mask, *, left, right, dilation=1, query_mask=None,
                    onehot=None, qg=None, kg=None, vg=None):
    """Longformer attention with explicit masks (traceable: every argument may be a jnp array).

    key_mask: (B, N) real keys. query_mask: (B, N) the rows kept (the others are zero).
    dilation: one for all heads or one per head. Global tokens, when `onehot` (B, G, N) is given:
    slot s of example b is the global token at position n (an all-zero row is an unused slot);
    qg (B, G, H, D) are the slots' queries, kg and vg (B, N, H, D) every token's global keys and
    values. Every global token must be a real token. A local row sees the real non-global keys of
    its band and every global token (with the local k/v); a global token's row is replaced by its
    global row, which sees every real key.

    Returns out (B, N, H, D), local probs (B, H, N, N) (zero rows for dropped and global
    queries) and global probs (B, H, G, N) (None without globals).
    """
    n = q.shape[1]
    key_mask = jnp.asarray(key_mask, bool)
    band = band_mask(n, left, right, dilation, xp=jnp)
    band = band[None] if band.ndim == 2 else band  # (1 or H, N, N)
    isg = (jnp.zeros_like(key_mask) if onehot is None
           else jnp.any(jnp.asarray(onehot, jnp.float32) > 0, axis=1))  # (B, N)
    mask = (band[None] & (key_mask & ~isg)[:, None, None, :]) | isg[:, None, None, :]
    p = softmax_masked(einsum("bihd,bjhd->bhij", q, k), mask)
    rows = ~isg if query_mask is None else jnp.asarray(query_mask, bool) & ~isg
    p = jnp.where(rows[:, None, :, None], p, 0.0)
    out = einsum("bhij,bjhd->bihd", p, v.astype(jnp.float32))
    if onehot is None:
        return out, p, None
    onehot = jnp.asarray(onehot, jnp.float32)
    slot_ok = jnp.any(onehot > 0, axis=2)  # (B, G)
    gmask = key_mask[:, None, None, :] & slot_ok[:, None, :, None]
    pg = softmax_masked(einsum("bghd,bjhd->bhgj", qg, kg), gmask)
    g_out = einsum("bhgj,bjhd->bghd", pg, vg.astype(jnp.float32))
    return out + einsum("bgn,bghd->bnhd", onehot, g_out), p, pg
