"""Tests for grl_jax.evaluation: hand-worked cases, reference loops, distances, chunking."""
import warnings

import numpy as np
import pytest

from grl_jax import evaluation as ev


# ------------------------------------------------------------------------------------------------
# Reference implementations, written loop by loop after the semantics of the original code
# (torchreid/metrics/rank.py:eval_market1501 + fast-reid's INP; MARS-evaluation
# utils/evaluation_mars.m + utils/compute_AP.m, which STE-NVAN util/cmc.py mirrors). They use a
# stable argsort so that ties follow MATLAB's sort (gallery order).


def torchreid_reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
  num_q, num_g = distmat.shape
  max_rank = min(max_rank, num_g)
  indices = np.argsort(distmat, axis=1, kind='stable')
  matches = (g_pids[indices] == q_pids[:, None]).astype(np.int32)
  all_cmc, all_ap, all_inp = [], [], []
  for q in range(num_q):
    order = indices[q]
    remove = (g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q])
    raw_cmc = matches[q][~remove]
    if not np.any(raw_cmc):
      continue
    cmc = raw_cmc.cumsum()
    max_pos_idx = np.max(np.where(raw_cmc == 1))
    all_inp.append(cmc[max_pos_idx] / (max_pos_idx + 1.0))
    cmc[cmc > 1] = 1
    cmc = cmc[:max_rank]
    if len(cmc) < max_rank:  # torchreid would fail on a ragged list; ours pads with the last 1
      cmc = np.concatenate([cmc, np.ones(max_rank - len(cmc), cmc.dtype)])
    all_cmc.append(cmc)
    num_rel = raw_cmc.sum()
    tmp = raw_cmc.cumsum()
    tmp = np.asarray([x / (i + 1.0) for i, x in enumerate(tmp)]) * raw_cmc
    all_ap.append(tmp.sum() / num_rel)
  n = len(all_ap)
  return np.asarray(all_cmc, np.float64).sum(0) / n, np.mean(all_ap), np.mean(all_inp), n


def official_compute_ap(good_image, junk_image, index):
  """compute_AP.m, 0-based; a query without good entries gets AP 0 (MATLAB: NaN)."""
  cmc = np.zeros(len(index))
  ngood = len(good_image)
  if ngood == 0:
    return 0.0, cmc
  good, junk = set(good_image.tolist()), set(junk_image.tolist())
  old_recall, old_precision, ap = 0.0, 1.0, 0.0
  intersect_size, j, good_now, njunk = 0, 0, 0, 0
  for n in range(len(index)):
    flag = 0
    if index[n] in good:
      cmc[n - njunk:] = 1
      flag = 1
      good_now += 1
    if index[n] in junk:
      njunk += 1
      continue
    if flag == 1:
      intersect_size += 1
    recall = intersect_size / ngood
    precision = intersect_size / (j + 1)
    ap += (recall - old_recall) * ((old_precision + precision) / 2)
    old_recall, old_precision = recall, precision
    j += 1
    if good_now == ngood:
      return ap, cmc
  return ap, cmc


def official_reference(distmat, q_pids, g_pids, q_camids, g_camids, rank_size=None):
  """evaluation_mars.m (rank_size=None) / STE-NVAN Cmc (rank_size=10000)."""
  num_q, num_g = distmat.shape
  rank_size = num_g if rank_size is None else min(rank_size, num_g)
  junk0 = np.nonzero(g_pids == -1)[0]
  cmc = np.zeros((num_q, rank_size))
  ap = np.zeros(num_q)
  inp = np.zeros(num_q)
  for k in range(num_q):
    pos = np.nonzero(g_pids == q_pids[k])[0]
    good = pos[g_camids[pos] != q_camids[k]]
    junk = np.concatenate([junk0, pos[g_camids[pos] == q_camids[k]]])
    index = np.argsort(distmat[k], kind='stable')
    ap[k], cmc[k] = official_compute_ap(good, junk, index[:rank_size])
    # mINP (not part of the official code): torchreid-style INP on the full junk-free list.
    kept = index[~np.isin(index, junk)]
    hits = np.isin(kept, good)
    if hits.any():
      inp[k] = hits.sum() / (np.max(np.nonzero(hits)[0]) + 1.0)
  return cmc.mean(0), ap.mean(), inp.mean()


