"""CMC / mAP / mINP of ranked galleries under the three protocols (grl_jax/evaluation/__init__.py
gives the exact rules) of a distance matrix, in query chunks; grl_jax/evaluation/blocked.py
streams the gallery instead."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from grl_jax import schema

# Elements of one [chunk, Ng] working block; 2**23 float32 = 32 MiB.
_CHUNK_ELEMENTS = 2**23


def _row_searchsorted(sorted_rows: np.ndarray, rows: np.ndarray, values: np.ndarray,
                      side: str) -> np.ndarray:
  """np.searchsorted(sorted_rows[r], v, side) for many (r, v) pairs at once (binary search)."""
  n = sorted_rows.shape[1]
  lo = np.zeros(len(rows), np.int64)
  hi = np.full(len(rows), n, np.int64)
  for _ in range(n.bit_length()):
    active = lo < hi
    if not active.any():
      break
    mid = (lo + hi) >> 1
    x = sorted_rows[rows, np.minimum(mid, n - 1)]
    go_right = (x < values) if side == 'left' else (x <= values)
    lo = np.where(active & go_right, mid + 1, lo)
    hi = np.where(active & ~go_right, mid, hi)
  return lo


def _stable_positions(dist: np.ndarray, sorted_rows: np.ndarray, rows: np.ndarray,
                      cols: np.ndarray, counted_mask_fn, self_counted: np.ndarray) -> np.ndarray:
  """Position of gallery entry (r, c) in row r's stable ascending order, counting only the
  entries that `sorted_rows` holds with finite value.

  Position = #{c' counted : d[r,c'] < d[r,c]} + #{c' counted, c' < c : d[r,c'] == d[r,c]}.

  Args:
    dist: f32[C, Ng] distances (original values).
    sorted_rows: f32[C, Ng] sorted distances of the counted entries, uncounted ones set to +inf.
    rows, cols: int[E] entries to place.
    counted_mask_fn: fn(row_ids) -> bool[len(row_ids), Ng], which entries are counted.
    self_counted: bool[E], whether (r, c) itself is among the counted entries.
  """
  values = dist[rows, cols]
  less = _row_searchsorted(sorted_rows, rows, values, 'left')
  equal = _row_searchsorted(sorted_rows, rows, values, 'right') - less
  tied = np.nonzero(equal > self_counted.astype(np.int64))[0]
  if len(tied):
    # Exact ties are rare (duplicated descriptors); resolve them by gallery index with a direct
    # count, in batches so the temporary stays ~_CHUNK_ELEMENTS.
    ng = dist.shape[1]
    step = max(1, _CHUNK_ELEMENTS // ng)
    for s in range(0, len(tied), step):
      t = tied[s:s + step]
      r, c = rows[t], cols[t]
      before = ((dist[r] == values[t][:, None]) & counted_mask_fn(r)
                & (np.arange(ng)[None, :] < c[:, None]))
      less[t] += before.sum(axis=1)
  return less


# ----------------------------------------------------------------------------------------------
# Per-chunk statistics and their accumulation.


class _Accumulator:
  """Sums per-query AP / INP and the first-hit histogram over query chunks."""

  def __init__(self, g_pids, g_camids, protocol: str, max_rank: int,
               official_scan_limit: int | None):
    schema.check_choice(protocol, schema.PROTOCOLS, 'evaluation: protocol')
    self.g_pids = np.asarray(g_pids).astype(np.int64).ravel()
    self.g_camids = np.asarray(g_camids).astype(np.int64).ravel()
    if len(self.g_pids) != len(self.g_camids):
      raise ValueError(f'evaluation: g_pids has {len(self.g_pids)} entries but g_camids '
                       f'{len(self.g_camids)}')
    ng = len(self.g_pids)
    if ng == 0:
      raise ValueError('evaluation: empty gallery')
    if max_rank < 1:
      raise ValueError(f'evaluation: max_rank must be >= 1, got {max_rank}')
    self.official = protocol == 'official'
    self.protocol = protocol
    self.scan_limit = None
    if official_scan_limit is not None:
      if not self.official:
        raise ValueError('evaluation: official_scan_limit only applies to protocol="official"')
      if official_scan_limit < 1:
        raise ValueError(f'evaluation: official_scan_limit must be >= 1, got '
                         f'{official_scan_limit}')
      if official_scan_limit < ng:
        self.scan_limit = int(official_scan_limit)
    # torchreid clips max_rank to the gallery size; the official CMC has Ng (or limit) entries.
    self.max_rank = min(max_rank, ng, self.scan_limit or ng)
    self.junk0_cols = np.nonzero(self.g_pids == -1)[0] if self.official else None
    # Gallery grouped by pid, so that each query finds its same-pid entries directly.
    self.pid_order = np.argsort(self.g_pids, kind='stable')
    self.pid_values, self.pid_starts, self.pid_counts = np.unique(
        self.g_pids[self.pid_order], return_index=True, return_counts=True)
    self.first_hist = np.zeros(self.max_rank, np.int64)
    self.ap_sum = 0.0
    self.inp_sum = 0.0
    self.num_valid = 0    # queries with at least one good entry
    self.num_counted = 0  # queries in the averages
    self._work = None     # f32[chunk, Ng] sort buffer

  def _same_pid_entries(self, q_pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of every (query, gallery) pair sharing a pid, without a [C, Ng] mask."""
    pos = np.searchsorted(self.pid_values, q_pids)
    pos_c = np.minimum(pos, len(self.pid_values) - 1)
    found = (pos < len(self.pid_values)) & (self.pid_values[pos_c] == q_pids)
    counts = np.where(found, self.pid_counts[pos_c], 0)
    starts = np.where(found, self.pid_starts[pos_c], 0)
    rows = np.repeat(np.arange(len(q_pids)), counts)
    offsets = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    cols = self.pid_order[np.repeat(starts, counts) + offsets]
    return rows, cols

  def _junk_mask(self, q_pids: np.ndarray, q_camids: np.ndarray) -> np.ndarray:
    """bool[len(q), Ng]: entries skipped for each query."""
    junk = ((self.g_pids[None, :] == q_pids[:, None])
            & (self.g_camids[None, :] == q_camids[:, None]))
    if self.official:
      junk |= (self.g_pids == -1)[None, :]
    return junk

  def add(self, dist: np.ndarray, q_pids: np.ndarray, q_camids: np.ndarray):
    """Accounts for a chunk of queries.

    Args:
      dist: f32[C, Ng] distances of C queries.
      q_pids, q_camids: int[C].
    """
    dist = np.asarray(dist, np.float32)
    c, ng = dist.shape
    if ng != len(self.g_pids):
      raise ValueError(f'evaluation: distmat has {ng} gallery columns, g_pids has '
                       f'{len(self.g_pids)}')
    if not np.isfinite(dist).all():
      raise ValueError('evaluation: distmat contains NaN or inf')
    q_pids = q_pids.astype(np.int64)
    q_camids = q_camids.astype(np.int64)

    # Sparse entries: same pid as the query. Split into junk (same camera) and good.
    same_r, same_c = self._same_pid_entries(q_pids)
    same_cam = self.g_camids[same_c] == q_camids[same_r]
    good_r, good_c = same_r[~same_cam], same_c[~same_cam]
    # Only with a pid -1 query in 'official' can a good entry also be junk.
    good_is_junk = (self.g_pids[good_c] == -1) if self.official else np.zeros(len(good_r), bool)

    # Entries ranked after a query's farthest good entry cannot change any good entry's
    # position: they go to +inf too, and sorting a row that is mostly +inf is several times
    # faster (a trained model ranks most positives early, so this is most of the row).
    threshold = np.full(c, -np.inf, np.float32)
    np.maximum.at(threshold, good_r, dist[good_r, good_c])
    irrelevant = dist > threshold[:, None]

    # Reused across chunks: a fresh 30+ MiB array per chunk costs more in page faults than the
    # copy itself.
    if self._work is None or self._work.shape[0] < c:
      self._work = np.empty((c, ng), np.float32)
    kept_sorted = self._work[:c]
    np.copyto(kept_sorted, dist)
    kept_sorted[irrelevant] = np.inf
    kept_sorted[same_r[same_cam], same_c[same_cam]] = np.inf
    if self.official and len(self.junk0_cols):
      kept_sorted[:, self.junk0_cols] = np.inf
    kept_sorted.sort(axis=1)

    def kept_mask(rows):
      return ~self._junk_mask(q_pids[rows], q_camids[rows])

    # 0-based position in the junk-free ranked list (for a junk good entry: the number of
    # non-junk entries ranked before it, which is where the official code records its CMC hit).
    pos = _stable_positions(dist, kept_sorted, good_r, good_c, kept_mask, ~good_is_junk)

    seen = np.ones(len(good_r), bool)
    if self.scan_limit is not None:
      # STE-NVAN scans only the first `limit` entries of the raw ranking (junk included).
      all_sorted = self._work[:c]
      np.copyto(all_sorted, dist)
      all_sorted[irrelevant] = np.inf
      all_sorted.sort(axis=1)
      raw = _stable_positions(dist, all_sorted, good_r, good_c,
                              lambda rows: np.ones((len(rows), ng), bool),
                              np.ones(len(good_r), bool))
      seen = raw < self.scan_limit

    num_good = np.bincount(good_r, minlength=c)
    hit = seen & ~good_is_junk
    self._accumulate(c, good_r[seen], pos[seen], good_r[hit], pos[hit], num_good)

  def _accumulate(self, c, first_rows, first_pos, hit_rows, hit_pos, num_good):
    # First matching entry per query -> CMC histogram.
    first = np.full(c, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, first_rows, first_pos)
    has_first = first < self.max_rank

    # Hits in ranked order within each query: i-th hit (1-based) at 1-based rank r.
    order = np.lexsort((hit_pos, hit_rows))
    hit_rows, r = hit_rows[order], hit_pos[order].astype(np.float64) + 1.0
    num_hits = np.bincount(hit_rows, minlength=c)
    starts = np.cumsum(num_hits) - num_hits
    i = (np.arange(len(hit_rows)) - starts[hit_rows] + 1).astype(np.float64)
    last_r = np.zeros(c, np.float64)
    has_hit = num_hits > 0
    last_r[has_hit] = r[starts[has_hit] + num_hits[has_hit] - 1]
    inp = np.zeros(c, np.float64)
    inp[has_hit] = num_hits[has_hit] / last_r[has_hit]

    if self.official:
      # Trapezoid step at the i-th hit: recall rises by 1/num_good while precision goes from
      # (i-1)/(r-1) at the previous junk-free entry (1.0 before the first one) to i/r.
      prev_precision = np.where(r > 1, (i - 1) / np.maximum(r - 1, 1), 1.0)
      terms = (prev_precision + i / r) / 2.0
      valid = num_good > 0
      denom = num_good
      counted = np.ones(c, bool)  # the official code averages over every query
    else:
      terms = i / r  # precision at each hit
      valid = num_hits > 0
      denom = num_hits
      counted = valid  # queries without a match are skipped, CMC included
      has_first &= valid
    self.first_hist += np.bincount(first[has_first], minlength=self.max_rank)
    ap_num = np.bincount(hit_rows, weights=terms, minlength=c)
    ap = np.zeros(c, np.float64)
    ap[valid] = ap_num[valid] / denom[valid]
    self.ap_sum += float(ap[counted].sum())
    self.inp_sum += float(inp[counted].sum())
    self.num_valid += int(valid.sum())
    self.num_counted += int(counted.sum())

  def result(self) -> dict[str, Any]:
    if self.num_counted == 0:
      raise ValueError('evaluation: no query has a matching gallery entry (all skipped)')
    if self.official and self.num_valid < self.num_counted:
      warnings.warn(
          f'evaluation (official): {self.num_counted - self.num_valid} of {self.num_counted} '
          'queries have no good gallery entry; counted with AP 0 and CMC 0 (the MATLAB '
          'reference would return NaN)')
    n = self.num_counted
    cmc = np.cumsum(self.first_hist).astype(np.float64) / n
    out = {
        'protocol': self.protocol,
        'mAP': self.ap_sum / n,
        'cmc': cmc,
        'mINP': self.inp_sum / n,
        'num_valid_queries': self.num_valid,
        'num_queries': n,
    }
    for k in (1, 5, 10, 20):
      if k <= len(cmc):
        out[f'rank{k}'] = float(cmc[k - 1])
    return out


