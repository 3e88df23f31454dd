"""Tests of grl_jax.objectives: hand-computed totals, LUT update order, jit and a sharded batch."""
import json
import os
import subprocess
import sys
import textwrap

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from grl_jax import objectives
from tests.test_losses import (np_bce_two_way, np_cross_entropy, np_oim_loss, np_oim_update,
                               np_triplet)

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _unit(x):
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _grl_fake(rng, pid, t, d):
  """Random GRL train outputs of the right shapes for a pair batch `pid` (rows 2k, 2k+1)."""
  b = len(pid)
  pair_order = np.concatenate([np.arange(0, b, 2), np.arange(1, b, 2)]).astype(np.int32)
  outputs = {
      'frame_corr': _unit(rng.normal(size=(b, t, d))),
      'video_corr': _unit(rng.normal(size=(b, d))),
      'video_uncorr': _unit(rng.normal(size=(b, d))),
      'verification_logit': (rng.normal(size=(b // 2, b // 2)) * 3).astype(np.float32),
      'pair_order': pair_order,
      'correlation_map': rng.uniform(size=(b, t, 4, 2)).astype(np.float32),
  }
  batch = {'pid': np.asarray(pid, np.int32), 'camid': np.zeros(b, np.int32),
           'tracklet': np.arange(b, dtype=np.int32)}
  return outputs, batch


def _grl_state(rng, c, d):
  state = {'lut_corr': _unit(rng.normal(size=(c, d))),
           'lut_uncorr': _unit(rng.normal(size=(c, d)))}
  state['lut_corr'][c - 1] = 0.0  # an identity not seen yet
  return state


def _np_grl_terms(outputs, batch, state, scalar=30.0):
  pid = batch['pid']
  b, t, _ = outputs['frame_corr'].shape
  frames = np.stack([outputs['frame_corr'][i, j] for i in range(b) for j in range(t)])
  frame_labels = np.array([pid[i] for i in range(b) for _ in range(t)])
  video_labels = pid[np.r_[0:b:2, 1:b:2]]
  two_way = np.stack([np.zeros_like(outputs['verification_logit']),
                      outputs['verification_logit']], -1)  # softmax(.)[1] = σ(logit)
  return {
      'oim_frame': np_oim_loss(frames, frame_labels, state['lut_corr'], scalar),
      'oim_video': np_oim_loss(outputs['video_corr'], video_labels, state['lut_corr'], scalar),
      'verification': np_bce_two_way(two_way, pid[0::2], pid[1::2]),
      'triplet': np_triplet(outputs['video_corr'], video_labels, 'soft', 'euclidean'),
      'oim_uncorr': np_oim_loss(outputs['video_uncorr'], video_labels, state['lut_uncorr'],
                                scalar),
  }, frames, frame_labels, video_labels


PID = [3, 3, 1, 1, 3, 3, 0, 0]


def test_grl_init_state_shapes():
  obj = objectives.GRLObjective(ml_collections.ConfigDict({'feature_dim': 16}), 7)
  state = obj.init_state()
  assert set(state) == {'lut_corr', 'lut_uncorr'}
  for v in state.values():
    assert v.shape == (7, 16) and v.dtype == jnp.float32 and not np.any(np.asarray(v))
  assert objectives.GRLObjective(None, 3).init_state()['lut_corr'].shape == (3, 2048)


def test_grl_initial_loss_is_log_c_for_each_oim_term():
  rng = np.random.default_rng(0)
  outputs, batch = _grl_fake(rng, PID, 3, 8)
  obj = objectives.GRLObjective({'feature_dim': 8}, 5)
  _, metrics = obj.loss(outputs, batch, obj.init_state())
  for k in ('oim_frame', 'oim_video', 'oim_uncorr'):
    np.testing.assert_allclose(metrics[k], np.log(5.0), rtol=1e-6)


def test_grl_total_is_sum_of_hand_computed_terms_under_jit():
  rng = np.random.default_rng(1)
  outputs, batch = _grl_fake(rng, PID, 3, 8)
  state = _grl_state(rng, 5, 8)
  obj = objectives.GRLObjective({'feature_dim': 8}, 5)
  total, metrics = jax.jit(obj.loss)(outputs, batch, state)
  want, _, _, video_labels = _np_grl_terms(outputs, batch, state)
  for k, v in want.items():
    np.testing.assert_allclose(metrics[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
  want_total = (want['oim_frame'] + want['oim_video'] + 20 * want['verification']
                + want['triplet'] + want['oim_uncorr'])
  np.testing.assert_allclose(total, want_total, rtol=1e-5)
  np.testing.assert_allclose(metrics['total'], total, rtol=1e-7)
  acc = np.mean(np.argmax(outputs['video_corr'] @ state['lut_corr'].T, -1) == video_labels)
  np.testing.assert_allclose(metrics['accuracy'], acc)
  assert total.dtype == jnp.float32 and all(m.shape == () for m in metrics.values())


def test_grl_weights_from_config_and_no_gradient_to_luts():
  rng = np.random.default_rng(2)
  outputs, batch = _grl_fake(rng, PID, 2, 8)
  state = _grl_state(rng, 5, 8)
  cfg = ml_collections.ConfigDict(dict(feature_dim=8, oim_scalar=10.0, oim_frame_weight=0.5,
                                       oim_video_weight=2.0, verification_weight=3.0,
                                       triplet_weight=0.0, uncorr_weight=4.0))
  obj = objectives.GRLObjective(cfg, 5)
  want, *_ = _np_grl_terms(outputs, batch, state, scalar=10.0)
  total, _ = obj.loss(outputs, batch, state)
  np.testing.assert_allclose(total, 0.5 * want['oim_frame'] + 2 * want['oim_video']
                             + 3 * want['verification'] + 4 * want['oim_uncorr'], rtol=1e-5)
  floats = {k: v for k, v in outputs.items() if k != 'pair_order'}
  g_out, g_state = jax.grad(
      lambda f, s: obj.loss({**f, 'pair_order': outputs['pair_order']}, batch, s)[0],
      argnums=(0, 1))(floats, state)
  assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(g_out))
  assert np.any(np.asarray(g_out['frame_corr'])) and np.any(np.asarray(g_out['video_uncorr']))
  assert not any(np.any(np.asarray(v)) for v in jax.tree.leaves(g_state))


def test_grl_update_state_order_video_then_frames():
  rng = np.random.default_rng(3)
  outputs, batch = _grl_fake(rng, PID, 3, 8)
  state = _grl_state(rng, 5, 8)
  obj = objectives.GRLObjective({'feature_dim': 8}, 5)
  new = jax.jit(obj.update_state)(outputs, batch, state)
  _, frames, frame_labels, video_labels = _np_grl_terms(outputs, batch, state)
  want_corr = np_oim_update(np_oim_update(state['lut_corr'], outputs['video_corr'], video_labels),
                            frames, frame_labels)
  want_uncorr = np_oim_update(state['lut_uncorr'], outputs['video_uncorr'], video_labels)
  np.testing.assert_allclose(new['lut_corr'], want_corr, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new['lut_uncorr'], want_uncorr, rtol=1e-5, atol=1e-6)
  # The other order gives a different table: the order is observable and follows the spec.
  other = np_oim_update(np_oim_update(state['lut_corr'], frames, frame_labels),
                        outputs['video_corr'], video_labels)
  assert np.abs(other - want_corr).max() > 1e-3
  # Identity 2 is not in the batch: both rows untouched.
  np.testing.assert_array_equal(new['lut_corr'][2], state['lut_corr'][2])
  np.testing.assert_array_equal(new['lut_uncorr'][2], state['lut_uncorr'][2])


def test_grl_shape_errors_are_clear():
  rng = np.random.default_rng(4)
  outputs, batch = _grl_fake(rng, PID, 2, 8)
  obj = objectives.GRLObjective({'feature_dim': 16}, 5)
  with pytest.raises(ValueError, match='feature_dim'):
    obj.loss(outputs, batch, obj.init_state())
  with pytest.raises(KeyError, match='verification_logit'):
    objectives.GRLObjective({'feature_dim': 8}, 5).loss(
        {k: v for k, v in outputs.items() if k != 'verification_logit'}, batch, None)


@pytest.mark.parametrize('cfg', [
    {},  # NVAN: plain CE + soft-margin Euclidean triplet on the pre-BN feature
    {'label_smoothing': 0.1, 'triplet_margin': 0.3, 'triplet_metric': 'cosine',
     'triplet_feature': 'bn_feature', 'ce_weight': 0.5, 'triplet_weight': 2.0},  # IAUnet-like
])
def test_bnneck_objective_matches_numpy_under_jit(cfg):
  rng = np.random.default_rng(5)
  pid = np.repeat(np.array([4, 0, 2, 5]), 3).astype(np.int32)
  b, c = len(pid), 6
  outputs = {'feature': rng.normal(size=(b, 10)).astype(np.float32) * 5,
             'bn_feature': rng.normal(size=(b, 10)).astype(np.float32),
             'logits': rng.normal(size=(b, c)).astype(np.float32) * 2}
  batch = {'pid': pid}
  obj = objectives.BNNeckObjective(ml_collections.ConfigDict(cfg), c)
  assert obj.init_state() == {}
  total, metrics = jax.jit(obj.loss)(outputs, batch, {})
  ce = np_cross_entropy(outputs['logits'], pid, cfg.get('label_smoothing', 0.0))
  tri = np_triplet(outputs[cfg.get('triplet_feature', 'feature')], pid,
                   cfg.get('triplet_margin', 'soft'), cfg.get('triplet_metric', 'euclidean'))
  np.testing.assert_allclose(metrics['ce'], ce, rtol=1e-5)
  np.testing.assert_allclose(metrics['triplet'], tri, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      total, cfg.get('ce_weight', 1.0) * ce + cfg.get('triplet_weight', 1.0) * tri, rtol=1e-5)
  np.testing.assert_allclose(metrics['accuracy'],
                             np.mean(np.argmax(outputs['logits'], -1) == pid))
  assert obj.update_state(outputs, batch, {}) == {}


_SHARDED_SCRIPT = textwrap.dedent('''
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from grl_jax import objectives

    assert len(jax.devices()) == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ('data',))
    rng = np.random.default_rng(0)
    b, t, d, c = 16, 4, 32, 10
    unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    pid = np.repeat(rng.permutation(c)[:b // 2], 2).astype(np.int32)
    outputs = {
        'frame_corr': unit(rng.normal(size=(b, t, d))),
        'video_corr': unit(rng.normal(size=(b, d))),
        'video_uncorr': unit(rng.normal(size=(b, d))),
        'verification_logit': rng.normal(size=(b // 2, b // 2)).astype(np.float32),
        'pair_order': np.concatenate([np.arange(0, b, 2), np.arange(1, b, 2)]).astype(np.int32),
    }
    batch = {'pid': pid}
    state = {'lut_corr': unit(rng.normal(size=(c, d))), 'lut_uncorr': unit(rng.normal(size=(c, d)))}
    grl = objectives.GRLObjective({'feature_dim': d}, c)
    bnn_soft = objectives.BNNeckObjective({}, c)
    bnn_cos = objectives.BNNeckObjective(
        {'label_smoothing': 0.1, 'triplet_margin': 0.3, 'triplet_metric': 'cosine'}, c)
    bn_out = {'feature': rng.normal(size=(b, d)).astype(np.float32),
              'logits': rng.normal(size=(b, c)).astype(np.float32)}

    def grl_step(outputs, batch, state):
      floats = {k: v for k, v in outputs.items() if k != 'pair_order'}
      f = lambda fl: grl.loss({**fl, 'pair_order': outputs['pair_order']}, batch, state)
      (loss, metrics), grads = jax.value_and_grad(f, has_aux=True)(floats)
      return loss, metrics, grads, grl.update_state(outputs, batch, state)

    def bn_step(outputs, batch):
      res = {}
      for name, obj in (('soft', bnn_soft), ('cos', bnn_cos)):
        (loss, _), g = jax.value_and_grad(
            lambda o: obj.loss(o, batch, {}), has_aux=True)(outputs)
        res[name] = (loss, g)
      return res

    single = jax.jit(grl_step)(outputs, batch, state), jax.jit(bn_step)(bn_out, batch)
    shard = lambda x: jax.device_put(x, NamedSharding(mesh, P('data')))
    repl = lambda x: jax.device_put(x, NamedSharding(mesh, P()))
    s_out = jax.tree.map(shard, outputs)
    s_batch = jax.tree.map(shard, batch)
    s_state = jax.tree.map(repl, state)
    assert len(s_out['frame_corr'].sharding.device_set) == 8
    assert s_out['video_corr'].addressable_shards[0].data.shape == (2, d)
    sharded = (jax.jit(grl_step)(s_out, s_batch, s_state),
               jax.jit(bn_step)(jax.tree.map(shard, bn_out), s_batch))
    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                         single, sharded)
    leaves = jax.tree.leaves(single)
    print(json.dumps({'max_diff': max(jax.tree.leaves(diffs)),
                      'finite': bool(all(np.all(np.isfinite(np.asarray(x))) for x in leaves)),
                      'loss': float(single[0][0])}))
''')


def test_objectives_under_8_device_sharded_batch_match_single_device():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
             PYTHONPATH=_REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  proc = subprocess.run([sys.executable, '-c', _SHARDED_SCRIPT], env=env, cwd=_REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result['finite']
  assert np.isfinite(result['loss']) and result['loss'] > 0
  assert result['max_diff'] < 1e-5, result


def test_loss_fields_are_read_strictly_against_one_dataclass():
  import dataclasses
  from grl_jax.errors import ConfigError
  assert objectives.GRLObjective.defaults() == {
      f.name: f.default for f in dataclasses.fields(objectives.GRLLoss)}
  assert objectives.BNNeckObjective.defaults()['triplet_feature'] == 'feature'
  with pytest.raises(ConfigError, match=r'config.loss.oim_scaler is not a field of the GRL '
                                        r"objective; known: .*'oim_scalar'"):
    objectives.GRLObjective({'oim_scaler': 10.0}, 3)
  with pytest.raises(ConfigError, match=r"config.loss.triplet_margin='hard'"):
    objectives.BNNeckObjective({'triplet_margin': 'hard'}, 3)
  with pytest.raises(ConfigError, match=r'config.loss.label_smoothing=1.0'):
    objectives.BNNeckObjective({'label_smoothing': 1.0}, 3)
  assert objectives.BNNeckObjective({'triplet_margin': '0.3'}, 3).triplet_margin == 0.3