def random_problem(rng, nq, ng, num_ids=12, num_cams=6, junk_frac=0.1, distractor_frac=0.1,
                   unmatched_queries=2, minus_one_queries=0):
  g_pids = rng.integers(1, num_ids + 1, ng)
  u = rng.random(ng)
  g_pids[u < junk_frac] = -1
  g_pids[(u >= junk_frac) & (u < junk_frac + distractor_frac)] = 0
  g_camids = rng.integers(0, num_cams, ng)
  q_pids = rng.integers(1, num_ids + 1, nq)
  q_pids[:unmatched_queries] = num_ids + 100 + np.arange(unmatched_queries)  # absent ids
  if minus_one_queries:
    q_pids[unmatched_queries:unmatched_queries + minus_one_queries] = -1
  q_camids = rng.integers(0, num_cams, nq)
  distmat = rng.random((nq, ng)).astype(np.float32)
  # No ties within a row.
  assert all(len(np.unique(r)) == ng for r in distmat)
  return distmat, q_pids, g_pids, q_camids, g_camids


# ------------------------------------------------------------------------------------------------
# Hand-worked cases.

# Query pid 1, camera 0. Gallery, in distance order:
#   g0 pid 1 cam 0 d .1  -> junk (same id, same camera) in every protocol
#   g1 pid 2 cam 1 d .2  -> negative
#   g2 pid 1 cam 1 d .3  -> good
#   g3 pid 0 cam 2 d .4  -> distractor, negative
#   g4 pid 1 cam 2 d .5  -> good
# Junk-free list: [neg, HIT, neg, HIT].
CASE_A = dict(distmat=np.array([[.1, .2, .3, .4, .5]], np.float32), q_pids=np.array([1]),
              g_pids=np.array([1, 2, 1, 0, 1]), q_camids=np.array([0]),
              g_camids=np.array([0, 1, 1, 2, 2]))


def test_hand_case_a_torchreid():
  r = ev.evaluate(**CASE_A, protocol='torchreid', max_rank=4)
  # step AP = (1/2 + 2/4) / 2 = 0.5 ; CMC = [0, 1, 1, 1] ; INP = 2 hits / rank 4 = 0.5
  assert r['mAP'] == pytest.approx(0.5, abs=1e-12)
  np.testing.assert_allclose(r['cmc'], [0, 1, 1, 1])
  assert r['mINP'] == pytest.approx(0.5, abs=1e-12)
  assert r['num_valid_queries'] == 1 and r['num_queries'] == 1
  assert r['rank1'] == 0.0


def test_hand_case_a_official():
  r = ev.evaluate(**CASE_A, protocol='official', max_rank=4)
  # trapezoid, ngood = 2, precision_0 = 1:
  #   rank1 neg : recall 0   prec 0            -> +0
  #   rank2 HIT : recall .5  prec 1/2 (prev 0) -> +.5 * (0 + 1/2) / 2   = 1/8
  #   rank3 neg : recall .5  prec 1/3          -> +0
  #   rank4 HIT : recall 1   prec 1/2 (prev 1/3) -> +.5 * (1/3 + 1/2) / 2 = 5/24
  #   AP = 1/8 + 5/24 = 1/3
  assert r['mAP'] == pytest.approx(1 / 3, abs=1e-12)
  np.testing.assert_allclose(r['cmc'], [0, 1, 1, 1])


def test_hand_case_a_cas_equals_torchreid():
  a = ev.evaluate(**CASE_A, protocol='cas', max_rank=4)
  b = ev.evaluate(**CASE_A, protocol='torchreid', max_rank=4)
  assert a['mAP'] == b['mAP'] and np.array_equal(a['cmc'], b['cmc'])


