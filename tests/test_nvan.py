"""NVAN / STE-NVAN: blocks against numpy equations, identity at init, temporal hierarchy, model
shapes, official-checkpoint conversion round trip and objective wiring (tiny sizes, CPU)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import np_reference

from grl_jax.convert import nvan_official as convert_nvan
from grl_jax.convert.torchvision import imagenet_variables
from grl_jax.errors import ConversionError
from grl_jax import models as registry
from grl_jax.models import layers, nvan

EPS = 1e-5
# Tiny ResNet: enough blocks for the official NL positions (2 in layer2, 3 in layer3).
TINY = dict(stage_sizes=(1, 2, 3, 1), resnet_width=4, stripes=4, nl_query_chunk=0)


def _np_non_local(params, stats, x):
  """Spec §A2: Z = X + BN(W softmax(θ φᵀ) g); x [G, N, C] float64."""
  th, ph, g = (np_reference.dense(params[k], x) for k in ('theta', 'phi', 'g'))
  a = np_reference.softmax(np.einsum('gqd,gkd->gqk', th, ph))
  y = np.einsum('gqk,gkd->gqd', a, g)
  w_y = np_reference.dense(params['w_conv'], y)
  return x + np_reference.bn_eval(params['w_bn'], stats['w_bn'], w_y)


# ------------------------------------------------------------------------------------------------
# Blocks.


@pytest.mark.parametrize('chunk', [0, 4, 5, 64])
def test_softmax_attention_matches_numpy_with_and_without_chunks(chunk):
  rng = np.random.RandomState(0)
  q, k, v = (rng.randn(3, 12, 6).astype(np.float32) for _ in range(3))
  attention = np_reference.softmax(np.einsum('gqd,gkd->gqk', q * 1.0, k * 1.0))
  want = np.einsum('gqk,gkd->gqd', attention, v)
  got = layers.softmax_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), chunk)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_chunked_attention_gradients_match_unchunked():
  rng = np.random.RandomState(1)
  q, k, v = (jnp.asarray(rng.randn(2, 10, 4).astype(np.float32)) for _ in range(3))
  loss = lambda c: lambda q, k, v: jnp.sum(layers.softmax_attention(q, k, v, c) ** 2)  # noqa
  full = jax.grad(loss(0), argnums=(0, 1, 2))(q, k, v)
  chunked = jax.grad(loss(3), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(full, chunked):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_non_local_block_matches_numpy_equation():
  x = np.random.RandomState(2).randn(2, 10, 8).astype(np.float32)
  block = nvan.NonLocalBlock()
  v = np_reference.randomise(block.init(jax.random.PRNGKey(0), jnp.asarray(x)), 3)
  got = block.apply(v, jnp.asarray(x), train=False)
  want = _np_non_local(v['params'], v['batch_stats'], x.astype(np.float64))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
  assert v['params']['theta']['kernel'].shape == (8, 4)  # reduction 2


@pytest.mark.parametrize('block,shape', [(nvan.NonLocalBlock(), (2, 12, 8)),
                                         (nvan.StripeNonLocalBlock(stripes=4), (3, 2, 8, 3, 8))])
@pytest.mark.parametrize('train', [False, True])
def test_blocks_are_identity_at_init(block, shape, train):
  x = jnp.asarray(np.random.RandomState(4).randn(*shape).astype(np.float32))
  v = block.init(jax.random.PRNGKey(1), x)
  out = block.apply(v, x, train=train, mutable=['batch_stats'] if train else False)
  out = out[0] if train else out
  np.testing.assert_array_equal(np.asarray(out), np.asarray(x))


def test_stripe_pool_and_broadcast_round_trip():
  rng = np.random.RandomState(5)
  y = rng.randn(2, 3, 4, 5).astype(np.float32)            # [G, T, S, C]
  full = nvan.stripe_broadcast(jnp.asarray(y), 8, 3)       # 2 rows per stripe
  # Stripe s covers rows 2s, 2s+1 (top to bottom) with a constant vector.
  for s in range(4):
    np.testing.assert_array_equal(np.asarray(full[:, :, 2 * s:2 * s + 2]),
                                  np.broadcast_to(y[:, :, s, None, None], (2, 3, 2, 3, 5)))
  np.testing.assert_allclose(np.asarray(nvan.stripe_pool(full, 4)), y, rtol=1e-6)
  x = rng.randn(2, 3, 8, 3, 5).astype(np.float32)
  want = x.reshape(2, 3, 4, 2, 3, 5).mean(axis=(3, 4))
  np.testing.assert_allclose(np.asarray(nvan.stripe_pool(jnp.asarray(x), 4)), want, rtol=1e-5)
  with pytest.raises(ValueError, match='stripes=3'):
    nvan.stripe_pool(jnp.asarray(x), 3)


def test_stripe_non_local_matches_numpy_equation():
  x = np.random.RandomState(6).randn(3, 2, 8, 3, 8).astype(np.float32)   # [G, T_g, H, W, C]
  block = nvan.StripeNonLocalBlock(stripes=4)
  v = np_reference.randomise(block.init(jax.random.PRNGKey(0), jnp.asarray(x)), 7)
  got = block.apply(v, jnp.asarray(x), train=False)
  x64 = x.astype(np.float64)
  p = x64.reshape(3, 2, 4, 2, 3, 8).mean(axis=(3, 4)).reshape(3, 8, 8)   # pool, then embed
  delta = _np_non_local(v['params'], v['batch_stats'], p) - p             # W-BN branch only
  delta = np.repeat(delta.reshape(3, 2, 4, 1, 1, 8), 2, axis=3)
  want = x64 + np.broadcast_to(delta, (3, 2, 4, 2, 3, 8)).reshape(x.shape)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_temporal_max_pool_pairs_consecutive_frames():
  x = np.random.RandomState(8).randn(2 * 8, 2, 2, 3).astype(np.float32)
  got = np.asarray(nvan.temporal_max_pool(jnp.asarray(x)))
  want = np.stack([np.maximum(x[2 * i], x[2 * i + 1]) for i in range(8)])
  np.testing.assert_array_equal(got, want)
  with pytest.raises(ValueError, match='cannot be paired'):
    nvan.temporal_max_pool(jnp.asarray(x[:3]))


def test_nl_positions_follow_official_indices():
  for layers, k in [(4, 2), (6, 3), (3, 0), (4, 4)]:
    assert nvan.nl_positions(layers, k) == tuple(sorted(layers - (i + 1) for i in range(k)))
  with pytest.raises(ValueError, match='non_layers'):
    nvan.nl_positions(3, 4)


# ------------------------------------------------------------------------------------------------
# Whole (tiny) models.


def _tiny(name, **over):
  return registry.get(name).build({'name': name, **TINY, **over}, 5)


def _frames(b=2, t=8, seed=0):
  return jnp.asarray(np.random.RandomState(seed).randn(b, t, 64, 16, 3).astype(np.float32))


@pytest.fixture(scope='module')
def tiny_models():
  out = {}
  for name in ('nvan', 'ste_nvan'):
    model = _tiny(name)
    init = jax.jit(lambda key, x, m=model: m.init(key, x, train=True))  # eager: op by op, slow
    variables = np_reference.randomise(init(jax.random.PRNGKey(0), _frames()), 11)
    out[name] = (model, variables, jax.jit(lambda v, x, m=model: m.apply(v, x, train=False)))
  return out


@pytest.mark.parametrize('name', ['nvan', 'ste_nvan'])
def test_model_outputs_and_objective_wiring(tiny_models, name):
  model, variables, evaluate = tiny_models[name]
  spec = registry.get(name)
  assert spec.descriptor_distance == 'cosine'
  train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))
  out, _ = train(variables, _frames())
  assert set(out) == {'feature', 'logits'}
  assert out['feature'].shape == (2, 128) and out['logits'].shape == (2, 5)
  assert out['feature'].dtype == jnp.float32
  eval_out = evaluate(variables, _frames())
  assert eval_out['descriptor'].shape == (2, 128)
  # descriptor = BNNeck(feature) with running statistics and no bias.
  bn_p, bn_s = variables['params']['bnneck'], variables['batch_stats']['bnneck']
  want = ((np.asarray(eval_out['feature']) - np.asarray(bn_s['mean']))
          / np.sqrt(np.asarray(bn_s['var']) + EPS) * np.asarray(bn_p['scale']))
  np.testing.assert_allclose(np.asarray(eval_out['descriptor']), want, rtol=1e-4, atol=1e-5)
  assert 'bias' not in bn_p and 'bias' not in variables['params']['classifier']
  # Eval never touches the classifier: inference rebuilds the model without the identity count.
  other = registry.get(name).build({'name': name, **TINY}, 1)
  other_eval = jax.jit(lambda v, x: other.apply(v, x, train=False))  # same compiled path
  np.testing.assert_array_equal(np.asarray(other_eval(variables, _frames())['descriptor']),
                                np.asarray(eval_out['descriptor']))
  objective = spec.objective({'triplet_margin': 'soft'}, 5)
  batch = {'pid': jnp.asarray([0, 0, 1, 1], jnp.int32)}
  out4, _ = train(variables, _frames(b=4))
  loss, metrics = objective.loss(out4, batch, objective.init_state())
  assert np.isfinite(float(loss)) and {'ce', 'triplet'} <= set(metrics)


def test_ste_nvan_temporal_hierarchy_8_4_2():
  model = _tiny('ste_nvan')
  x = _frames(b=2, t=8)
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  _, inter = model.apply(variables, x, train=False, capture_intermediates=True,
                         mutable=['intermediates'])
  frames_of = lambda n: inter['intermediates'][n]['__call__'][0].shape  # noqa: E731
  assert frames_of('layer2_1')[0] == 2 * 8       # layer2 on 8 frames per clip
  assert frames_of('nl2_1') [:2] == (8, 2)       # 4 pairs x 2 clips, 2 frames each
  assert frames_of('layer3_0')[0] == 2 * 4       # T 8 -> 4
  assert frames_of('nl3_2')[:2] == (4, 2)
  assert frames_of('layer4_0')[0] == 2 * 2       # T 4 -> 2
  nvan_model = _tiny('nvan')
  _, inter = nvan_model.apply(nvan_model.init(jax.random.PRNGKey(0), x, train=False), x,
                              train=False, capture_intermediates=True, mutable=['intermediates'])
  assert inter['intermediates']['nl2_0']['__call__'][0].shape == (2, 8 * 8 * 2, 32)
  assert inter['intermediates']['layer4_0']['__call__'][0].shape[0] == 2 * 8


@pytest.mark.parametrize('name', ['nvan', 'ste_nvan'])
def test_clips_are_processed_independently(tiny_models, name):
  _, variables, fn = tiny_models[name]
  x = _frames(b=2)
  y = x.at[1].set(_frames(b=1, seed=3)[0])
  a, b = fn(variables, x)['descriptor'], fn(variables, y)['descriptor']
  np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[0]), rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(a[1] - b[1])).max() > 1e-3


def test_pair_grouping_differs_from_clip_grouping(tiny_models):
  _, variables, fn = tiny_models['ste_nvan']
  glob = _tiny('ste_nvan', nl_temporal_groups='clip')
  x = _frames()
  pairs = fn(variables, x)['descriptor']
  clip = glob.apply(variables, x, train=False)['descriptor']
  assert np.abs(np.asarray(pairs - clip)).max() > 1e-4


def test_bad_clip_lengths_raise():
  with pytest.raises(ValueError, match='T=6'):
    model = _tiny('ste_nvan')
    model.init(jax.random.PRNGKey(0), _frames(t=6), train=False)
  with pytest.raises(ValueError, match='nl_temporal_groups'):
    _tiny('nvan', nl_temporal_groups='triples').init(jax.random.PRNGKey(0), _frames(),
                                                     train=False)


# ------------------------------------------------------------------------------------------------
# Official checkpoint conversion.


def _to_official(variables):
  """Fake official DataParallel state dict (torch layouts, numpy) from Flax variables."""
  state = convert_nvan.to_official(variables)
  state['module.features.backbone.bn1.num_batches_tracked'] = np.asarray(7)
  return state


@pytest.mark.parametrize('name', ['nvan', 'ste_nvan'])
def test_official_conversion_round_trip(tiny_models, name):
  _, variables, _ = tiny_models[name]
  state = _to_official(variables)
  assert 'module.features.backbone.NL_3.2.W.1.running_var' in state
  assert 'module.features.backbone.layer2.0.downsample.0.weight' in state
  assert state['module.features.backbone.NL_2.1.theta.weight'].shape == (16, 32, 1, 1, 1)
  assert state['module.features.backbone.NL_2.0.W.0.weight'].shape == (32, 16, 1, 1, 1)
  assert state['module.features.backbone.conv1.weight'].shape == (4, 3, 7, 7)
  assert state['module.classifier.weight'].shape == (5, 128)
  assert state['module.bottleneck.running_var'].shape == (128,)
  got, cfg, num_classes = convert_nvan.official_variables(state, name, stripes=4)
  assert num_classes == 5
  assert tuple(cfg['stage_sizes']) == (1, 2, 3, 1) and cfg['resnet_width'] == 4
  assert tuple(cfg['non_layers']) == (0, 2, 3, 0) and cfg['stem_relu'] is False
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               jax.tree.map(np.asarray, dict(variables)), got)


def test_conversion_errors_name_the_key(tiny_models):
  _, variables, _ = tiny_models['nvan']
  base = _to_official(variables)
  missing = dict(base)
  del missing['module.features.backbone.NL_2.0.phi.bias']
  with pytest.raises(ConversionError, match=r'NL_2\.0\.phi\.bias'):
    convert_nvan.official_variables(missing, 'nvan', stripes=4)
  bad = dict(base)
  bad['module.features.backbone.layer3.1.conv2.weight'] = np.zeros((3, 3, 3, 3), np.float32)
  with pytest.raises(ConversionError, match=r'layer3\.1\.conv2\.weight'):
    convert_nvan.official_variables(bad, 'nvan', stripes=4)
  extra = dict(base)
  extra['module.features.backbone.foo.weight'] = np.zeros(3)
  with pytest.raises(ConversionError, match='foo.weight'):
    convert_nvan.official_variables(extra, 'nvan', stripes=4)
  bias = dict(base)
  bias['module.bottleneck.bias'] = np.ones(128)
  with pytest.raises(ConversionError, match='bottleneck.bias'):
    convert_nvan.official_variables(bias, 'nvan', stripes=4)
  plain = {k[len('module.'):]: v for k, v in base.items()}
  with pytest.raises(ConversionError, match='module'):
    convert_nvan.official_variables(plain, 'nvan', stripes=4)


@pytest.mark.parametrize('name', ['nvan', 'iaunet'])
def test_imagenet_init_copies_the_trunk_and_keeps_fresh_blocks(name):
  from grl_jax import convert
  from grl_jax.models import resnet
  trunk = resnet.ResNet(stage_sizes=(1, 2, 3, 1), width=4)
  tv = trunk.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 16, 3)), train=False)
  tv = np_reference.randomise(tv, 9)
  state = {convert.resnet_torch_key(c, tuple(p)): convert.flax_to_torch(np.asarray(v), p[-1])
           for (c, *p), v in convert.flatten(tv).items()}
  state['fc.weight'] = np.zeros((1000, 128), np.float32)
  # Model fields are read strictly: each model gets only its own fields.
  cfg = ({'name': name, **TINY} if name == 'nvan' else
         {'name': name, 'stage_sizes': TINY['stage_sizes'], 'resnet_width': 4, 'seq_len': 4})
  variables, ignored = imagenet_variables(state, cfg, seed=0)
  assert ignored == ['resnet:fc.weight']
  for coll in ('params', 'batch_stats'):
    for key in ('conv1', 'bn1', 'layer3_2', 'layer2_0'):
      if key in tv[coll]:
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                     tv[coll][key], variables[coll][key])
  assert 'classifier' not in variables['params']
  block = 'nl2_0' if name == 'nvan' else 'iau2'
  assert block in variables['params']


# ------------------------------------------------------------------------------------------------
# Config fields and checks.


def _mars(model):
  import configs.mars  # pylint: disable=g-import-not-at-top
  return configs.mars.get_config(f'model={model}')


@pytest.mark.parametrize('name', ['nvan', 'ste_nvan'])
def test_recipe_fields_are_the_model_defaults_and_pass_the_checks(name):
  spec = registry.get(name)
  c = _mars(name)
  assert set(c.model) == set(spec.model_defaults())
  assert spec.model_defaults()['nl_temporal_groups'] == ('clip' if name == 'nvan' else 'pairs')
  spec.check_config(c)
  import configs.demo  # pylint: disable=g-import-not-at-top
  spec.check_config(configs.demo.get_config(f'model={name}'))


@pytest.mark.parametrize('name,field,value,message', [
    ('ste_nvan', 'model.stripes', 5, r'config.model.stripes=5 must divide the layer2 feature '
                                     r'height 32 \(from config.data.height=256\)'),
    ('ste_nvan', 'data.height', 200, r'config.model.stripes=16 must divide the layer2 .* 25'),
    ('ste_nvan', 'data.seq_len', 6, r'config.data.seq_len=6: ste_nvan halves .* multiple of 4'),
    ('nvan', 'model.nl_temporal_groups', 'pairs', None),
    ('nvan', 'model.non_layers', (0, 2, 3), r'config.model.non_layers=\(0, 2, 3\) needs one '),
    ('nvan', 'model.non_layers', (0, 5, 3, 0), r'config.model.non_layers: 5 non-local'),
    ('nvan', 'loss.triplet_feature', 'bn_feature', r"config.loss.triplet_feature='bn_feature'"),
    ('nvan', 'model.nl_temporal_groups', 'triples', r"config.model.nl_temporal_groups='triples'"),
])
def test_check_config_names_the_fields(name, field, value, message):
  from grl_jax.errors import ConfigError
  c = _mars(name)
  section, key = field.split('.')
  c[section][key] = value
  if message is None:   # NVAN with pairs: fine at T = 8, an error at an odd T.
    registry.get(name).check_config(c)
    c.data.seq_len = 7
    message = r'config.model.nl_temporal_groups=pairs: the non-local blocks of layer2 see 7'
  with pytest.raises(ConfigError, match=message):
    registry.get(name).check_config(c)


def test_unknown_field_and_name_mismatch_are_config_errors():
  from grl_jax.errors import ConfigError
  with pytest.raises(ConfigError, match=r"config.model.stripe is not a field of model "
                                        r"'ste_nvan'; known: .*'stripes'"):
    _tiny('ste_nvan', stripe=4)
  with pytest.raises(ConfigError, match=r"config.model.name='nvan'"):
    registry.get('ste_nvan').build({'name': 'nvan'}, 5)
