"""Tests for grl_jax.reranking: a slow dense reference written from the paper's definitions."""
from __future__ import annotations

import numpy as np
import pytest

from grl_jax import reranking
from grl_jax.errors import ConfigError
from grl_jax.evaluation import pairwise_distance


def reference_rerank(q_g, q_q, g_g, k1, k2, lam):
  """k-reciprocal re-ranking with dense float64 matrices and Python sets, item by item.

  Follows Zhong et al. (CVPR'17) with the conventions of the code papers compare against:
  squared distances, each item's distances divided by their maximum (the *column* of the
  stacked matrix, so non-symmetric inputs are read the same way), neighbourhood of the
  expansion candidates round(k1 / 2) + 1 with round half to even, query expansion skipped for
  k2 = 1.
  """
  nq, ng = q_g.shape
  n = nq + ng
  full = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float64) ** 2
  dist = (full / full.max(axis=0)).T
  order = np.argsort(dist, axis=1, kind='stable')

  def reciprocal(i, k):
    return [j for j in order[i, :k] if i in set(order[j, :k])]

  v = np.zeros((n, n))
  for i in range(n):
    core = reciprocal(i, k1 + 1)
    members = set(core)
    for c in core:
      half = reciprocal(c, round(k1 / 2) + 1)
      if len(set(half) & set(core)) > 2.0 / 3 * len(half):
        members |= set(half)
    cols = sorted(members)
    weight = np.exp(-dist[i, cols])
    v[i, cols] = weight / weight.sum()
  if k2 != 1:
    v = np.stack([v[order[i, :k2]].mean(axis=0) for i in range(n)])
  out = np.empty((nq, ng))
  for i in range(nq):
    for g in range(ng):
      s = np.minimum(v[i], v[nq + g]).sum()
      out[i, g] = (1 - lam) * (1 - s / (2 - s)) + lam * dist[i, nq + g]
  return out


def _assert_tie_free(q_g, q_q, g_g):
  full = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float32) ** 2
  for col in full.T:
    assert len(np.unique(col)) == len(col), 'test input has ties: the order would be arbitrary'


def _clustered(nq, ng, dim, seed):
  """Descriptors in a few identity clusters, so reciprocal sets are non-trivial."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, (nq + ng) // 6, nq + ng)
  centres = rng.standard_normal((ids.max() + 1, dim))
  f = (centres[ids] + 0.6 * rng.standard_normal((nq + ng, dim))).astype(np.float32)
  return f[:nq], f[nq:]


@pytest.fixture(scope='module')
def problem():
  qf, gf = _clustered(6, 30, 16, seed=0)
  mats = tuple(pairwise_distance(a, b) for a, b in ((qf, gf), (qf, qf), (gf, gf)))
  _assert_tie_free(*mats)
  return qf, gf, mats


# Few distinct (k1, k2, block_size, shape) combinations: each one compiles the jitted steps.
@pytest.mark.parametrize('k1,k2,lam', [(20, 6, 0.3), (4, 1, 0.5)])
def test_matches_reference(problem, k1, k2, lam):
  _, _, (q_g, q_q, g_g) = problem
  got = reranking.re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lam, block_size=8)
  want = reference_rerank(q_g, q_q, g_g, k1, k2, lam)
  assert got.dtype == np.float32 and got.shape == (6, 30)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
  # The Jaccard term matters: the result is not the (scaled) original distance.
  assert np.abs(got - lam * q_g ** 2 / (q_g ** 2).max(axis=1, keepdims=True)).max() > 1e-2


def test_block_size_does_not_change_the_result(problem):
  """Blocks of 5 rows straddle the query/gallery boundary (6), pad the last block and split the
  Jaccard step into two query blocks; blocks of 8 do the first two differently."""
  _, _, mats = problem
  small = reranking.re_ranking(*mats, k1=4, k2=1, lambda_value=0.5, block_size=5)
  large = reranking.re_ranking(*mats, k1=4, k2=1, lambda_value=0.5, block_size=8)
  np.testing.assert_allclose(small, large, rtol=0, atol=1e-6)


def test_non_symmetric_inputs_follow_the_column_convention():
  rng = np.random.default_rng(3)
  q_g, q_q, g_g = rng.random((6, 30)), rng.random((6, 6)), rng.random((30, 30))
  np.fill_diagonal(q_q, 0.0)
  np.fill_diagonal(g_g, 0.0)
  _assert_tie_free(q_g, q_q, g_g)
  got = reranking.re_ranking(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3, block_size=8)
  np.testing.assert_allclose(got, reference_rerank(q_g, q_q, g_g, 20, 6, 0.3), atol=1e-5)


def test_features_entry_point_matches_the_matrix_one(problem):
  qf, gf, _ = problem
  mats = tuple(pairwise_distance(a, b, 'cosine') for a, b in ((qf, gf), (qf, qf), (gf, gf)))
  _assert_tie_free(*mats)
  got = reranking.re_ranking_features(qf, gf, 'cosine', k1=4, k2=1, lambda_value=0.5,
                                      block_size=8)
  np.testing.assert_allclose(got, reference_rerank(*mats, 4, 1, 0.5), rtol=0, atol=1e-5)


@pytest.mark.parametrize('kwargs,match', [
    (dict(k1=0), 'k1=0'),
    (dict(k2=True), 'k2=True'),
    (dict(k1=2.5), 'k1=2.5'),
    (dict(lambda_value=1.5), 'lambda_value=1.5'),
    (dict(block_size=0), 'block_size=0'),
])
def test_bad_parameters(problem, kwargs, match):
  _, _, mats = problem
  with pytest.raises(ConfigError, match=match):
    reranking.re_ranking(*mats, **kwargs)


def test_bad_shapes_and_metrics(problem):
  qf, gf, (q_g, q_q, g_g) = problem
  with pytest.raises(ConfigError, match='g_g_dist must have shape'):
    reranking.re_ranking(q_g, q_q, g_g[:-1])
  with pytest.raises(ConfigError, match='q_g_dist'):
    reranking.re_ranking(q_g[0], q_q, g_g)
  with pytest.raises(ConfigError, match="metric='dot'"):
    reranking.re_ranking_features(qf, gf, 'dot')
  with pytest.raises(ConfigError, match='metric'):
    reranking.re_ranking_features(qf, gf, 'manhattan')
  with pytest.raises(ConfigError, match='same D'):
    reranking.re_ranking_features(qf, gf[:, :3])