# Query pid 3 camera 1. Gallery (distance order):
#   g0 pid 3 cam 2 d .05 good
#   g1 pid -1 cam 0 d .1  junk in 'official', an ordinary negative in torchreid
#   g2 pid 5 cam 1 d .2   negative
#   g3 pid 3 cam 1 d .3   junk (same camera)
#   g4 pid 3 cam 0 d .4   good
CASE_B = dict(distmat=np.array([[.05, .1, .2, .3, .4]], np.float32), q_pids=np.array([3]),
              g_pids=np.array([3, -1, 5, 3, 3]), q_camids=np.array([1]),
              g_camids=np.array([2, 0, 1, 1, 0]))


def test_hand_case_b_official_minus_one_is_junk():
  r = ev.evaluate(**CASE_B, protocol='official', max_rank=3)
  # junk-free list [HIT, neg, HIT], ngood 2:
  #   rank1: recall .5 prec 1 (prev 1)   -> .5 * (1 + 1) / 2     = 1/2
  #   rank2: +0
  #   rank3: recall 1 prec 2/3 (prev 1/2) -> .5 * (1/2 + 2/3) / 2 = 7/24
  #   AP = 19/24
  assert r['mAP'] == pytest.approx(19 / 24, abs=1e-12)
  np.testing.assert_allclose(r['cmc'], [1, 1, 1])
  assert r['mINP'] == pytest.approx(2 / 3, abs=1e-12)


def test_hand_case_b_torchreid_minus_one_is_negative():
  r = ev.evaluate(**CASE_B, protocol='torchreid', max_rank=4)
  # list [HIT, neg(-1), neg, HIT]: AP = (1/1 + 2/4) / 2 = 0.75, INP = 2/4
  assert r['mAP'] == pytest.approx(0.75, abs=1e-12)
  assert r['mINP'] == pytest.approx(0.5, abs=1e-12)
  np.testing.assert_allclose(r['cmc'], [1, 1, 1, 1])


def test_queries_without_match():
  # Second query (pid 9) has no gallery entry in another camera.
  d = np.array([[.1, .2, .3, .4, .5], [.5, .4, .3, .2, .1]], np.float32)
  kw = dict(q_pids=np.array([1, 9]), g_pids=np.array([1, 2, 1, 0, 1]),
            q_camids=np.array([0, 0]), g_camids=np.array([0, 1, 1, 2, 2]))
  r = ev.evaluate(d, **kw, protocol='torchreid', max_rank=4)
  # skipped: the averages are case A's alone
  assert r['num_valid_queries'] == 1 and r['num_queries'] == 1
  assert r['mAP'] == pytest.approx(0.5) and r['cmc'][1] == 1.0
  with pytest.warns(UserWarning, match='no good gallery entry'):
    r = ev.evaluate(d, **kw, protocol='official', max_rank=4)
  # official averages over every query; the unmatched one counts AP 0, CMC 0
  assert r['num_valid_queries'] == 1 and r['num_queries'] == 2
  assert r['mAP'] == pytest.approx((1 / 3 + 0) / 2)
  np.testing.assert_allclose(r['cmc'], [0, .5, .5, .5])
  with pytest.raises(ValueError, match='no query'):
    ev.evaluate(d[1:], q_pids=np.array([9]), g_pids=kw['g_pids'], q_camids=np.array([0]),
                g_camids=kw['g_camids'], protocol='torchreid')


def test_official_scan_limit():
  # Raw ranking of case A: [g0 junk, g1 neg, g2 HIT, g3 neg, g4 HIT].
  r = ev.evaluate(**CASE_A, protocol='official', max_rank=4, official_scan_limit=2)
  assert r['mAP'] == 0.0 and len(r['cmc']) == 2 and not r['cmc'].any()
  r = ev.evaluate(**CASE_A, protocol='official', max_rank=4, official_scan_limit=3)
  # only the first hit is seen: .5 * (0 + 1/2) / 2 = 1/8
  assert r['mAP'] == pytest.approx(1 / 8)
  np.testing.assert_allclose(r['cmc'], [0, 1, 1])
  r = ev.evaluate(**CASE_A, protocol='official', max_rank=4, official_scan_limit=5)
  assert r['mAP'] == pytest.approx(1 / 3)


