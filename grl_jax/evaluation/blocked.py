"""Exact CMC / mAP / mINP with the gallery streamed in blocks (no query row is ever sorted whole).

Every metric of grl_jax/evaluation/__init__.py depends on a query's ranked list only through
the position of each of its *good* entries p (same pid, other camera) under the stable order
(distance, then gallery index):

    kept_pos(p) = #{s same-pid, kept : (d_s, s) < (d_p, p)} + neg(p)
    raw_pos(p)  = #{s same-pid       : (d_s, s) < (d_p, p)} + neg(p) + junk0(p)

where neg(p) = #{c : pid_c != pid_q, c kept, (d_c, c) < (d_p, p)} counts the query's kept
negatives ranked before p, junk0(p) the same for pid -1 entries ('official' junk, needed only
for `official_scan_limit`), "kept" = not junk, and raw_pos is the position in the list with
junk (the scan limit's). The same-pid terms are sparse and computed from the same-pid
distances alone (a pre-pass over the union of the queries' same-pid gallery rows). neg and
junk0 are sums over gallery blocks of per-block counts, so any block split gives the same
integers: per block the negatives of each query are sorted (entries farther than the query's
farthest good entry, which cannot precede any good entry, become +inf first) and each good
distance is located by binary search; exact ties are resolved by gallery index with a direct
count. The positions then feed the same AP / CMC / INP accumulation as `evaluate`
(grl_jax/evaluation/ranking.py: trapezoid AP and junk rules of 'official', step AP of
'torchreid' / 'cas'), so the result equals `evaluate` on the distance matrix whose same-pid
entries are the pre-pass values and the others the block values.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np

from grl_jax.evaluation.ranking import _Accumulator, _row_searchsorted

# Tied entries resolved per batch: ~2**23 elements of temporaries.
_TIE_ELEMENTS = 2**23


def _count_before(block: np.ndarray, excluded: np.ndarray, threshold: np.ndarray,
                  rows: np.ndarray, values: np.ndarray, cols: np.ndarray,
                  block_cols: np.ndarray) -> np.ndarray:
  """counts[e] = #{j not excluded[r, j] : (block[r, j], block_cols[j]) < (values[e], cols[e])},
  r = rows[e].

  Args:
    block: f32[R, n] distances of one gallery block.
    excluded: bool[R, n] entries not counted.
    threshold: f32[R], at least every values[e] of row r (farther entries are never counted).
    rows, values, cols: int[E], f32[E], int[E] the entries to place (E pairs).
    block_cols: int[n] gallery index of each column.
  """
  work = block.copy()
  np.copyto(work, np.float32(np.inf), where=excluded | (block > threshold[:, None]))
  work.sort(axis=1)
  less = _row_searchsorted(work, rows, values, 'left')
  tied = np.nonzero(_row_searchsorted(work, rows, values, 'right') > less)[0]
  step = max(1, _TIE_ELEMENTS // max(1, block.shape[1]))
  for s in range(0, len(tied), step):
    t = tied[s:s + step]
    r = rows[t]
    before = ((block[r] == values[t][:, None]) & ~excluded[r]
              & (block_cols[None, :] < cols[t][:, None]))
    less[t] += before.sum(axis=1)
  return less


class BlockedRanking:
  """Accumulates the positions of every good entry over (query chunk, gallery block) tiles.

  Args:
    q_pids, q_camids: int[Nq]; g_pids, g_camids: int[Ng].
    protocol, max_rank, official_scan_limit: see `grl_jax.evaluation.evaluate`.
    pair_distances: fn(rows int64[E], cols int64[E]) -> f32[E], the distances of the
      (query, same-pid gallery entry) pairs; called once, before any tile.
  """

  def __init__(self, q_pids, g_pids, q_camids, g_camids, protocol: str, max_rank: int,
               official_scan_limit: int | None,
               pair_distances: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    self.acc = _Accumulator(g_pids, g_camids, protocol, max_rank, official_scan_limit)
    self.q_pids = np.asarray(q_pids).astype(np.int64)
    self.q_camids = np.asarray(q_camids).astype(np.int64)
    self.nq = len(self.q_pids)
    acc = self.acc
    rows, cols = acc._same_pid_entries(self.q_pids)  # sorted by row
    dist = np.asarray(pair_distances(rows, cols), np.float32).reshape(-1)
    if len(dist) != len(rows):
      raise ValueError(f'evaluation: pair_distances returned {len(dist)} values for '
                       f'{len(rows)} pairs')
    if not np.isfinite(dist).all():
      raise ValueError('evaluation: distances contain NaN or inf')
    good = acc.g_camids[cols] != self.q_camids[rows]
    # Only with a pid -1 query in 'official' is a good entry junk too (ranking.py).
    good_is_junk = good & (acc.g_pids[cols] == -1) if acc.official else np.zeros_like(good)
    kept = good & ~good_is_junk

    # Sparse part: each pair's place among its query's same-pid entries, stable order.
    order = np.lexsort((cols, dist, rows))
    counts = np.bincount(rows, minlength=self.nq)
    starts = np.cumsum(counts) - counts
    sorted_rows = rows[order]
    raw_before = np.empty(len(rows), np.int64)
    raw_before[order] = np.arange(len(rows)) - starts[sorted_rows]
    sorted_kept = kept[order].astype(np.int64)
    kept_cum = np.cumsum(sorted_kept) - sorted_kept  # kept pairs before, across all rows
    row_offset = np.zeros(self.nq, np.int64)
    nz = counts > 0
    row_offset[nz] = kept_cum[starts[nz]]  # ... minus those of earlier rows
    kept_before = np.empty(len(rows), np.int64)
    kept_before[order] = kept_cum - row_offset[sorted_rows]

    g = np.nonzero(good)[0]
    self.rows, self.cols, self.dist = rows[g], cols[g], dist[g]
    self.good_is_junk = good_is_junk[g]
    self.kept_before, self.raw_before = kept_before[g], raw_before[g]
    self.neg = np.zeros(len(g), np.int64)
    self.junk0 = np.zeros(len(g), np.int64)
    self.threshold = np.full(self.nq, -np.inf, np.float32)
    np.maximum.at(self.threshold, self.rows, self.dist)
    self.num_good = np.bincount(self.rows, minlength=self.nq)

  def add(self, q0: int, q1: int, block_cols: np.ndarray, block: np.ndarray):
    """Counts the tile of queries [q0, q1) x gallery rows `block_cols`: f32[q1 - q0, n]."""
    block = np.asarray(block, np.float32)
    if block.shape != (q1 - q0, len(block_cols)):
      raise ValueError(f'evaluation: tile has shape {block.shape}, expected '
                       f'{(q1 - q0, len(block_cols))}')
    if not np.isfinite(block).all():
      raise ValueError('evaluation: distances contain NaN or inf')
    lo, hi = np.searchsorted(self.rows, [q0, q1])
    if hi == lo:
      return
    # Only the queries with a good entry need their rows ranked.
    active = np.nonzero(self.num_good[q0:q1] > 0)[0]
    local = np.searchsorted(active, self.rows[lo:hi] - q0)
    sub = block[active] if len(active) < block.shape[0] else block
    q_pids = self.q_pids[q0:q1][active]
    b_pids = self.acc.g_pids[block_cols]
    same = b_pids[None, :] == q_pids[:, None]
    thr = self.threshold[q0:q1][active]
    vals, cols = self.dist[lo:hi], self.cols[lo:hi]
    if self.acc.official:
      junk0 = b_pids == -1
      self.neg[lo:hi] += _count_before(sub, same | junk0[None, :], thr, local, vals, cols,
                                       block_cols)
      if self.acc.scan_limit is not None and junk0.any():
        # pid -1 entries that are not the query's own pid: counted in the raw position only.
        j = np.nonzero(junk0)[0]
        self.junk0[lo:hi] += _count_before(sub[:, j], same[:, j], thr, local, vals, cols,
                                           block_cols[j])
    else:
      self.neg[lo:hi] += _count_before(sub, same, thr, local, vals, cols, block_cols)

  def result(self) -> dict[str, Any]:
    acc = self.acc
    pos = self.kept_before + self.neg
    seen = np.ones(len(pos), bool)
    if acc.scan_limit is not None:
      seen = self.raw_before + self.neg + self.junk0 < acc.scan_limit
    hit = seen & ~self.good_is_junk
    acc._accumulate(self.nq, self.rows[seen], pos[seen], self.rows[hit], pos[hit],
                    self.num_good)
    return acc.result()


def evaluate_tiles(tiles: Iterable[tuple[int, int, np.ndarray, np.ndarray]], q_pids, g_pids,
                   q_camids, g_camids, pair_distances, protocol: str = 'torchreid',
                   max_rank: int = 50, official_scan_limit: int | None = None
                   ) -> dict[str, Any]:
  """`evaluate` from distance tiles that cover every (query, gallery) entry once.

  Args:
    tiles: (q0, q1, gallery_index int[n], f32[q1 - q0, n]) in any order.
    pair_distances: see `BlockedRanking`.
    Others: see `grl_jax.evaluation.evaluate`.
  """
  ranking = BlockedRanking(q_pids, g_pids, q_camids, g_camids, protocol, max_rank,
                           official_scan_limit, pair_distances)
  for q0, q1, cols, block in tiles:
    ranking.add(q0, q1, np.asarray(cols, np.int64), block)
  return ranking.result()
