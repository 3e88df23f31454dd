"""grl_jax.optim against hand-written PyTorch-semantics references (numpy)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base as config_base
from grl_jax import optim


def _params():
  return {'backbone': {'conv': {'kernel': jnp.array([[0.5, -1.0], [2.0, 0.25]])}},
          'gce': {'bias': jnp.array([0.1, -0.2, 0.3])},
          'head': {'kernel': jnp.array([1.0, -2.0]), 'scale': jnp.array([1.5])}}


def _grads(step):
  # Deterministic, step-dependent gradients.
  rng = np.random.default_rng(step)
  return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), _params())


def _cfg(**kw):
  c = config_base.base_config().optim
  c.lr_mult = ((r'^backbone/', 1.0), (r'^gce/', 1.0), (r'.*', 2.0))
  c.decay_epochs = (1, 2)
  c.decay_factor = 0.1
  for k, v in kw.items():
    c[k] = v
  return c


def _run(cfg, steps, steps_per_epoch=2):
  params = _params()
  tx, schedule = optim.make_optimizer(cfg, params, steps_per_epoch)
  state = tx.init(params)
  for s in range(steps):
    updates, state = tx.update(_grads(s), state, params)
    params = optax.apply_updates(params, updates)
  return jax.tree.map(np.asarray, params), schedule


def _mult(path):
  return 1.0 if path.startswith(('backbone/', 'gce/')) else 2.0


def _lr(step, spe, base=1e-3, decay=(1, 2), factor=0.1):
  epoch = step // spe
  return base * factor ** sum(epoch >= e for e in decay)


def test_sgd_nesterov_coupled_decay_groups_and_schedule_match_pytorch_semantics():
  cfg = _cfg(name='sgd', lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4)
  got, schedule = _run(cfg, steps=5)
  # torch.optim.SGD(nesterov=True): d = g + wd*w; buf = m*buf + d (buf = d at the first step,
  # identical since buf starts at 0); d = d + m*buf; w -= lr_group * d.
  flat = {'/'.join(str(k.key) for k in path): np.asarray(v, np.float64)
          for path, v in jax.tree_util.tree_flatten_with_path(_params())[0]}
  buf = {k: np.zeros_like(v) for k, v in flat.items()}
  for s in range(5):
    g = {'/'.join(str(k.key) for k in path): np.asarray(v, np.float64)
         for path, v in jax.tree_util.tree_flatten_with_path(_grads(s))[0]}
    for k in flat:
      d = g[k] + 5e-4 * flat[k]
      buf[k] = 0.9 * buf[k] + d
      d = d + 0.9 * buf[k]
      flat[k] = flat[k] - _mult(k) * _lr(s, 2) * d
  for path, v in jax.tree_util.tree_flatten_with_path(got)[0]:
    k = '/'.join(str(p.key) for p in path)
    np.testing.assert_allclose(v, flat[k], rtol=1e-5, atol=1e-7, err_msg=k)
  # The schedule: 1e-3 in epoch 0 (steps 0, 1), 1e-4 in epoch 1, 1e-5 from epoch 2.
  np.testing.assert_allclose([float(schedule(s)) for s in range(6)],
                             [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5], rtol=1e-6)


def test_adam_with_coupled_l2_matches_torch_adam():
  cfg = _cfg(name='adam', lr=1e-2, weight_decay=5e-2, b1=0.9, b2=0.999, eps=1e-8,
             decay_epochs=(), lr_mult=())
  got, _ = _run(cfg, steps=4)
  flat = {'/'.join(str(k.key) for k in path): np.asarray(v, np.float64)
          for path, v in jax.tree_util.tree_flatten_with_path(_params())[0]}
  m = {k: np.zeros_like(v) for k, v in flat.items()}
  v2 = {k: np.zeros_like(v) for k, v in flat.items()}
  for s in range(4):
    g = {'/'.join(str(k.key) for k in path): np.asarray(v, np.float64)
         for path, v in jax.tree_util.tree_flatten_with_path(_grads(s))[0]}
    t = s + 1
    for k in flat:
      d = g[k] + 5e-2 * flat[k]          # torch.optim.Adam(weight_decay=...): coupled L2
      m[k] = 0.9 * m[k] + 0.1 * d
      v2[k] = 0.999 * v2[k] + 0.001 * d * d
      mhat, vhat = m[k] / (1 - 0.9**t), v2[k] / (1 - 0.999**t)
      flat[k] = flat[k] - 1e-2 * mhat / (np.sqrt(vhat) + 1e-8)
  for path, v in jax.tree_util.tree_flatten_with_path(got)[0]:
    k = '/'.join(str(p.key) for p in path)
    np.testing.assert_allclose(v, flat[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_frozen_params_never_move_and_no_decay_skips_weight_decay():
  cfg = _cfg(name='sgd', lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.5,
             frozen=(r'^head/scale$',), no_decay=(r'^gce/',), decay_epochs=(), lr_mult=())
  params = _params()
  tx, _ = optim.make_optimizer(cfg, params, 1)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  # With zero gradients only the decay acts: -lr * wd * w, except for no_decay / frozen.
  np.testing.assert_allclose(updates['backbone']['conv']['kernel'],
                             -0.1 * 0.5 * params['backbone']['conv']['kernel'], rtol=1e-6)
  np.testing.assert_array_equal(updates['gce']['bias'], 0.0)
  np.testing.assert_array_equal(updates['head']['scale'], 0.0)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_array_equal(updates['head']['scale'], 0.0)


def test_group_labels_first_match_wins_and_unmatched_regex_is_an_error():
  labels, mults = optim.group_labels(_params(), ((r'conv', 1.0), (r'^backbone/', 3.0),
                                                 (r'.*', 2.0)))
  assert labels['backbone']['conv']['kernel'] == 'x1'
  assert labels['gce']['bias'] == 'x2' and labels['head']['kernel'] == 'x2'
  assert mults == {'x1': 1.0, 'x2': 2.0}
  with pytest.raises(ValueError, match='matches no parameter'):
    optim.group_labels(_params(), ((r'^trl/', 2.0),))


def test_warmup_is_linear_then_piecewise():
  cfg = _cfg(lr=1.0, warmup_epochs=1.0, decay_epochs=(2,), decay_factor=0.5)
  sched = optim.lr_schedule(cfg, steps_per_epoch=4)
  np.testing.assert_allclose([float(sched(s)) for s in range(10)],
                             [0.25, 0.5, 0.75, 1, 1, 1, 1, 1, 0.5, 0.5], rtol=1e-6)


def test_describe_groups_counts_parameters():
  cfg = _cfg()
  text = optim.describe_groups(_params(), cfg)
  assert 'x1: 2 tensors / 7 params' in text and 'x2: 2 tensors / 3 params' in text


def test_param_paths_joins_keys():
  paths = optim.param_paths(_params())
  assert paths['backbone']['conv']['kernel'] == 'backbone/conv/kernel'