def test_official_minus_one_query():
  # A pid -1 query: its "good" entries are junk too; the CMC still records where they fall
  # (after 1 non-junk entry), the AP stays 0 (recall never rises).
  d = np.array([[.1, .2, .3]], np.float32)
  r = ev.evaluate(d, np.array([-1]), np.array([4, -1, 4]), np.array([0]), np.array([1, 2, 0]),
                  protocol='official', max_rank=3)
  assert r['mAP'] == 0.0
  np.testing.assert_allclose(r['cmc'], [0, 1, 1])


def test_max_rank_longer_than_kept_list():
  # 3 gallery entries, one junk: the kept list has 2 entries, max_rank 3.
  d = np.array([[.3, .1, .2]], np.float32)
  r = ev.evaluate(d, np.array([1]), np.array([1, 1, 2]), np.array([0]), np.array([1, 0, 0]),
                  protocol='torchreid', max_rank=10)
  # kept list [neg(g2), HIT(g0)] -> CMC [0, 1, 1] (clipped to Ng = 3, padded with 1)
  np.testing.assert_allclose(r['cmc'], [0, 1, 1])
  assert r['mAP'] == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------
# Agreement with the reference loops on random problems.


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_torchreid_matches_reference(seed):
  rng = np.random.default_rng(seed)
  distmat, q_pids, g_pids, q_camids, g_camids = random_problem(rng, 37, 211)
  cmc, m_ap, m_inp, n = torchreid_reference(distmat, q_pids, g_pids, q_camids, g_camids, 50)
  for protocol in ('torchreid', 'cas'):
    r = ev.evaluate(distmat, q_pids, g_pids, q_camids, g_camids, protocol=protocol, max_rank=50,
                    chunk_size=7)
    assert r['num_valid_queries'] == n == r['num_queries']
    np.testing.assert_allclose(r['cmc'], cmc, atol=1e-6, rtol=0)
    assert abs(r['mAP'] - m_ap) < 1e-6
    assert abs(r['mINP'] - m_inp) < 1e-6


@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('rank_size', [None, 120])
def test_official_matches_reference(seed, rank_size):
  rng = np.random.default_rng(10 + seed)
  distmat, q_pids, g_pids, q_camids, g_camids = random_problem(rng, 37, 211, minus_one_queries=2)
  cmc, m_ap, m_inp = official_reference(distmat, q_pids, g_pids, q_camids, g_camids, rank_size)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    r = ev.evaluate(distmat, q_pids, g_pids, q_camids, g_camids, protocol='official',
                    max_rank=60, chunk_size=5, official_scan_limit=rank_size)
  assert r['num_queries'] == 37
  np.testing.assert_allclose(r['cmc'], cmc[:60], atol=1e-6, rtol=0)
  assert abs(r['mAP'] - m_ap) < 1e-6
  if rank_size is None:
    assert abs(r['mINP'] - m_inp) < 1e-6


def test_official_full_cmc_length_and_all_matched():
  rng = np.random.default_rng(5)
  distmat, q_pids, g_pids, q_camids, g_camids = random_problem(rng, 20, 90, num_ids=4,
                                                               unmatched_queries=0)
  cmc, m_ap, _ = official_reference(distmat, q_pids, g_pids, q_camids, g_camids)
  r = ev.evaluate(distmat, q_pids, g_pids, q_camids, g_camids, protocol='official',
                  max_rank=1000)
  assert len(r['cmc']) == 90
  np.testing.assert_allclose(r['cmc'], cmc, atol=1e-6, rtol=0)
  assert abs(r['mAP'] - m_ap) < 1e-6


@pytest.mark.parametrize('protocol', ['torchreid', 'official'])
def test_ties_are_broken_by_gallery_index(protocol):
  rng = np.random.default_rng(3)
  distmat, q_pids, g_pids, q_camids, g_camids = random_problem(rng, 25, 150)
  distmat = np.round(distmat * 8) / 8  # heavy ties
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    r = ev.evaluate(distmat, q_pids, g_pids, q_camids, g_camids, protocol=protocol, max_rank=30)
  if protocol == 'torchreid':
    cmc, m_ap, m_inp, _ = torchreid_reference(distmat, q_pids, g_pids, q_camids, g_camids, 30)
  else:
    cmc, m_ap, m_inp = official_reference(distmat, q_pids, g_pids, q_camids, g_camids)
  np.testing.assert_allclose(r['cmc'], cmc[:30], atol=1e-6, rtol=0)
  assert abs(r['mAP'] - m_ap) < 1e-6 and abs(r['mINP'] - m_inp) < 1e-6


