"""Evaluation and top-k retrieval straight from descriptors, the gallery streamed in blocks.

Both walk the gallery once in row blocks (grl_jax/evaluation/gallery.py), so the gallery may be
any array-like, an ``np.memmap`` / ``np.load(path, mmap_mode='r')`` larger than memory included.
The metrics are grl_jax/evaluation/blocked.py's exact gallery-blocked formulation.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from grl_jax import errors
from grl_jax.evaluation import gallery
from grl_jax.evaluation.blocked import evaluate_tiles
from grl_jax.evaluation.ranking import _ids


def _pair_distances(qf, gf, metric: str, block_rows: int | None, query_chunk: int | None):
  """fn(rows, cols) -> f32 distances of those (query, gallery) pairs (rows sorted), computed
  with the block kernel on gathered gallery rows: same tile shape as the main pass."""

  def fn(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    out = np.zeros(len(rows), np.float32)
    if len(rows) == 0:
      return out
    union = np.unique(cols)
    for q0, q1, index, d in gallery.distance_tiles(qf, gf, metric, block_rows, query_chunk,
                                                   columns=union):
      lo, hi = np.searchsorted(rows, [q0, q1])
      r, c = rows[lo:hi], cols[lo:hi]
      inside = (c >= index[0]) & (c <= index[-1])
      part = out[lo:hi]
      part[inside] = d[r[inside] - q0, np.searchsorted(index, c[inside])]
    return out

  return fn


def evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, metric: str = 'euclidean',
                      protocol: str = 'torchreid', max_rank: int = 50,
                      chunk_size: int | None = None,
                      official_scan_limit: int | None = None,
                      gallery_block: int | None = None) -> dict[str, Any]:
  """`evaluate(pairwise_distance(qf, gf, metric), ...)` with the gallery streamed in blocks.

  The gallery is read once in blocks of `gallery_block` rows (plus a gather of the rows that
  share a pid with some query), so the peak is the queries plus O(chunk x gallery_block)
  working memory, whatever Ng. Ranks are exact under the stable (distance, gallery index)
  order; see grl_jax/evaluation/blocked.py.

  Args:
    qf: float[Nq, D] (numpy or jax array).
    gf: float[Ng, D]: numpy array, np.memmap / np.load(..., mmap_mode='r'), jax array, or any
      array-like with `shape` and numpy slicing.
    metric: see `pairwise_distance`.
    chunk_size: queries per distance tile (default all, at most 2048).
    gallery_block: gallery rows per tile (default: a tile of about 2**24 distances).
    Others: see `evaluate`.
  """
  nq, ng = qf.shape[0], gf.shape[0]
  q_pids, q_camids = _ids(q_pids, 'q_pids', nq), _ids(q_camids, 'q_camids', nq)
  g_pids, g_camids = _ids(g_pids, 'g_pids', ng), _ids(g_camids, 'g_camids', ng)
  tiles = gallery.distance_tiles(qf, gf, metric, gallery_block, chunk_size)
  return evaluate_tiles(tiles, q_pids, g_pids, q_camids, g_camids,
                        _pair_distances(qf, gf, metric, gallery_block, chunk_size),
                        protocol=protocol, max_rank=max_rank,
                        official_scan_limit=official_scan_limit)


def _merge_smallest(dist: np.ndarray, index: np.ndarray, k: int):
  """The k smallest of each row by (distance, gallery index), sorted.

  Args:
    dist: f32[C, m]; index: int64[C, m], increasing along each row wherever distances tie.
  Returns:
    (f32[C, min(k, m)], int64[C, min(k, m)]).
  """
  c, m = dist.shape
  k = min(k, m)
  if m > k:
    kth = np.partition(dist, k - 1, axis=1)[:, k - 1]
    less = dist < kth[:, None]
    equal = dist == kth[:, None]
    # Of the entries equal to the k-th value, the earliest (smallest gallery index) complete k.
    room = k - less.sum(axis=1)
    keep = less | (equal & (np.cumsum(equal, axis=1) <= room[:, None]))
    picked = np.nonzero(keep)[1].reshape(c, k)
    dist = np.take_along_axis(dist, picked, axis=1)
    index = np.take_along_axis(index, picked, axis=1)
  order = np.lexsort((index, dist), axis=-1)
  return np.take_along_axis(dist, order, axis=1), np.take_along_axis(index, order, axis=1)


def top_k(qf, gf, k: int, metric: str = 'euclidean', chunk_size: int | None = None,
          gallery_block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The k nearest gallery entries of every query, the gallery streamed in blocks.

  Ties are ranked by gallery index, so row q equals the first k entries of
  ``np.argsort(pairwise_distance(qf, gf, metric)[q], kind='stable')``.

  Args:
    qf: float[Nq, D]; gf: float[Ng, D], any array-like (see `evaluate_features`).
    k: 1 <= k <= Ng.
    metric: 'euclidean' | 'cosine' | 'dot' (see `pairwise_distance`).
    chunk_size, gallery_block: tile shape (see `evaluate_features`).

  Returns:
    (indices int64[Nq, k], distances float32[Nq, k]), nearest first.
  """
  ng = int(gf.shape[0])
  if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= ng:
    raise errors.ConfigError(f'top_k: k must be an integer in [1, {ng}] (the gallery size), '
                             f'got {k!r}')
  best: dict[int, tuple[np.ndarray, np.ndarray]] = {}
  for q0, q1, cols, d in gallery.distance_tiles(qf, gf, metric, gallery_block, chunk_size):
    if not np.isfinite(d).all():
      raise ValueError('top_k: distances contain NaN or inf')
    cand_d = d
    cand_i = np.broadcast_to(cols[None, :], d.shape)
    if q0 in best:
      # Earlier blocks hold smaller gallery indices, so the running best goes first.
      cand_d = np.concatenate([best[q0][0], d], axis=1)
      cand_i = np.concatenate([best[q0][1], cand_i], axis=1)
    best[q0] = _merge_smallest(cand_d, cand_i, int(k))
  starts = sorted(best)
  distances = np.concatenate([best[s][0] for s in starts]).astype(np.float32)
  indices = np.concatenate([best[s][1] for s in starts]).astype(np.int64)
  return indices, distances
