"""Tests of grl_jax.losses against straightforward float64 numpy references."""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grl_jax import losses


# ------------------------------------------------------------------------------------------
# numpy references (also used by test_objectives.py)


def np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_cross_entropy(logits, labels, eps=0.0):
  logits = np.asarray(logits, np.float64)
  n, k = logits.shape
  target = np.full((n, k), eps / k)
  target[np.arange(n), labels] += 1.0 - eps
  return float(np.mean(-(target * np_log_softmax(logits)).sum(-1)))


def np_oim_loss(x, labels, lut, scalar=30.0):
  return np_cross_entropy(scalar * np.asarray(x, np.float64) @ np.asarray(lut, np.float64).T,
                          labels)


def np_oim_update(lut, x, labels, momentum=0.5):
  """The official OIM.backward loop, row by row."""
  lut = np.array(lut, np.float64)
  for xi, yi in zip(np.asarray(x, np.float64), labels):
    lut[yi] = momentum * lut[yi] + (1.0 - momentum) * xi
    lut[yi] /= np.linalg.norm(lut[yi])
  return lut


def np_bce_two_way(two_way_logits, probe_ids, gallery_ids):
  """nn.BCELoss on the softmax class-1 probability, untransposed labels y_kl = [P_k == G_l]."""
  z = np.asarray(two_way_logits, np.float64)
  p = np.exp(np_log_softmax(z))[..., 1]
  y = (np.asarray(probe_ids)[:, None] == np.asarray(gallery_ids)[None, :]).astype(np.float64)
  with np.errstate(divide='ignore'):
    log_p = np.maximum(np.log(p), -100.0)
    log_q = np.maximum(np.log(1.0 - p), -100.0)
  return float(-np.mean(y * log_p + (1 - y) * log_q))


def np_triplet(features, labels, margin='soft', metric='euclidean'):
  """Per-anchor loop: hardest positive over same id j != i (0 if none), hardest negative."""
  v = np.asarray(features, np.float64)
  n = len(v)
  if metric == 'euclidean':
    dist = np.array([[np.sqrt(np.sum((v[i] - v[j]) ** 2) + 1e-12) for j in range(n)]
                     for i in range(n)])
  else:
    u = v / np.linalg.norm(v, axis=1, keepdims=True)
    dist = 1.0 - u @ u.T
  out = []
  for i in range(n):
    pos = [dist[i, j] for j in range(n) if labels[j] == labels[i] and j != i]
    neg = [dist[i, j] for j in range(n) if labels[j] != labels[i]]
    hp = max(pos) if pos else 0.0
    hn = min(neg) if neg else 1e5 + min(dist[i])
    z = hp - hn
    out.append(np.logaddexp(0.0, z) if margin == 'soft' else max(0.0, z + margin))
  return float(np.mean(out))


def _unit_rows(rng, n, d):
  x = rng.normal(size=(n, d))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# ------------------------------------------------------------------------------------------
# cross-entropy


@pytest.mark.parametrize('eps', [0.0, 0.1])
def test_cross_entropy_matches_numpy(eps):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 7)).astype(np.float32) * 3
  labels = rng.integers(0, 7, size=6)
  got = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), eps)
  np.testing.assert_allclose(got, np_cross_entropy(logits, labels, eps), rtol=1e-5)


def test_cross_entropy_bfloat16_input_is_float32_and_stable():
  logits = jnp.asarray([[1000.0, -1000.0, 0.0]], jnp.bfloat16)
  got = losses.cross_entropy(logits, jnp.asarray([1]), 0.1)
  assert got.dtype == jnp.float32 and np.isfinite(got)
  np.testing.assert_allclose(got, np_cross_entropy([[1000.0, -1000.0, 0.0]], [1], 0.1),
                             rtol=1e-4)


# ------------------------------------------------------------------------------------------
# OIM


def test_oim_zero_lut_gives_log_num_classes():
  rng = np.random.default_rng(1)
  x = _unit_rows(rng, 5, 4)
  got = losses.oim_loss(jnp.asarray(x), jnp.arange(5) % 3, jnp.zeros((11, 4)), 30.0)
  np.testing.assert_allclose(got, np.log(11.0), rtol=1e-6)