@pytest.mark.parametrize('protocol', ['torchreid', 'official'])
def test_chunked_equals_unchunked(protocol):
  rng = np.random.default_rng(7)
  distmat, q_pids, g_pids, q_camids, g_camids = random_problem(rng, 41, 130)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    results = [ev.evaluate(distmat, q_pids, g_pids, q_camids, g_camids, protocol=protocol,
                           chunk_size=c) for c in (1, 6, 41, None)]
  for r in results[1:]:
    np.testing.assert_allclose(r['cmc'], results[0]['cmc'], atol=1e-12)
    assert abs(r['mAP'] - results[0]['mAP']) < 1e-12
    assert abs(r['mINP'] - results[0]['mINP']) < 1e-12


# ------------------------------------------------------------------------------------------------
# Distances and feature-level evaluation.


def numpy_distance(q, g, metric):
  q, g = q.astype(np.float64), g.astype(np.float64)
  if metric == 'dot':
    return -q @ g.T
  if metric == 'cosine':
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    return 1.0 - qn @ gn.T
  return np.sqrt(((q[:, None, :] - g[None, :, :])**2).sum(-1))


@pytest.mark.parametrize('metric', ['euclidean', 'cosine', 'dot'])
@pytest.mark.parametrize('block_size', [3, 10, 64])
def test_pairwise_distance_matches_numpy(metric, block_size):
  rng = np.random.default_rng(0)
  q = rng.standard_normal((10, 16)).astype(np.float32)
  g = rng.standard_normal((23, 16)).astype(np.float32)
  d = ev.pairwise_distance(q, g, metric=metric, block_size=block_size)
  assert d.shape == (10, 23) and d.dtype == np.float32
  np.testing.assert_allclose(d, numpy_distance(q, g, metric), atol=2e-5, rtol=1e-5)


def test_euclidean_is_plain_distance_and_nonnegative():
  q = np.array([[3.0, 4.0], [1.0, 1.0]], np.float32)
  g = np.array([[0.0, 0.0], [1.0, 1.0]], np.float32)
  d = ev.pairwise_distance(q, g, 'euclidean')
  np.testing.assert_allclose(d, [[5.0, np.sqrt(13.0)], [np.sqrt(2.0), 0.0]], atol=1e-3)
  assert (d >= 0).all()


@pytest.mark.parametrize('protocol', ['torchreid', 'official'])
@pytest.mark.parametrize('metric', ['euclidean', 'dot'])
def test_evaluate_features_equals_distmat_path(protocol, metric):
  rng = np.random.default_rng(1)
  _, q_pids, g_pids, q_camids, g_camids = random_problem(rng, 29, 120)
  qf = rng.standard_normal((29, 8)).astype(np.float32)
  gf = rng.standard_normal((120, 8)).astype(np.float32)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    a = ev.evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, metric=metric,
                             protocol=protocol, chunk_size=8)
    b = ev.evaluate(ev.pairwise_distance(qf, gf, metric), q_pids, g_pids, q_camids, g_camids,
                    protocol=protocol)
  np.testing.assert_allclose(a['cmc'], b['cmc'], atol=1e-12)
  assert abs(a['mAP'] - b['mAP']) < 1e-12 and a['num_queries'] == b['num_queries']


