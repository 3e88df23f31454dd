"""k-reciprocal encoding: nearest-neighbour lists, expanded reciprocal sets, sparse V rows.

Notation (grl_jax/reranking/__init__.py): N = Nq + Ng probe-and-gallery items, ``d(i, j)`` the
row-normalised squared distance. All sets are kept as fixed-width rows of indices into
[0, N) with ``N`` as the "empty slot" sentinel, sorted ascending, valid entries first, and a
matching row of float32 weights (0 in empty slots). Nothing here is N x N: the widest arrays
are [N, K] neighbour lists and [N, L] sparse rows, L <= (k1 + 1)(round(k1 / 2) + 2) before
query expansion and k2 times that after it.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np


def half_k(k1: int) -> int:
  """round(k1 / 2) with round-half-to-even, the neighbourhood of the expansion candidates."""
  return int(np.around(k1 / 2.0))


def acceptance_table(size_max: int) -> np.ndarray:
  """int32[size_max + 1]: least overlap count accepted for a candidate set of each size.

  A candidate's reciprocal set R(c, k1/2) joins the expansion when
  ``|R(c, k1/2) & R(i, k1)| > 2/3 |R(c, k1/2)|``. The threshold is evaluated once per set size
  with the same float64 expression as the reference, so rounding at multiples of 3 agrees.
  """
  return np.asarray([math.floor(2.0 / 3 * n) + 1 for n in range(size_max + 1)], np.int32)


@functools.partial(jax.jit, static_argnames=('k',))
def neighbours_block(sq: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """Row maxima and the k nearest columns of a block of squared-distance rows.

  Args:
    sq: f32[B, N] squared distances, row i = column i of the full matrix.
    k: neighbours kept, max(k1 + 1, k2) clipped to N.

  Returns:
    (f32[B] row maxima, int32[B, k] columns in ascending order of sq / max).
  """
  row_max = jnp.max(sq, axis=1)
  # Ranked on the normalised value, as the reference argsorts it (division can merge values).
  _, idx = jax.lax.top_k(-(sq / row_max[:, None]), k)
  return row_max, idx.astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('kh',))
def reciprocal_mask(nbr: jax.Array, rows: jax.Array, kh: int) -> jax.Array:
  """bool[B, kh]: is row i among the kh nearest of its own a-th nearest neighbour?

  ``R(i, k) = {j in N(i, k) : i in N(j, k)}`` with N(i, k) the first k entries of row i's list.
  """
  fwd = nbr[rows, :kh]                                   # [B, kh]
  back = nbr[fwd, :kh]                                   # [B, kh, kh]
  return jnp.any(back == rows[:, None, None], axis=-1)


def _sort_unique(keys: jax.Array, sentinel: int) -> tuple[jax.Array, jax.Array]:
  """Sorted rows with repeats replaced by `sentinel`, then re-sorted: uniques first."""
  keys = jnp.sort(keys, axis=-1)
  first = jnp.concatenate([jnp.ones_like(keys[:, :1], bool), keys[:, 1:] != keys[:, :-1]], -1)
  keys = jnp.where(first, keys, sentinel)
  return jnp.sort(keys, axis=-1), first


@functools.partial(jax.jit, static_argnames=('k1', 'kh'))
def expansion_block(rows, nbr, recip_h, table, k1: int, kh: int) -> jax.Array:
  """Expanded k-reciprocal sets of a block of items.

  R*(i) = R(i, k1) united with every R(c, kh) (c in R(i, k1)) that shares more than 2/3 of its
  members with R(i, k1).

  Args:
    rows: int32[B] item index of each row.
    nbr: int32[N, K] ascending neighbour lists of all items (K >= k1).
    recip_h: bool[N, kh] `reciprocal_mask` of all items for kh.
    table: int32[kh + 1] `acceptance_table(kh)`.
    k1, kh: neighbourhood sizes (k1 + 1 and round(k1 / 2) + 1 in the paper's terms, clipped
      to N).

  Returns:
    int32[B, L] sorted unique members, valid first, N in empty slots; L = k1 (1 + kh).
  """
  n = nbr.shape[0]
  b = rows.shape[0]
  fwd = nbr[rows, :k1]                                              # [B, k1]
  r1 = jnp.any(nbr[fwd, :k1] == rows[:, None, None], axis=-1)      # [B, k1]  R(i, k1)
  cand = nbr[fwd, :kh]                                              # [B, k1, kh]
  cand_ok = recip_h[fwd]                                            # [B, k1, kh] R(c, kh)
  in_r1 = jnp.any((cand[..., None] == fwd[:, None, None, :]) & r1[:, None, None, :], axis=-1)
  overlap = jnp.sum(in_r1 & cand_ok, axis=-1)
  size = jnp.sum(cand_ok, axis=-1)
  accept = r1 & (overlap >= table[size])                            # [B, k1]
  members = jnp.concatenate([fwd, cand.reshape(b, k1 * kh)], axis=1)
  valid = jnp.concatenate([r1, (accept[..., None] & cand_ok).reshape(b, k1 * kh)], axis=1)
  idx, _ = _sort_unique(jnp.where(valid, members, n), n)
  return idx


@jax.jit
def weights(idx: jax.Array, sq: jax.Array, row_max: jax.Array) -> jax.Array:
  """V on R*(i): exp(-d(i, j)) / sum_{j' in R*(i)} exp(-d(i, j')).

  Args:
    idx: int32[N, L] members (N in empty slots); sq: f32[N, L] squared distances S[j, i] at
      them (anything in empty slots); row_max: f32[N] the maxima, d = sq / row_max.

  Returns:
    f32[N, L], 0 in empty slots.
  """
  w = jnp.where(idx < idx.shape[0], jnp.exp(-(sq / row_max[:, None])), 0.0)
  return w / jnp.sum(w, axis=1, keepdims=True)


@functools.partial(jax.jit, static_argnames=('k2',))
def query_expansion_block(rows, nbr, v_idx, v_val, k2: int):
  """Sparse rows of V averaged over each item's k2 nearest neighbours (itself included).

  V_qe[i] = (1 / k2) sum_{t < k2} V[nbr[i, t]]. The k2 sparse rows are concatenated and stably
  sorted by column, so equal columns sit together in neighbour order and are summed in that
  order (the reference's row-by-row mean).

  Args:
    rows: int32[B] item indices.
    nbr: int32[N, K] neighbour lists (K >= k2).
    v_idx, v_val: int32 / f32 [N, L] sparse rows of V.
    k2: neighbours averaged (clipped to N).

  Returns:
    (int32[B, k2 L] sorted columns, N in empty slots; f32[B, k2 L] values).
  """
  n = nbr.shape[0]
  b = rows.shape[0]
  src = nbr[rows, :k2]                                              # [B, k2]
  idx = v_idx[src].reshape(b, -1)
  val = v_val[src].reshape(b, -1)
  idx, val = jax.lax.sort((idx, val), dimension=1, num_keys=1, is_stable=True)
  total = val
  for t in range(1, k2):  # a column occurs at most once per source row: runs are <= k2 long
    nxt = jnp.pad(idx[:, t:], ((0, 0), (0, t)), constant_values=-1)
    nval = jnp.pad(val[:, t:], ((0, 0), (0, t)))
    total = total + jnp.where(nxt == idx, nval, 0.0)
  first = jnp.concatenate([jnp.ones_like(idx[:, :1], bool), idx[:, 1:] != idx[:, :-1]], -1)
  keep = first & (idx < n)
  idx = jnp.where(keep, idx, n)
  val = jnp.where(keep, total / k2, 0.0)
  return jax.lax.sort((idx, val), dimension=1, num_keys=1, is_stable=True)


@jax.jit
def row_counts(idx: jax.Array, n: jax.Array) -> jax.Array:
  """int32 max over rows of the number of occupied slots (idx < n)."""
  return jnp.max(jnp.sum(idx < n, axis=1))