def test_oim_loss_and_grad_match_numpy_and_no_grad_to_lut():
  rng = np.random.default_rng(2)
  n, c, d, s = 6, 5, 8, 30.0
  x = _unit_rows(rng, n, d)
  lut = _unit_rows(rng, c, d)
  labels = rng.integers(0, c, size=n)
  loss, (gx, glut) = jax.value_and_grad(losses.oim_loss, argnums=(0, 2))(
      jnp.asarray(x), jnp.asarray(labels), jnp.asarray(lut), s)
  np.testing.assert_allclose(loss, np_oim_loss(x, labels, lut, s), rtol=1e-5)
  # d/dx mean CE(s x Lᵀ) = (softmax − onehot) / N · s · L, with the current L as a constant.
  probs = np.exp(np_log_softmax(s * x.astype(np.float64) @ lut.T))
  probs[np.arange(n), labels] -= 1.0
  np.testing.assert_allclose(gx, probs / n * s @ lut, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(glut, np.zeros_like(lut))


def test_oim_update_matches_sequential_loop_with_duplicates_and_zero_rows():
  rng = np.random.default_rng(3)
  c, d = 6, 5
  lut = _unit_rows(rng, c, d)
  lut[[1, 4]] = 0.0  # rows never seen yet
  x = _unit_rows(rng, 7, d)
  labels = np.array([1, 2, 1, 1, 4, 2, 0])  # duplicates and both zero rows
  got = losses.oim_update(jnp.asarray(lut), jnp.asarray(x), jnp.asarray(labels), 0.5)
  want = np_oim_update(lut, x, labels, 0.5)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # A zero row becomes the normalised input (not 0.5·x); untouched rows are unchanged.
  single = losses.oim_update(jnp.asarray(lut), jnp.asarray(x[4:5]), jnp.asarray([4]), 0.5)
  np.testing.assert_allclose(single[4], x[4], rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(got)[[3, 5]], lut[[3, 5]])
  # Order matters for duplicates: the last row of a label weighs most.
  rev = losses.oim_update(jnp.asarray(lut), jnp.asarray(x[::-1]), jnp.asarray(labels[::-1]), 0.5)
  assert not np.allclose(np.asarray(rev)[1], np.asarray(got)[1], atol=1e-4)


def test_oim_update_other_momentum_and_zero_mix_stays_finite():
  rng = np.random.default_rng(4)
  lut = _unit_rows(rng, 3, 4)
  x = _unit_rows(rng, 4, 4)
  labels = np.array([2, 0, 2, 1])
  got = losses.oim_update(jnp.asarray(lut), jnp.asarray(x), jnp.asarray(labels), 0.8)
  np.testing.assert_allclose(got, np_oim_update(lut, x, labels, 0.8), rtol=1e-5, atol=1e-6)
  # A zero input on a zero row: the official code would produce 0/0 = NaN; we keep zeros.
  got = losses.oim_update(jnp.zeros((3, 4)), jnp.zeros((1, 4)), jnp.asarray([1]), 0.5)
  np.testing.assert_array_equal(got, np.zeros((3, 4)))


# ------------------------------------------------------------------------------------------
# verification BCE


def test_verification_bce_matches_bceloss_on_softmax_probability():
  rng = np.random.default_rng(5)
  k, l = 3, 4
  two_way = rng.normal(size=(k, l, 2)) * 4
  probe_ids = np.array([7, 2, 9])
  gallery_ids = np.array([2, 9, 9, 5])  # not symmetric, K != L
  logit = (two_way[..., 1] - two_way[..., 0]).astype(np.float32)
  got = losses.verification_bce(jnp.asarray(logit), jnp.asarray(probe_ids),
                                jnp.asarray(gallery_ids))
  np.testing.assert_allclose(got, np_bce_two_way(two_way, probe_ids, gallery_ids), rtol=1e-5)


def test_verification_bce_labels_are_untransposed():
  rng = np.random.default_rng(6)
  two_way = rng.normal(size=(3, 3, 2)) * 4
  probe_ids = np.array([0, 1, 2])
  gallery_ids = np.array([1, 1, 0])  # y is not symmetric
  y = probe_ids[:, None] == gallery_ids[None, :]
  assert not np.array_equal(y, y.T)
  logit = jnp.asarray((two_way[..., 1] - two_way[..., 0]).astype(np.float32))
  got = losses.verification_bce(logit, jnp.asarray(probe_ids), jnp.asarray(gallery_ids))
  right = np_bce_two_way(two_way, probe_ids, gallery_ids)
  np.testing.assert_allclose(got, right, rtol=1e-5)
  # The official (transposed) labels (k, l) <-> [P_l == G_k] give a different value here.
  y_official = probe_ids[None, :] == gallery_ids[:, None]
  p = 1 / (1 + np.exp(-np.asarray(logit, np.float64)))
  official = -np.mean(y_official * np.log(p) + (1 - y_official) * np.log(1 - p))
  assert abs(official - right) > 1e-3


def test_verification_bce_saturated_logits_are_finite_with_finite_grad():
  logit = jnp.asarray([[200.0, -200.0], [-30.0, 30.0]])
  ids_p, ids_g = jnp.asarray([0, 1]), jnp.asarray([1, 0])  # y = [[0, 1], [1, 0]]
  val, g = jax.value_and_grad(losses.verification_bce)(logit, ids_p, ids_g)
  assert np.isfinite(val) and np.all(np.isfinite(g))
  # Every entry is wrong: 200 is clamped at 100 like BCELoss; 30 is exact (log-sigmoid).
  np.testing.assert_allclose(val, (100 + 100 + 30 + 30) / 4, rtol=1e-5)


# ------------------------------------------------------------------------------------------
# triplet


@pytest.mark.parametrize('margin', ['soft', 0.3])
@pytest.mark.parametrize('metric', ['euclidean', 'cosine'])
def test_batch_hard_triplet_matches_numpy_loop(margin, metric):
  rng = np.random.default_rng(7)
  feats = rng.normal(size=(9, 6)).astype(np.float32)
  labels = np.array([0, 0, 1, 1, 1, 2, 2, 3, 0])  # id 3 has no positive
  got = losses.batch_hard_triplet(jnp.asarray(feats), jnp.asarray(labels), margin, metric)
  np.testing.assert_allclose(got, np_triplet(feats, labels, margin, metric), rtol=1e-5,
                             atol=1e-6)


def test_triplet_diagonal_excluded_from_positives():
  # Anchor 0 has no other same-id row: its hardest positive is 0 (official pos mask = same ^ eye),
  # not the 1e-6 self distance; the loss is then softplus(0 − d_an).
  feats = jnp.asarray([[0.0, 0.0], [3.0, 4.0]])
  got = losses.batch_hard_triplet(feats, jnp.asarray([0, 1]), 'soft')
  np.testing.assert_allclose(got, np.logaddexp(0.0, -np.sqrt(25 + 1e-12)), rtol=1e-6)


def test_triplet_large_distances_and_duplicates_are_finite():
  rng = np.random.default_rng(8)
  feats = rng.normal(size=(8, 16)).astype(np.float32) * 1e4
  feats[3] = feats[2]  # zero distance between two rows
  labels = jnp.asarray([0, 0, 1, 1, 2, 2, 3, 3])
  for margin in ('soft', 0.3):
    for metric in ('euclidean', 'cosine'):
      val, g = jax.value_and_grad(losses.batch_hard_triplet)(jnp.asarray(feats), labels, margin,
                                                             metric)
      assert np.isfinite(val) and np.all(np.isfinite(g)), (margin, metric)
  zero = jnp.asarray(np.where(np.arange(8)[:, None] == 5, 0.0, feats))  # an all-zero row
  g = jax.grad(losses.batch_hard_triplet)(zero, labels, 0.3, 'cosine')
  assert np.all(np.isfinite(g))
  np.testing.assert_allclose(losses.batch_hard_triplet(jnp.asarray(feats), labels, 'soft'),
                             np_triplet(feats, np.asarray(labels), 'soft'), rtol=1e-4)


def test_parse_margin():
  assert losses.parse_margin('soft') == 'soft'
  assert losses.parse_margin('0.3') == 0.3 and losses.parse_margin(1) == 1.0
  with pytest.raises(ValueError, match='margin'):
    losses.parse_margin('hard')