def test_identical_features_rank_first():
  # Gallery holds a copy of each query under another camera: rank-1 = mAP = 1 with 'dot' on
  # unit vectors (a copy maximises the inner product).
  rng = np.random.default_rng(2)
  qf = rng.standard_normal((6, 12)).astype(np.float32)
  qf /= np.linalg.norm(qf, axis=1, keepdims=True)
  gf = np.concatenate([qf, rng.standard_normal((20, 12)).astype(np.float32) * 0.1])
  q_pids = np.arange(1, 7)
  g_pids = np.concatenate([q_pids, np.zeros(20, int)])
  r = ev.evaluate_features(qf, gf, q_pids, g_pids, np.zeros(6, int), np.ones(26, int),
                           metric='dot', protocol='torchreid', max_rank=5)
  assert r['mAP'] == pytest.approx(1.0) and r['rank1'] == 1.0


def test_input_validation():
  d = np.zeros((1, 3), np.float32)
  with pytest.raises(ValueError, match='protocol'):
    ev.evaluate(d, np.array([1]), np.array([1, 2, 3]), np.array([0]), np.array([1, 1, 1]),
                protocol='market')
  with pytest.raises(ValueError, match='g_camids'):
    ev.evaluate(d, np.array([1]), np.array([1, 2, 3]), np.array([0]), np.array([1, 1]))
  with pytest.raises(ValueError, match='NaN'):
    ev.evaluate(np.array([[0.1, np.nan, 0.2]], np.float32), np.array([1]), np.array([1, 2, 3]),
                np.array([0]), np.array([1, 1, 1]))
  with pytest.raises(ValueError, match='metric'):
    ev.pairwise_distance(np.zeros((2, 3)), np.zeros((2, 3)), metric='l1')


def test_format_results():
  r = ev.evaluate(**CASE_A, protocol='torchreid', max_rank=20)
  text = ev.format_results(r, title='MARS')
  lines = text.splitlines()
  assert lines[0].startswith('MARS') and 'torchreid' in lines[0]
  assert lines[2].split() == ['mAP', 'R1', 'R5', 'R10', 'R20', 'mINP', '#queries']
  # Ng = 5 clips the CMC to 5 ranks: R10 / R20 are not available.
  assert lines[3].split() == ['50.00', '0.00', '100.00', '-', '-', '50.00', '1']


def test_jax_inputs_and_float64_distmat():
  import jax.numpy as jnp
  rng = np.random.default_rng(4)
  qf = rng.standard_normal((5, 6)).astype(np.float32)
  gf = rng.standard_normal((9, 6)).astype(np.float32)
  np.testing.assert_array_equal(ev.pairwise_distance(jnp.asarray(qf), jnp.asarray(gf), 'dot'),
                                ev.pairwise_distance(qf, gf, 'dot'))
  # a zero descriptor has cosine distance 1 to everything, not NaN
  d = ev.pairwise_distance(np.zeros((1, 6), np.float32), gf, 'cosine')
  np.testing.assert_allclose(d, 1.0)
  distmat, q_pids, g_pids, q_camids, g_camids = random_problem(rng, 12, 40, num_ids=4)
  a = ev.evaluate(distmat.astype(np.float64), q_pids, g_pids, q_camids, g_camids)
  b = ev.evaluate(distmat, q_pids, g_pids, q_camids, g_camids)
  assert a['mAP'] == b['mAP'] and np.array_equal(a['cmc'], b['cmc'])


# ------------------------------------------------------------------------------------------------
# Gallery streamed in blocks (grl_jax/evaluation/blocked.py, gallery.py, features.py).


def _distmat_tiles(distmat, block, chunk):
  nq, ng = distmat.shape
  for b0 in range(0, ng, block):
    for q0 in range(0, nq, chunk):
      q1, b1 = min(q0 + chunk, nq), min(b0 + block, ng)
      yield q0, q1, np.arange(b0, b1), distmat[q0:q1, b0:b1]


def _tie_problem(seed, nq=23, ng=97):
  rng = np.random.default_rng(seed)
  distmat, q_pids, g_pids, q_camids, g_camids = random_problem(
      rng, nq, ng, num_ids=5, junk_frac=0.15, minus_one_queries=2)
  return (np.round(distmat * 6) / 6).astype(np.float32), q_pids, g_pids, q_camids, g_camids


@pytest.mark.parametrize('protocol,limit', [('torchreid', None), ('cas', None),
                                            ('official', None), ('official', 40)])
