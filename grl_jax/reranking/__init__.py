"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), blocked on the accelerator.

Semantics are those of the implementation re-ID papers report with (torchreid's
``torchreid/utils/rerank.py:re_ranking``, itself Zhong's numpy code taking distance matrices):
for tie-free inputs the result agrees with it to ~1e-6 (tests/test_reranking.py checks 1e-5).
With N = Nq + Ng items (queries first):

1. S = [[q_q, q_g], [q_g^T, g_g]] squared element-wise; d(i, j) = S[j, i] / max_j' S[j', i]
   (the reference normalises columns and transposes; for symmetric inputs that is row i).
2. N(i, k): the first k items of row i of d in ascending order (i itself, normally).
   R(i, k) = {j in N(i, k) : i in N(j, k)}, the k-reciprocal neighbours.
3. R*(i) = R(i, k1 + 1) plus every R(c, round(k1 / 2) + 1), c in R(i, k1 + 1), that has
   more than 2/3 of its members in R(i, k1 + 1) (round half to even, as numpy.around).
4. V[i, j] = exp(-d(i, j)) / sum_{j' in R*(i)} exp(-d(i, j')) for j in R*(i), else 0.
5. Local query expansion (skipped when k2 = 1): V[i] <- mean_{t < k2} V[N(i, k2)_t].
6. J(i, g) = 1 - s / (2 - s), s = sum_j min(V[i, j], V[g, j]), and
   final(i, g) = (1 - lambda) J(i, g) + lambda d(i, g) for query i and gallery g.

Neighbourhoods larger than N are truncated to N, like the reference's slices.

Memory and what is still O(N^2). Nothing of size N x N is allocated: S is handed out in blocks
of `block_size` rows (sources.py) and read once, for the neighbour lists; the weights of R*
read S only at its members. Device memory is O(block_size x N). What is kept for all items:
  * the neighbour lists, int32[N, max(k1 + 1, k2)];
  * V as top-k style sparse rows, int32 column indices + float32 weights of width L <= the
    largest |R*(i)| (at most (k1 + 1)(round(k1 / 2) + 2)), and after query expansion width <=
    k2 L: O(N k1^2 k2) in the worst case, in practice a few hundred entries per row;
  * the inverted index of the gallery rows of V (same size as those rows).
The Jaccard step does work proportional to the (query entry, gallery entry) pairs sharing a
column, computed in blocks of at most `block_size x N` pairs and `block_size` queries
(jaccard.py). O(N^2) remain only in the caller's inputs (`re_ranking` takes the three dense
distance matrices; `re_ranking_features` does not need them) and the [Nq, Ng] output.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from grl_jax.reranking import encoding, jaccard, sources

__all__ = ['re_ranking', 're_ranking_features']


