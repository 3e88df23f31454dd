"""Re-ID evaluation: blocked distances on the accelerator, then CMC / mAP / mINP per protocol.

Three MARS protocols are supported (see /work/shared/reference/ecosystem.md §A.4):

* ``'official'``: the MATLAB script of the MARS benchmark (``utils/evaluation_mars.m`` with
  ``utils/compute_AP.m``), which STE-NVAN's ``util/cmc.py`` re-implements. Per query, *junk* =
  gallery entries with pid -1, or with the query's pid and camera; *good* = same pid, other
  camera. Junk is skipped in the ranked list. AP is the trapezoidal form

      AP = sum_k (recall_k - recall_{k-1}) * (precision_{k-1} + precision_k) / 2,
      precision_0 = 1, recall_0 = 0,

  over the junk-free ranked list, where recall divides by the number of good entries. CMC and
  AP are averaged over **all** queries (the official code divides by the number of queries).
  A query without any good entry makes the MATLAB code produce NaN (0/0) and STE-NVAN's Python
  raise ZeroDivisionError; MARS's 1,980 queries all have one, so this never happens there. We
  count such a query with AP 0 and an all-zero CMC (still in the denominator, as the official
  averaging does) and emit a warning.
* ``'torchreid'`` and ``'cas'``: torchreid's ``eval_market1501`` (``torchreid/metrics/rank.py``).
  Per query, gallery entries with the query's pid and camera are removed; queries with no
  remaining match are skipped; AP is the step form ``sum_{hits} precision@hit / num_rel``;
  CMC = ``min(1, cumsum(matches))`` averaged over the valid queries. ``'cas'`` differs only in
  how the gallery is composed (queries prepended to the gallery, done by the dataset reader), so
  it shares this metric code.

mINP (Ye et al., TPAMI'21, as fast-reid computes it) is ``num_rel / (rank of the hardest
positive)`` over the same junk-free list, averaged like mAP.

Implementation. Sorting a ``[chunk, Ng]`` block is the only full-size work: instead of an argsort
we sort the distances (with junk, and everything ranked after the query's farthest positive,
pushed to +inf) and locate only the positives in each sorted row with a vectorised binary
search. The rank of a positive is its position under a *stable*
ordering (ties broken by gallery index, as MATLAB's ``sort`` does); exact ties are resolved by a
direct count. Everything per positive is float64, but nothing of size Nq x Ng is.

Memory: ``evaluate`` works on row chunks of the given float32 distmat; per chunk it needs one
float32 sort buffer (reused across chunks) and transient bool masks of ``chunk x Ng``; the
default chunk is ~2**23 entries (32 MiB as float32). ``evaluate_features`` never materialises
the distance matrix: it holds at most two chunks of distances (one computed on the device while
the previous one is ranked on the host). Its peak is the features plus their device copy (on the
CPU backend a second host copy, skipped when the caller passes f32 jax arrays) plus
O(chunk x Ng).
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from grl_jax import schema

# Elements of one [chunk, Ng] working block; 2**23 float32 = 32 MiB.
_CHUNK_ELEMENTS = 2**23
_NORM_EPS = 1e-12


# ----------------------------------------------------------------------------------------------
# Distances.


@jax.jit
def _dot_block(q: jax.Array, g: jax.Array) -> jax.Array:
  """f32[Bq, Ng] inner products of a query block f32[Bq, D] with the gallery f32[Ng, D]."""
  # HIGHEST: on GPU/TPU the default f32 matmul may run in TF32/bf16 passes, which would perturb
  # rankings between devices; evaluation must be exact f32.
  return jnp.dot(q, g.T, precision=jax.lax.Precision.HIGHEST)


@functools.partial(jax.jit, static_argnames=('metric',))
def _finish_block(qg: jax.Array, q: jax.Array, g_norm_sq: jax.Array, metric: str) -> jax.Array:
  """Distances from inner products.

  Kept out of `_dot_block` on purpose: on the CPU backend XLA fuses a matmul and its
  element-wise epilogue into one YNNPACK call that repacks the whole gallery operand on every
  call (a gallery-sized transient, ~3x slower per block at 5x MARS); the bare matmul does not.

  Args:
    qg: f32[Bq, Ng] inner products.
    q: f32[Bq, D] the query block (padded rows are zeros; their distances are discarded).
    g_norm_sq: f32[Ng] squared L2 norms of the gallery (computed once, not per block).
    metric: 'euclidean' | 'cosine' | 'dot'.

  Returns:
    f32[Bq, Ng].
  """
  if metric == 'dot':
    return -qg
  q_norm_sq = jnp.sum(q * q, axis=1)
  if metric == 'euclidean':
    sq = q_norm_sq[:, None] + g_norm_sq[None, :] - 2.0 * qg
    return jnp.sqrt(jnp.maximum(sq, 0.0))
  # cosine: normalise after the matmul, with torch.nn.functional.normalize's eps.
  qn = jnp.maximum(jnp.sqrt(q_norm_sq), _NORM_EPS)
  gn = jnp.maximum(jnp.sqrt(g_norm_sq), _NORM_EPS)
  return 1.0 - qg / (qn[:, None] * gn[None, :])


@jax.jit
def _sq_norms(g: jax.Array) -> jax.Array:
  return jnp.sum(g * g, axis=1)


def _to_device(x) -> jax.Array:
  """f32 device copy of a numpy or jax array."""
  if isinstance(x, jax.Array):
    return x if x.dtype == jnp.float32 else x.astype(jnp.float32)
  # device_put copies at most once (on CPU it may even alias a 64-byte aligned array), while
  # jnp.asarray of a numpy array transiently holds two copies: at 10x MARS (0.9 GiB of gallery
  # descriptors) that is the difference between fitting in 2 GiB and not.
  return jax.device_put(np.asarray(x, dtype=np.float32))


def _check_features(qf, gf, metric: str):
  schema.check_choice(metric, schema.DISTANCES, 'evaluation: metric')
  if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1]:
    raise ValueError(f'evaluation: features must be [Nq, D] and [Ng, D] with the same D, got '
                     f'query {tuple(qf.shape)} and gallery {tuple(gf.shape)}')
  if qf.shape[0] == 0 or gf.shape[0] == 0:
    raise ValueError(f'evaluation: empty query ({qf.shape[0]}) or gallery ({gf.shape[0]})')


def _even_blocks(n: int, block_size: int) -> tuple[int, int]:
  """(number of blocks, rows per block) with the least padding for a fixed block shape."""
  if block_size < 1:
    raise ValueError(f'evaluation: block_size must be >= 1, got {block_size}')
  num = math.ceil(n / block_size)
  return num, math.ceil(n / num)


def _distance_blocks(qf, gf, metric: str, block_size: int):
  """Yields (start, stop, f32 numpy [stop - start, Ng]) for consecutive query blocks.

  The gallery is put on the device once; every query block has the same padded shape, so the
  jitted block function compiles once.
  """
  _check_features(qf, gf, metric)
  g = _to_device(gf)
  g_norm_sq = _sq_norms(g)
  nq = qf.shape[0]
  num, rows = _even_blocks(nq, block_size)

  def dispatch(b):
    start, stop = b * rows, min((b + 1) * rows, nq)
    q = jnp.asarray(qf[start:stop], dtype=jnp.float32)
    if stop - start < rows:
      q = jnp.pad(q, ((0, rows - (stop - start)), (0, 0)))
    return start, stop, _finish_block(_dot_block(q, g), q, g_norm_sq, metric)

  # One block in flight: JAX dispatch is asynchronous, so block b+1's matmul runs while the
  # caller ranks block b on the host.
  pending = dispatch(0)
  for b in range(num):
    following = dispatch(b + 1) if b + 1 < num else None
    start, stop, d = pending
    yield start, stop, np.asarray(d)[:stop - start]
    pending = following


def pairwise_distance(qf, gf, metric: str = 'euclidean', block_size: int = 1024) -> np.ndarray:
  """Query-gallery distance matrix, computed in query blocks on the default JAX device.

  Args:
    qf: float[Nq, D] query descriptors (numpy or jax array).
    gf: float[Ng, D] gallery descriptors.
    metric: 'euclidean': plain (not squared) L2 distance,
        sqrt(max(|q|^2 + |g|^2 - 2 <q, g>, 0)) (the clamp absorbs f32 cancellation; for
        near-identical vectors expect an absolute error of ~sqrt(f32 eps) |q| = 3e-4 |q|);
      'cosine': 1 - <q, g> / (max(|q|, 1e-12) max(|g|, 1e-12)) (rank-equivalent to STE-NVAN's
        -cos);
      'dot': -<q, g>, GRL's "cosin_dist" on unnormalised descriptors (grl.md §8.3).
    block_size: query rows per block. Blocks are equalised (ceil(Nq / ceil(Nq / block_size))
      rows) and the last one zero-padded so one compiled shape serves all.

  Returns:
    float32 numpy [Nq, Ng]; smaller = more similar.
  """
  out = np.empty((qf.shape[0], gf.shape[0]), np.float32)
  for start, stop, d in _distance_blocks(qf, gf, metric, block_size):
    out[start:stop] = d
  return out


# ----------------------------------------------------------------------------------------------
# Ranks of sparse entries inside sorted rows.


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


def evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, metric: str = 'euclidean',
                      protocol: str = 'torchreid', max_rank: int = 50,
                      chunk_size: int | None = None,
                      official_scan_limit: int | None = None) -> dict[str, Any]:
  """`evaluate(pairwise_distance(qf, gf, metric), ...)` without the full distance matrix.

  Distances are computed on the device one query chunk at a time and evaluated at once, so the
  peak is the features (and their device copy) plus O(chunk_size x Ng) working memory.

  Args:
    qf: float[Nq, D]; gf: float[Ng, D] (numpy or jax arrays).
    metric: see `pairwise_distance`.
    chunk_size: queries per chunk (default: about 2**23 / Ng, at most 1024).
    Others: see `evaluate`.
  """
  nq, ng = qf.shape[0], gf.shape[0]
  q_pids, q_camids = _ids(q_pids, 'q_pids', nq), _ids(q_camids, 'q_camids', nq)
  g_pids, g_camids = _ids(g_pids, 'g_pids', ng), _ids(g_camids, 'g_camids', ng)
  acc = _Accumulator(g_pids, g_camids, protocol, max_rank, official_scan_limit)
  for start, stop, d in _distance_blocks(qf, gf, metric, chunk_size or _auto_chunk(ng)):
    acc.add(d, q_pids[start:stop], q_camids[start:stop])
  return acc.result()


def format_results(results: Mapping[str, Any], title: str = 'Results') -> str:
  """A small fixed-width table: mAP, R1, R5, R10, R20, mINP (percent) and #queries.

  #queries is the number averaged over; 'valid/all' when some of them had no match
  (protocol 'official').
  """
  cmc = np.asarray(results['cmc'])
  cols = [('mAP', results['mAP'])]
  for k in (1, 5, 10, 20):
    cols.append((f'R{k}', cmc[k - 1] if k <= len(cmc) else float('nan')))
  cols.append(('mINP', results.get('mINP', float('nan'))))
  head = ' '.join(f'{name:>7s}' for name, _ in cols) + f' {"#queries":>9s}'
  # Ranks beyond the CMC's length (tiny galleries) print as '-'.
  vals = ' '.join(f'{"-":>7s}' if np.isnan(float(v)) else f'{100.0 * float(v):7.2f}'
                  for _, v in cols)
  nq = results.get('num_queries', results.get('num_valid_queries', 0))
  nv = results.get('num_valid_queries', nq)
  vals += f' {nq:>9d}' if nq == nv else f' {f"{nv}/{nq}":>9s}'
  proto = results.get('protocol')
  first = f'{title}' + (f' (protocol: {proto})' if proto else '')
  rule = '-' * len(head)
  return '\n'.join([first, rule, head, vals, rule])