@pytest.mark.parametrize('block,chunk', [(1, 23), (10, 4), (97, 23)])
def test_gallery_blocked_equals_whole_rows(protocol, limit, block, chunk):
  from grl_jax.evaluation.blocked import evaluate_tiles
  distmat, q_pids, g_pids, q_camids, g_camids = _tie_problem(0)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    a = ev.evaluate(distmat, q_pids, g_pids, q_camids, g_camids, protocol=protocol,
                    max_rank=30, official_scan_limit=limit)
    b = evaluate_tiles(_distmat_tiles(distmat, block, chunk), q_pids, g_pids, q_camids,
                       g_camids, lambda r, c: distmat[r, c], protocol=protocol, max_rank=30,
                       official_scan_limit=limit)
  np.testing.assert_allclose(b['cmc'], a['cmc'], atol=1e-12, rtol=0)
  assert abs(a['mAP'] - b['mAP']) < 1e-12 and abs(a['mINP'] - b['mINP']) < 1e-12
  assert (a['num_queries'], a['num_valid_queries']) == (b['num_queries'],
                                                        b['num_valid_queries'])


def _feature_problem(seed, nq=19, ng=83, dim=6):
  rng = np.random.default_rng(seed)
  _, q_pids, g_pids, q_camids, g_camids = random_problem(rng, nq, ng, num_ids=5,
                                                         junk_frac=0.15, minus_one_queries=1)
  # Integer-valued features: many exactly equal distances (duplicated gallery rows too).
  qf = rng.integers(-1, 2, (nq, dim)).astype(np.float32)
  gf = rng.integers(-1, 2, (ng, dim)).astype(np.float32)
  gf[40:50] = gf[30:40]
  return qf, gf, q_pids, g_pids, q_camids, g_camids


@pytest.mark.parametrize('protocol', ['torchreid', 'cas', 'official'])
def test_memmap_gallery_equals_in_memory(tmp_path, protocol):
  qf, gf, q_pids, g_pids, q_camids, g_camids = _feature_problem(1)
  np.save(tmp_path / 'g.npy', gf)
  gm = np.load(tmp_path / 'g.npy', mmap_mode='r')
  kw = dict(metric='euclidean', protocol=protocol, max_rank=20)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    ref = ev.evaluate(ev.pairwise_distance(qf, gf, 'euclidean'), q_pids, g_pids, q_camids,
                      g_camids, protocol=protocol, max_rank=20)
    mem = ev.evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, **kw)
    mapped = ev.evaluate_features(qf, gm, q_pids, g_pids, q_camids, g_camids, **kw,
                                  gallery_block=16, chunk_size=7)
  for r in (mem, mapped):
    np.testing.assert_allclose(r['cmc'], ref['cmc'], atol=1e-12, rtol=0)
    assert abs(r['mAP'] - ref['mAP']) < 1e-12 and abs(r['mINP'] - ref['mINP']) < 1e-12
  assert np.array_equal(gm, gf)  # pages released, data intact


@pytest.mark.parametrize('metric', ['euclidean', 'dot'])
def test_top_k_matches_stable_argsort(tmp_path, metric):
  qf, gf, *_ = _feature_problem(2)
  np.save(tmp_path / 'g.npy', gf)
  d = ev.pairwise_distance(qf, gf, metric)
  order = np.argsort(d, axis=1, kind='stable')
  for g, block, k in ((gf, None, 83), (np.load(tmp_path / 'g.npy', mmap_mode='r'), 10, 12)):
    idx, dist = ev.top_k(qf, g, k, metric, gallery_block=block)
    assert idx.dtype == np.int64 and dist.dtype == np.float32 and idx.shape == (19, k)
    np.testing.assert_array_equal(idx, order[:, :k])
    np.testing.assert_array_equal(dist, np.take_along_axis(d, order[:, :k], axis=1))
  from grl_jax import errors
  with pytest.raises(errors.ConfigError, match='k must be'):
    ev.top_k(qf, gf, 84)
  with pytest.raises(errors.ConfigError, match='gallery_block'):
    ev.top_k(qf, gf, 3, gallery_block=0)
