"""IAUnet (video): CIAU / STIAU against hand-computed numpy versions of the official equations
(blue-blue272/ImgReID-IAnet IAUBlock3D / STIAUModule, as grl_jax/models/iaunet.py writes them),
node mask, BN statistic domains, identity at init, model wiring."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import np_reference

from grl_jax import models as registry
from grl_jax.models import iaunet

EPS = 1e-5


def _official_mask(t, n=4):
  """STIAUModule.W_init written as the official loop: (1 - I) tiled, I on diagonal blocks."""
  w = np.tile(1 - np.eye(n), (t, t))
  for i in range(t):
    w[i * n:(i + 1) * n, i * n:(i + 1) * n] = np.eye(n)
  return w


def _np_ciau(p, s, x):
  """Video CIAU on x [B, T, H, W, C] float64, rows of G = (channel, frame) pairs."""
  b, t, h, w, c = x.shape
  g = np.zeros((b, c * t, h * w))
  for ch in range(c):
    for f in range(t):
      g[:, ch * t + f] = x[:, f, :, :, ch].reshape(b, h * w)
  y = np.einsum('bij,bjp->bip', np_reference.softmax(np.einsum('bip,bjp->bij', g, g)), g)
  y5 = np.zeros_like(x)
  for ch in range(c):
    for f in range(t):
      y5[:, f, :, :, ch] = y[:, ch * t + f].reshape(b, h, w)
  return x + np_reference.bn_eval(p['bn'], s['bn'], np_reference.dense(p['conv'], y5))


def _np_stiau(p, s, z, parts=4):
  """STIAU on z [B, T, H, W, C] float64 (eval-mode BN); returns (z_out, a, e_pre_bn)."""
  b, t, h, w, c = z.shape
  u = z.mean(axis=(1, 2, 3))
  logits = np_reference.bn_eval(p['sa_bn'], s['sa_bn'], np_reference.dense(p['sa_conv'], z))
  a = 1 / (1 + np.exp(-logits))                                          # [B, T, H, W, 4]
  part = np.zeros((b, t, parts, c))
  for k in range(parts):
    part[:, :, k] = (a[..., k:k + 1] * z).sum(axis=(2, 3))             # weighted SUM
  xn = np_reference.dense(p['g'], part).reshape(b, t * parts, -1)
  ub = np_reference.dense(p['g'], u)
  n = t * parts
  e_pre = np.zeros((b, n, n))
  for i in range(n):
    for j in range(n):
      feat = np.concatenate([np.abs(xn[:, i] - xn[:, j]), ub], -1)
      e_pre[:, i, j] = np_reference.dense(p['relation_conv'], feat)[:, 0]
  e = np_reference.bn_eval(p['relation_bn'], s['relation_bn'], e_pre[..., None])[..., 0]
  wgt = np_reference.softmax(e - 1e8 * _official_mask(t, parts))
  neigh = np.einsum('bij,bjc->bic', wgt, xn)
  sn = np.maximum(np_reference.bn_eval(p['gconv_bn'], s['gconv_bn'],
                      np_reference.dense(p['gconv_conv'], np.concatenate([xn, neigh], -1))), 0)
  sf = sn.reshape(b, t, parts, -1).mean(axis=2)
  v = np.concatenate([sf, np.broadcast_to(ub[:, None], sf.shape)], -1)
  v = np_reference.bn_eval(p['update_bn'], s['update_bn'], np_reference.dense(p['update_conv'], v))
  return z + v[:, :, None, None, :], a, e_pre, wgt


def test_node_mask_matches_official_construction_and_definition():
  for t in (1, 2, 4):
    m = iaunet.stiau_mask(t)
    np.testing.assert_array_equal(m, _official_mask(t))
    for i in range(4 * t):
      for j in range(4 * t):
        same_frame, same_part = i // 4 == j // 4, i % 4 == j % 4
        assert m[i, j] == (0.0 if same_frame != same_part else 1.0)
    assert (m == 0).sum(axis=1).tolist() == [3 + (t - 1)] * (4 * t)
  # A clip shorter than seq_len uses the top-left block of the seq_len mask.
  np.testing.assert_array_equal(iaunet.stiau_mask(4)[:8, :8], iaunet.stiau_mask(2))


def test_ciau_matches_numpy_equation():
  x = np.random.RandomState(0).randn(2, 3, 4, 2, 6).astype(np.float32) * 0.3
  block = iaunet.CIAU()
  v = np_reference.randomise(block.init(jax.random.PRNGKey(0), jnp.asarray(x)), 1)
  got = block.apply(v, jnp.asarray(x), train=False)
  want = _np_ciau(v['params'], v['batch_stats'], x.astype(np.float64))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_ciau_query_chunks_do_not_change_the_result():
  x = jnp.asarray(np.random.RandomState(2).randn(2, 3, 4, 2, 6).astype(np.float32) * 0.3)
  v = np_reference.randomise(iaunet.CIAU().init(jax.random.PRNGKey(0), x), 3)
  np.testing.assert_allclose(np.asarray(iaunet.CIAU(query_chunk=5).apply(v, x)),
                             np.asarray(iaunet.CIAU().apply(v, x)), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope='module')
def stiau_case():
  z = np.random.RandomState(4).randn(2, 3, 4, 2, 8).astype(np.float32) * 0.5
  block = iaunet.STIAU(seq_len=4)
  v = np_reference.randomise(block.init(jax.random.PRNGKey(0), jnp.asarray(z)), 5)
  return block, v, z


def test_stiau_matches_numpy_equation(stiau_case):
  block, v, z = stiau_case
  got, a = block.apply(v, jnp.asarray(z), train=False)
  want, want_a, _, wgt = _np_stiau(v['params'], v['batch_stats'], z.astype(np.float64))
  np.testing.assert_allclose(np.asarray(a), want_a, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
  # Masked edges get exactly zero weight; every row has 3 + (t-1) neighbours.
  assert np.all(wgt[:, _official_mask(3) == 1] == 0)


def test_stiau_batch_norm_statistic_domains(stiau_case):
  """One train step from zero running means: new mean = 0.1 x batch mean over the right axes."""
  block, v, z = stiau_case
  stats0 = jax.tree.map(jnp.zeros_like, v['batch_stats'])
  _, new = block.apply({'params': v['params'], 'batch_stats': stats0}, jnp.asarray(z),
                       train=True, mutable=['batch_stats'])
  new = new['batch_stats']
  p = v['params']
  z64 = z.astype(np.float64)
  # sa_bn: over every (b, t, h, w) position.
  sa_pre = np_reference.dense(p['sa_conv'], z64)
  np.testing.assert_allclose(np.asarray(new['sa_bn']['mean']),
                             0.1 * sa_pre.mean(axis=(0, 1, 2, 3)), rtol=1e-4, atol=1e-6)
  # relation_bn: over all B·n·n pairs, diagonal included. Recompute e_pre with train-mode sa_bn.
  mu, var = sa_pre.mean(axis=(0, 1, 2, 3)), sa_pre.var(axis=(0, 1, 2, 3))
  a = 1 / (1 + np.exp(-(((sa_pre - mu) / np.sqrt(var + EPS)) * np.asarray(p['sa_bn']['scale'])
                        + np.asarray(p['sa_bn']['bias']))))
  part = np.einsum('bthwk,bthwc->btkc', a, z64)
  xn = np_reference.dense(p['g'], part).reshape(2, 12, -1)
  ub = np_reference.dense(p['g'], z64.mean(axis=(1, 2, 3)))
  diff = np.abs(xn[:, :, None] - xn[:, None])
  pair = np.concatenate([diff, np.broadcast_to(ub[:, None, None], diff.shape)], -1)
  e_pre = np_reference.dense(p['relation_conv'], pair)
  np.testing.assert_allclose(np.asarray(new['relation_bn']['mean']),
                             0.1 * e_pre.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
  assert new['update_bn']['mean'].shape == (8,) and new['gconv_bn']['mean'].shape == (4,)


@pytest.mark.parametrize('train', [False, True])
def test_iau_block_is_identity_at_init(train):
  x = jnp.asarray(np.random.RandomState(6).randn(2, 4, 4, 2, 8).astype(np.float32))
  block = iaunet.IAUBlock(seq_len=4)
  v = block.init(jax.random.PRNGKey(0), x)
  out = block.apply(v, x, train=train, mutable=['batch_stats'] if train else False)
  z, a = out[0] if train else out
  np.testing.assert_array_equal(np.asarray(z), np.asarray(x))
  assert a.shape == (2, 4, 4, 2, 4) and float(a.min()) >= 0 and float(a.max()) <= 1


def test_init_distributions_follow_the_official_code():
  x = jnp.zeros((1, 2, 2, 2, 256))
  p = jax.jit(iaunet.IAUBlock(seq_len=4).init)(jax.random.PRNGKey(0), x)['params']
  # He normal, fan-out: std = sqrt(2 / out_channels).
  np.testing.assert_allclose(np.std(np.asarray(p['ciau']['conv']['kernel'])),
                             np.sqrt(2 / 256), rtol=0.05)
  np.testing.assert_allclose(np.std(np.asarray(p['stiau']['g']['kernel'])), np.sqrt(2 / 128),
                             rtol=0.05)
  bias = np.asarray(p['stiau']['g']['bias'])
  assert np.abs(bias).max() <= 1 / np.sqrt(256)
  for name in ('update_bn',):
    assert not np.any(np.asarray(p['stiau'][name]['scale']))
  assert not np.any(np.asarray(p['ciau']['bn']['scale']))
  assert np.all(np.asarray(p['stiau']['gconv_bn']['scale']) == 1)


def test_tiny_iaunet_outputs_objective_and_seq_len_check():
  cfg = {'name': 'iaunet', 'stage_sizes': (1, 1, 1, 1), 'resnet_width': 4, 'seq_len': 4}
  spec = registry.get('iaunet')
  assert spec.descriptor_distance == 'cosine'
  model = spec.build(cfg, 3)
  x = jnp.asarray(np.random.RandomState(7).randn(4, 4, 32, 16, 3).astype(np.float32))
  # Jitted init: eagerly, each of the init's many small ops is compiled on its own (~40 s cold).
  v = jax.jit(lambda key, x: model.init(key, x, train=True))(jax.random.PRNGKey(0), x)
  out, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(v, x)
  assert out['feature'].shape == out['bn_feature'].shape == (4, 128)
  assert out['logits'].shape == (4, 3)
  assert out['part_maps3'].shape == (4, 4, 4, 2, 4) and out['part_maps4'].shape == (4, 4, 2, 1, 4)
  assert 'bias' in v['params']['bn'] and 'bias' in v['params']['classifier']
  objective = spec.objective({'label_smoothing': 0.1, 'triplet_margin': 0.3,
                              'triplet_metric': 'cosine', 'triplet_feature': 'bn_feature'}, 3)
  loss, metrics = objective.loss(out, {'pid': jnp.asarray([0, 0, 1, 1])}, {})
  assert np.isfinite(float(loss)) and metrics['triplet'] >= 0
  ev = jax.jit(lambda v, x: model.apply(v, x, train=False))(v, x[:, :2])  # sub-mask
  assert ev['descriptor'].shape == (4, 128)
  with pytest.raises(ValueError, match='seq_len=4'):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), v, jnp.concatenate([x, x], 1))


def _mars():
  import configs.mars  # pylint: disable=g-import-not-at-top
  return configs.mars.get_config('model=iaunet')


def test_recipe_fields_are_the_model_defaults_and_pass_the_checks():
  spec = registry.get('iaunet')
  c = _mars()
  assert set(c.model) == set(spec.model_defaults())
  assert c.data.seq_len == c.model.seq_len == spec.model_defaults()['seq_len']
  spec.check_config(c)
  import configs.demo  # pylint: disable=g-import-not-at-top
  spec.check_config(configs.demo.get_config('model=iaunet'))


@pytest.mark.parametrize('field,value,message', [
    ('data.seq_len', 8, r'config.data.seq_len=8 exceeds config.model.seq_len=4: .*'
                        r"test_sampling='dense'"),
    ('model.seq_len', 0, r'config.model.seq_len=0: expected >= 1'),
    ('model.stage_sizes', (1, 1), r'config.model.stage_sizes=\(1, 1\): .* at least 3 stages'),
    ('loss.triplet_feature', 'logits', r"config.loss.triplet_feature='logits'"),
    ('loss.triplet_metric', 'dot', r"config.loss.triplet_metric='dot'"),
])
def test_check_config_names_the_fields(field, value, message):
  from grl_jax.errors import ConfigError
  c = _mars()
  section, key = field.split('.')
  c[section][key] = value
  with pytest.raises(ConfigError, match=message):
    registry.get('iaunet').check_config(c)


def test_unknown_model_field_is_a_config_error():
  from grl_jax.errors import ConfigError
  with pytest.raises(ConfigError, match=r"config.model.iau_stages is not a field of model "
                                        r"'iaunet'"):
    registry.get('iaunet').build({'name': 'iaunet', 'iau_stages': (2,)}, 3)