def _round_width(width: int, cap: int) -> int:
  """Occupied width rounded up to a multiple of 16 (fewer distinct compiled shapes)."""
  return int(min(cap, max(16, -(-width // 16) * 16)))


def _compact(idx: jax.Array, val: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
  """Drops the trailing columns that are empty in every row (entries are valid-first)."""
  width = _round_width(int(encoding.row_counts(idx, jnp.int32(n))), idx.shape[1])
  return idx[:, :width], val[:, :width]


def _blocks(n: int, block_size: int) -> tuple[list[tuple[int, int]], int]:
  """Equal consecutive row ranges of at most block_size rows, and their padded row count."""
  num = math.ceil(n / block_size)
  rows = math.ceil(n / num)
  return [(b * rows, min((b + 1) * rows, n)) for b in range(num)], rows


def _rerank(source, k1: int, k2: int, lam: float, block_size: int) -> np.ndarray:
  n, nq, ng = source.n, source.nq, source.ng
  kr = min(k1 + 1, n)                          # |N(i, k1 + 1)|
  kh = min(encoding.half_k(k1) + 1, n)          # |N(c, round(k1 / 2) + 1)|
  kq = min(k2, n)
  k = max(kr, kq)
  ranges, pad = _blocks(n, block_size)

  # Pass 1: row maxima and neighbour lists. Dispatch is asynchronous: the host cuts block
  # b + 1 of S while the device ranks block b; waiting for b then keeps one block in flight.
  maxima, lists, previous = [], [], None
  for s, t in ranges:
    m, i = encoding.neighbours_block(source.rows(s, t, pad), k)
    if previous is not None:
      previous.block_until_ready()
    maxima.append(m[:t - s])
    lists.append(i[:t - s])
    previous = i
  row_max, nbr = jnp.concatenate(maxima), jnp.concatenate(lists)
  del maxima, lists, previous
  recip_h = encoding.reciprocal_mask(nbr, jnp.arange(n, dtype=jnp.int32), kh)
  table = jnp.asarray(encoding.acceptance_table(kh))

  # Expanded reciprocal sets, then their weights from S at just those entries.
  members = []
  for s, t in ranges:
    ids = jnp.asarray(np.minimum(np.arange(s, s + pad), t - 1).astype(np.int32))
    members.append(encoding.expansion_block(ids, nbr, recip_h, table, kr, kh)[:t - s])
  v_idx = jnp.concatenate(members)
  del members
  v_idx = v_idx[:, :_round_width(int(encoding.row_counts(v_idx, jnp.int32(n))), v_idx.shape[1])]
  v_val = encoding.weights(v_idx, source.entries(v_idx), row_max)

  if k2 != 1:
    qe_idx, qe_val = [], []
    for s, t in ranges:
      ids = jnp.arange(s, t, dtype=jnp.int32)
      ids = jnp.pad(ids, (0, pad - (t - s)), mode='edge')
      i, w = encoding.query_expansion_block(ids, nbr, v_idx, v_val, kq)
      qe_idx.append(i[:t - s])
      qe_val.append(w[:t - s])
    v_idx, v_val = _compact(jnp.concatenate(qe_idx), jnp.concatenate(qe_val), n)
    del qe_idx, qe_val

  # Jaccard + final combination, query blocks bounded by pairs.
  ptr, csc_rows, csc_vals = jaccard.inverted_index(v_idx[nq:], v_val[nq:], n)
  q_idx, q_val = v_idx[:nq], v_val[:nq]
  # Lanes per task ~ the mean column length (power of two in [4, 64]): few idle lanes, few tasks.
  mean = float(jaccard.mean_pairs(q_idx, ptr))
  chunk = int(min(64, max(4, 2 ** round(math.log2(max(mean, 1.0))))))
  counts = np.asarray(jaccard.task_counts(q_idx, ptr, chunk))
  budget = max(block_size * n // chunk, int(counts.max()), 1)
  budget = -(-budget // 1024) * 1024
  rows = min(block_size, nq)
  out = np.empty((nq, ng), np.float32)
  lam32 = jnp.float32(lam)

  def dispatch(s, t):
    ids = jnp.pad(jnp.arange(s, t, dtype=jnp.int32), (0, rows - (t - s)), mode='edge')
    empty = jnp.arange(rows) >= t - s           # padding rows pair with nothing
    qi = jnp.where(empty[:, None], n, q_idx[ids])
    return jaccard.final_block(qi, q_val[ids], ptr, csc_rows, csc_vals,
                               source.query_gallery(s, t, rows), row_max[ids], lam32, budget,
                               chunk)

  pending = None
  for s, t in jaccard.query_blocks(counts, rows, budget):
    block = dispatch(s, t)
    if pending is not None:
      (ps, pt), prev = pending
      out[ps:pt] = np.asarray(prev)[:pt - ps]
    pending = (s, t), block
  (ps, pt), prev = pending
  out[ps:pt] = np.asarray(prev)[:pt - ps]
  return out


def re_ranking(q_g_dist, q_q_dist, g_g_dist, k1: int = 20, k2: int = 6,
               lambda_value: float = 0.3, block_size: int = 512) -> np.ndarray:
  """k-reciprocal re-ranked query-gallery distances from three distance matrices.

  Args:
    q_g_dist: float[Nq, Ng] query-gallery distances (numpy or jax; not squared: the method
      squares them, as the reference does).
    q_q_dist: float[Nq, Nq] query-query distances.
    g_g_dist: float[Ng, Ng] gallery-gallery distances.
    k1: size of the k-reciprocal neighbourhood (paper: 20).
    k2: neighbours of the local query expansion; 1 disables it (paper: 6).
    lambda_value: weight of the original distance in the final one (paper: 0.3).
    block_size: rows of the distance matrix per device block; also bounds the query rows and
      (x N) the pairs of a Jaccard block.

  Returns:
    float32 numpy [Nq, Ng] re-ranked distances; smaller = more similar.

  Raises:
    ConfigError: a parameter out of range or matrices of inconsistent shapes.
  """
  k1, k2, lam, block_size = sources.check_params(k1, k2, lambda_value, block_size)
  return _rerank(sources.MatrixSource(q_g_dist, q_q_dist, g_g_dist), k1, k2, lam, block_size)


def re_ranking_features(qf, gf, metric: str = 'euclidean', k1: int = 20, k2: int = 6,
                        lambda_value: float = 0.3, block_size: int = 512) -> np.ndarray:
  """Re-ranked distances straight from descriptors: what a re-ID evaluator calls.

  Equals `re_ranking` of the three `grl_jax.evaluation.pairwise_distance` matrices (up to
  float32 rounding of the distances) without ever holding them: blocks of distances are
  computed on the device when needed (one N x N x D matmul for the neighbour lists, Nq x Ng x D
  for the final rows, and dot products at the members of each R*).

  Args:
    qf: float[Nq, D] query descriptors; gf: float[Ng, D] gallery descriptors.
    metric: 'euclidean' (plain L2, squared by the method) or 'cosine' (1 - cos); 'dot' is
      rejected because negative distances cannot be squared meaningfully.
    k1, k2, lambda_value, block_size: as in `re_ranking`.

  Returns:
    float32 numpy [Nq, Ng].
  """
  k1, k2, lam, block_size = sources.check_params(k1, k2, lambda_value, block_size)
  return _rerank(sources.FeatureSource(qf, gf, metric), k1, k2, lam, block_size)