def _ids(a, name: str, n: int | None = None) -> np.ndarray:
  a = np.asarray(a)
  if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
    raise ValueError(f'evaluation: {name} must be a 1-D integer array, got dtype {a.dtype} '
                     f'shape {a.shape}')
  if n is not None and len(a) != n:
    raise ValueError(f'evaluation: {name} has {len(a)} entries, expected {n}')
  return a


def _auto_chunk(ng: int) -> int:
  return int(min(1024, max(1, _CHUNK_ELEMENTS // ng)))


def evaluate(distmat: np.ndarray, q_pids, g_pids, q_camids, g_camids,
             protocol: str = 'torchreid', max_rank: int = 50, chunk_size: int | None = None,
             official_scan_limit: int | None = None) -> dict[str, Any]:
  """CMC, mAP and mINP of a query x gallery distance matrix.

  Args:
    distmat: float[Nq, Ng] (float32 is used as is; others are cast chunk by chunk).
      Smaller = more similar. Ties are ranked by gallery index.
    q_pids, q_camids: int[Nq]; g_pids, g_camids: int[Ng] (original test pids: -1 junk,
      0 distractor in MARS).
    protocol: 'official' | 'torchreid' | 'cas' (module docstring).
    max_rank: CMC length (clipped to Ng, like torchreid).
    chunk_size: queries per chunk (default: about 2**23 / Ng, at most 1024).
    official_scan_limit: with protocol 'official', scan only this many top entries of the raw
      ranking (junk included); 10000 reproduces STE-NVAN's ``Video_Cmc(..., 10000)``. None =
      the whole list, as the MATLAB script does. Good entries beyond the limit add nothing to
      AP, CMC or mINP (but still count in AP's recall denominator, as in STE-NVAN).

  Returns:
    {'mAP': float in [0, 1], 'cmc': float64[max_rank], 'mINP': float,
     'num_valid_queries': queries with at least one good entry, 'num_queries': queries in the
     averages (all for 'official', the valid ones otherwise), 'rank1'/'rank5'/'rank10'/'rank20':
     floats, 'protocol': str}.
  """
  if distmat.ndim != 2:
    raise ValueError(f'evaluation: distmat must be [Nq, Ng], got shape {distmat.shape}')
  nq, ng = distmat.shape
  q_pids, q_camids = _ids(q_pids, 'q_pids', nq), _ids(q_camids, 'q_camids', nq)
  g_pids, g_camids = _ids(g_pids, 'g_pids', ng), _ids(g_camids, 'g_camids', ng)
  if nq == 0:
    raise ValueError('evaluation: no queries')
  acc = _Accumulator(g_pids, g_camids, protocol, max_rank, official_scan_limit)
  step = chunk_size or _auto_chunk(ng)
  for s in range(0, nq, step):
    acc.add(distmat[s:s + step], q_pids[s:s + step], q_camids[s:s + step])
  return acc.result()
