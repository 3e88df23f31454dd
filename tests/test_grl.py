"""GRL pieces against numpy versions of the official GCE / TRL / head equations, tiny sizes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grl_jax.models import grl, trl
from tests.test_resnet import init_shapes, np_bn, randomize, relu, to_np

RNG = np.random.default_rng(0)


def sigmoid(x):
  return 1 / (1 + np.exp(-x))


def softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def l2n(x, eps=0.0):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def jit_apply(module, v, *arrays, mutable=False, method=None, **static):
  """Jitted apply; keyword arguments (e.g. train) stay static."""
  fn = lambda v, *a: module.apply(v, *a, mutable=mutable, method=method, **static)  # noqa: E731
  return jax.jit(fn)(v, *arrays)


# ----------------------------------------------------------------------------------------------
# GCE
def np_gce(x, p, s, train):
  b, t, h, w, d = x.shape
  g = x.mean((1, 2, 3))
  g = relu(np_bn(g @ p['glo_fc']['kernel'] + p['glo_fc']['bias'], p['glo_bn'], s.get('glo_bn'),
                 train))
  gb = np.broadcast_to(g[:, None, None, None], (b, t, h, w, g.shape[-1]))
  z = np.concatenate([x, gb], -1)
  r = np_bn(z @ p['corr_conv1']['kernel'][0, 0], p['corr_bn1'], s.get('corr_bn1'), train)
  r = relu(np_bn(r @ p['corr_conv2']['kernel'][0, 0], p['corr_bn2'], s.get('corr_bn2'), train))
  r = np_bn(r @ p['corr_conv3']['kernel'][0, 0], p['corr_bn3'], s.get('corr_bn3'), train)
  r = sigmoid(r)
  return x * r, x * (1 - r), r[..., 0]


@pytest.mark.parametrize('train', [False, True])
def test_gce_matches_numpy(train):
  module = grl.GCE(hidden=6, corr_hidden=4)
  x = RNG.normal(size=(2, 3, 3, 2, 8)).astype(np.float32)
  v = randomize(init_shapes(module, x, False), seed=1)
  out = jit_apply(module, v, x, train=train, mutable=['batch_stats'] if train else False)
  if train:
    out = out[0]
  ref = np_gce(x.astype(np.float64), to_np(v['params']), to_np(v['batch_stats']), train)
  for a, b in zip(out, ref):
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-5)
  assert out[2].dtype == jnp.float32 and ((0 < out[2]) & (out[2] < 1)).all()


# ----------------------------------------------------------------------------------------------
# TRL
def np_accumulate(m, u, p, s, train, se=False):
  z = m + u
  upd = {}
  def bn(x, name):
    if train:
      upd[name] = x.mean((0, 1, 2))
    return np_bn(x, p[name], s[name], train)
  y = relu(bn(z @ p['conv1']['kernel'][0, 0], 'bn1'))
  y = relu(bn(y @ p['conv2']['kernel'][0, 0], 'bn2'))
  y = bn(y @ p['conv3']['kernel'][0, 0], 'bn3')
  if se:
    a = sigmoid(relu(y.mean((1, 2)) @ p['se_fc1']['kernel']) @ p['se_fc2']['kernel'])
    y = y * a[:, None, None]
  return relu(y + z), upd


def np_trl(xh, xl, p, s, train, reverse, se=False, accumulate_first=False):
  """Spec recurrence; returns e[B, T, D], GAP(M_T)[B, D] and the running means after T steps."""
  s = {k: dict(v) for k, v in s.items()}
  c = relu(xh @ p['phi2']['kernel'][0, 0] + p['phi2']['bias'])
  m = xl.mean(1)
  t_len = xh.shape[1]
  e = [None] * t_len
  for t in (reversed(range(t_len)) if reverse else range(t_len)):
    m_old = m
    m, upd = np_accumulate(m, xl[:, t], p['accumulate'], s, train, se)
    for name, mu in upd.items():  # one running-stat update per step (momentum 0.1)
      s[name]['mean'] = 0.9 * s[name]['mean'] + 0.1 * mu
    mem = m if accumulate_first else m_old
    a = relu(mem @ p['phi1']['kernel'][0, 0] + p['phi1']['bias'])
    sq = ((a - c[:, t]) ** 2).mean((1, 2))
    alpha = sigmoid(relu(sq @ p['attention_fc1']['kernel']) @ p['attention_fc2']['kernel'])
    e[t] = (xh[:, t] * (1 + alpha)[:, None, None]).mean((1, 2))
  return np.stack(e, 1), m.mean((1, 2)), s


def _trl_case(accumulation='plain', scan=True, reverse=False, dtype=jnp.float32):
  module = trl.TRLDirection(features=16, reduction=4, accumulation=accumulation,
                            reverse=reverse, scan=scan, dtype=dtype)
  xh = np.abs(RNG.normal(size=(2, 4, 3, 2, 16))).astype(np.float32)
  xl = np.abs(RNG.normal(size=(2, 4, 3, 2, 16))).astype(np.float32)
  v = randomize(init_shapes(module, xh, xl, False), seed=2)
  return module, xh, xl, v


@pytest.mark.parametrize('reverse,accumulation', [(False, 'plain'), (True, 'se')])
def test_trl_train_matches_spec_with_per_step_bn(reverse, accumulation):
  module, xh, xl, v = _trl_case(accumulation, reverse=reverse)
  (e, gap), upd = jit_apply(module, v, xh, xl, train=True, mutable=['batch_stats'])
  p, s = to_np(v['params']), to_np(v['batch_stats'])['accumulate']
  e_ref, gap_ref, s_ref = np_trl(xh.astype(np.float64), xl.astype(np.float64), p, s, True,
                                 reverse, se=accumulation == 'se')
  np.testing.assert_allclose(np.asarray(e), e_ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(gap), gap_ref, rtol=1e-4, atol=1e-5)
  for name in ('bn1', 'bn2', 'bn3'):  # T = 4 momentum updates, each with its step's batch mean
    np.testing.assert_allclose(np.asarray(upd['batch_stats']['accumulate'][name]['mean']),
                               s_ref[name]['mean'], rtol=1e-4, atol=1e-5)
  # The test is sensitive to the order: enhancing with the updated memory differs.
  e_wrong, _, _ = np_trl(xh.astype(np.float64), xl.astype(np.float64), p, s, True, reverse,
                         se=accumulation == 'se', accumulate_first=True)
  assert np.abs(e_wrong - e_ref).max() > 1e-3


def test_trl_eval_matches_spec():
  module, xh, xl, v = _trl_case(reverse=True)
  e, gap = jit_apply(module, v, xh, xl, train=False)
  p, s = to_np(v['params']), to_np(v['batch_stats'])['accumulate']
  e_ref, gap_ref, _ = np_trl(xh.astype(np.float64), xl.astype(np.float64), p, s, False, True)
  np.testing.assert_allclose(np.asarray(e), e_ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(gap), gap_ref, rtol=1e-4, atol=1e-5)


def test_scan_equals_unrolled():
  module, xh, xl, v = _trl_case(reverse=True)
  unrolled = module.clone(scan=False)
  assert jax.tree.structure(init_shapes(unrolled, xh, xl, False)) == jax.tree.structure(v)
  a = jit_apply(module, v, xh, xl, train=True, mutable=['batch_stats'])
  b = jit_apply(unrolled, v, xh, xl, train=True, mutable=['batch_stats'])
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)

  # And the gradients (summed over the steps for the shared parameters), so that the two
  # train the same maths and differ only in float rounding.
  def loss(params, mod):
    (e, gap), _ = mod.apply({'params': params, 'batch_stats': v['batch_stats']}, xh, xl, True,
                            mutable=['batch_stats'])
    return jnp.sum(e ** 2) + jnp.sum(jnp.sin(gap))
  ga = jax.jit(jax.grad(loss), static_argnums=1)(v['params'], module)
  gb = jax.jit(jax.grad(loss), static_argnums=1)(v['params'], unrolled)
  assert jax.tree.structure(ga) == jax.tree.structure(gb)
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    assert np.abs(np.asarray(y)).max() > 0
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Siamese: attention pooling and verifier
def np_attention_pool(z, p, s, train):
  n, t, d = z.shape
  rows = z.reshape(n * t, d)
  q = l2n(np_bn(rows @ p['query']['kernel'] + p['query']['bias'], p['query_bn'],
                s.get('query_bn'), train)).reshape(n, t, -1)
  k = l2n(np_bn(rows @ p['key']['kernel'] + p['key']['bias'], p['key_bn'], s.get('key_bn'),
                train)).reshape(n, t, -1)
  a = softmax(q @ k.transpose(0, 2, 1))
  y = np.einsum('nij,njd->nd', a, z)  # sum_i sum_j A_ij z_j
  return l2n(y)


def _siamese_case():
  module = grl.Siamese(attention_dim=6)
  z = l2n(RNG.normal(size=(4, 3, 10))).astype(np.float32)
  shapes = init_shapes(module, z, False, method=lambda m, z, tr: (
      m.attention_pool(z, tr), m.verify(z[:, 0], z[:, 0], tr)))
  return module, z, randomize(shapes, seed=3)


@pytest.mark.parametrize('train', [False, True])
def test_attention_pool_matches_numpy(train):
  module, z, v = _siamese_case()
  out = jit_apply(module, v, z, train=train, method='attention_pool',
                  mutable=['batch_stats'] if train else False)
  out = out[0] if train else out
  ref = np_attention_pool(z.astype(np.float64), to_np(v['params']), to_np(v['batch_stats']),
                          train)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-5)


def test_probe_gallery_calls_update_bn_twice_and_verifier_matches_numpy():
  module, z, v = _siamese_case()

  def train_calls(m, z):
    p, g = m.attention_pool(z[0::2], True), m.attention_pool(z[1::2], True)
    return p, g, m.verify(p, g, True)

  (p, g, logit), upd = jit_apply(module, v, z, method=train_calls, mutable=['batch_stats'])
  pn, sn = to_np(v['params']), to_np(v['batch_stats'])
  zz = z.astype(np.float64)
  mu = lambda rows: (rows.reshape(-1, rows.shape[-1]) @ pn['query']['kernel']  # noqa: E731
                     + pn['query']['bias']).mean(0)
  expected = 0.9 * (0.9 * sn['query_bn']['mean'] + 0.1 * mu(zz[0::2])) + 0.1 * mu(zz[1::2])
  np.testing.assert_allclose(np.asarray(upd['batch_stats']['query_bn']['mean']), expected,
                             rtol=1e-4, atol=1e-6)
  pr = np_attention_pool(zz[0::2], pn, sn, True)
  gr = np_attention_pool(zz[1::2], pn, sn, True)
  d = ((pr[:, None] - gr[None]) ** 2).reshape(-1, zz.shape[-1])
  logits = np_bn(d, pn['verifier_bn'], None, True) @ pn['verifier']['kernel'] + \
      pn['verifier']['bias']
  np.testing.assert_allclose(np.asarray(logit), (logits[:, 1] - logits[:, 0]).reshape(2, 2),
                             rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# The whole model
TINY = dict(stage_sizes=(1, 1, 1, 1), resnet_width=4)


def _grl_case(h=40, w=24, b=4, t=3, **cfg):
  module = grl.build({**TINY, **cfg})
  x = RNG.normal(size=(b, t, h, w, 3)).astype(np.float32)
  return module, x, randomize(init_shapes(module, x, False), seed=4)


def test_outputs_contract_at_non_16x8_resolution():
  module, x, v = _grl_case()  # 40 x 24 -> a 3 x 2 feature map
  d = module.feature_dim
  assert d == 128
  out = jit_apply(module, v, x, train=False)
  assert out['descriptor'].shape == (4, 3 * d) and out['descriptor'].dtype == jnp.float32
  assert out['correlation_map'].shape == (4, 3, 3, 2)
  desc = np.asarray(out['descriptor'])
  np.testing.assert_allclose(np.linalg.norm(desc[:, :d], axis=1), 1, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(desc[:, d:2 * d], axis=1), 1, rtol=1e-5)
  assert (np.linalg.norm(desc[:, 2 * d:], axis=1) <= 1 + 1e-5).all()

  tr, upd = jit_apply(module, v, x, train=True, mutable=['batch_stats'])
  assert jax.tree.structure(upd['batch_stats']) == jax.tree.structure(v['batch_stats'])
  np.testing.assert_array_equal(tr['pair_order'], [0, 2, 1, 3])
  assert tr['pair_order'].dtype == jnp.int32
  shapes = {k: tuple(a.shape) for k, a in tr.items()}
  assert shapes == {'frame_corr': (4, 3, d), 'video_corr': (4, d), 'video_uncorr': (4, d),
                    'verification_logit': (2, 2), 'pair_order': (4,),
                    'correlation_map': (4, 3, 3, 2)}
  assert all(a.dtype == jnp.float32 for k, a in tr.items() if k != 'pair_order')
  np.testing.assert_allclose(np.linalg.norm(tr['frame_corr'], axis=-1), 1, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(tr['video_corr'], axis=-1), 1, rtol=1e-5)


def test_odd_training_batch_is_an_error():
  module, x, v = _grl_case(b=3, t=2, h=32, w=16)
  with pytest.raises(ValueError, match='even batch'):
    module.apply(v, x, train=True, mutable=['batch_stats'])


def test_bfloat16_compute_keeps_float32_outputs_and_variables():
  module, x, v = _grl_case(dtype='bfloat16', b=2, t=2, h=32, w=16)
  assert module.dtype == jnp.bfloat16
  out = jit_apply(module, v, x, train=False)
  assert out['descriptor'].dtype == jnp.float32 and out['correlation_map'].dtype == jnp.float32
  ref = jit_apply(grl.build(TINY), v, x, train=False)
  # Same variables, coarser arithmetic: close but not equal.
  assert np.abs(np.asarray(out['descriptor']) - np.asarray(ref['descriptor'])).max() < 0.1
  tr, upd = jit_apply(module, v, x, train=True, mutable=['batch_stats'])
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(upd))
  assert all(a.dtype == jnp.float32 for k, a in tr.items() if k != 'pair_order')


def test_hidden_sizes_scale_with_width_and_names_match_lr_groups():
  module = grl.build({'stage_sizes': (1, 1, 1, 1), 'resnet_width': 8})
  assert (module.gce_hidden, module.corr_hidden, module.attention_dim) == (128, 32, 64)
  full = grl.build({})
  assert (full.gce_hidden, full.corr_hidden, full.attention_dim, full.feature_dim) == (
      1024, 256, 512, 2048)
  v = init_shapes(module, jnp.zeros((2, 2, 32, 16, 3)), False)
  assert set(v['params']) == {'backbone', 'gce', 'trl_forward', 'trl_backward', 'corr_bn',
                              'uncorr_bn', 'siamese'}
  p = v['params']['trl_forward']
  assert p['accumulate']['conv1']['kernel'].shape == (1, 1, 256, 64)
  assert p['attention_fc1']['kernel'].shape == (256, 16)


def test_registry_entry():
  from grl_jax import models
  spec = models.get('grl')
  assert spec.descriptor_distance == 'dot'
  assert isinstance(spec.build({'resnet_width': 8, 'stage_sizes': (1, 1, 1, 1)}, 5), grl.GRL)
  with pytest.raises(ValueError, match='dtype'):
    spec.build({'dtype': 'float64'}, 5)


# ----------------------------------------------------------------------------------------------
# Config fields, defaults and checks
def _mars(model='grl'):
  import configs.mars  # pylint: disable=g-import-not-at-top
  return configs.mars.get_config(f'model={model}')


def test_unknown_model_and_fields_are_config_errors():
  from grl_jax import models
  from grl_jax.errors import ConfigError
  with pytest.raises(ConfigError, match=r"config.model.name='resnet'.*'grl'"):
    models.get('resnet')
  with pytest.raises(ConfigError, match=r'config.model.gce_hiden is not a field.*gce_hidden'):
    grl.build({'gce_hiden': 8})
  with pytest.raises(ConfigError, match=r"config.model.dtype='float16'"):
    grl.build({'dtype': 'float16'})
  with pytest.raises(ConfigError, match=r"config.model.accumulation='sum'"):
    grl.build({'accumulation': 'sum'})


def test_model_defaults_are_the_module_defaults_and_the_recipe_starts_from_them():
  from grl_jax import models
  spec = models.get('grl')
  defaults = spec.model_defaults()
  assert defaults['name'] == 'grl' and defaults['resnet_depth'] == 50
  default_module, built = grl.GRL(), spec.build(defaults, 0)
  for field in ('stage_sizes', 'width', 'last_stride', 'dtype', 'gce_hidden', 'trl_scan'):
    assert getattr(built, field) == getattr(default_module, field)
  c = _mars()
  assert set(c.model) == set(defaults) and set(c.loss) == set(spec.loss_defaults())
  spec.check_config(c)
  c.model.resnet_width = 8            # loss.feature_dim follows (FieldReference)
  assert c.loss.feature_dim == 256
  spec.check_config(c)


@pytest.mark.parametrize('field,value,message', [
    ('loss.feature_dim', 1024, r'config.loss.feature_dim=1024 must equal .* = 2048'),
    ('model.trl_reduction', 4096, r'config.model.trl_reduction=4096'),
    ('model.dtype', 'float64', r"config.model.dtype='float64'"),
])
def test_check_config_names_the_field(field, value, message):
  from grl_jax import models
  from grl_jax.errors import ConfigError
  c = _mars()
  section, key = field.split('.')
  c[section][key] = value
  with pytest.raises(ConfigError, match=message):
    models.get('grl').check_config(c)


def test_compute_dtype():
  from grl_jax.errors import ConfigError
  from grl_jax.models import layers
  assert layers.compute_dtype('bfloat16') == jnp.bfloat16
  assert layers.compute_dtype(jnp.float32) == jnp.float32
  with pytest.raises(ConfigError, match=r"config.model.dtype='half': expected one of"):
    layers.compute_dtype('half')
