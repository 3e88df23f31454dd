"""grl_jax.checkpoint: round trips, keep-latest-plus-best, partial saves, variables-only use."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from grl_jax import checkpoint
from grl_jax.state import TrainState
from grl_jax.errors import CheckpointError


def _state(step=0, scale=1.0):
  params = {'dense': {'kernel': scale * jnp.arange(6.0).reshape(2, 3), 'bias': jnp.ones(3)}}
  tx = optax.chain(optax.add_decayed_weights(1e-4), optax.trace(0.9, nesterov=True),
                   optax.scale_by_schedule(lambda s: -0.1))
  opt_state = tx.init(params)
  # Make the momentum buffer non-trivial.
  _, opt_state = tx.update(jax.tree.map(jnp.ones_like, params), opt_state, params)
  return TrainState(step=jnp.asarray(step, jnp.int32), params=params,
                    batch_stats={'bn': {'mean': jnp.full(3, 0.5 * scale)}},
                    opt_state=opt_state, objective_state={'lut': jnp.eye(2) * scale},
                    rng=jax.random.key(7))


def _abstract(state):
  return checkpoint.abstract_tree(state, checkpoint.replicated_sharding())


def _equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_train_state_round_trip_keeps_types_and_values(tmp_path):
  state = _state(step=3)
  ck = checkpoint.Checkpointer(str(tmp_path), keep=2)
  ck.save(state, meta={'config': {'lr_mult': (('^a', 1.0),)}, 'epoch': 0.5})
  ck.wait()
  restored, meta = ck.restore(_abstract(state))
  ck.close()
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  assert type(restored.opt_state[1]) is type(state.opt_state[1])  # optax TraceState
  _equal(restored, state)
  assert meta['step'] == 3 and meta['epoch'] == 0.5
  assert meta['config'] == {'lr_mult': [['^a', 1.0]]}
  assert sorted(os.listdir(tmp_path / 'checkpoints' / '3')) == sorted(
      ['_CHECKPOINT_METADATA', 'commit_success.txt', 'meta', 'train_state', 'variables'])


def test_keeps_latest_k_plus_best_by_metric(tmp_path):
  ck = checkpoint.Checkpointer(str(tmp_path), keep=2, best_metric='mAP')
  saves = [(10, None), (20, {'mAP': 0.7}), (30, None), (40, {'mAP': 0.4}), (50, None),
           (60, None)]
  for step, metrics in saves:
    ck.save(_state(step), meta={}, metrics=metrics)
  ck.wait()
  assert ck.all_steps() == [20, 50, 60]       # latest two + the best (step 20, mAP 0.7)
  assert ck.best_step() == 20 and ck.latest_step() == 60
  assert ck.metrics(20) == {'mAP': 0.7}
  ck.save(_state(70), meta={}, metrics={'mAP': 0.9})
  ck.save(_state(80), meta={}, metrics=None)
  ck.close()
  ck = checkpoint.Checkpointer(str(tmp_path), keep=2)
  assert ck.all_steps() == [70, 80] and ck.best_step() == 70
  ck.close()


def test_partial_saves_are_never_resumed_from(tmp_path):
  ck = checkpoint.Checkpointer(str(tmp_path), keep=3)
  ck.save(_state(5), meta={})
  ck.close()
  root = tmp_path / 'checkpoints'
  # A save killed while writing (orbax's temporary directory, never renamed) ...
  (root / '9.orbax-checkpoint-tmp-1700000000').mkdir()
  (root / '9.orbax-checkpoint-tmp-1700000000' / 'variables').mkdir()
  # ... and a step directory that was only partly copied (no commit marker).
  (root / '12' / 'variables').mkdir(parents=True)
  assert checkpoint.complete_steps(str(root)) == [5]
  ck = checkpoint.Checkpointer(str(tmp_path), keep=3)
  assert ck.latest_step() == 5 and ck.all_steps() == [5]
  restored, meta = ck.restore(_abstract(_state()))
  assert int(restored.step) == 5 and meta['step'] == 5
  # The incomplete step is set aside (not deleted), so step 12 can be saved again.
  assert (root / '12.incomplete-0').is_dir() and not (root / '12').exists()
  ck.save(_state(12), meta={})
  ck.close()
  assert checkpoint.complete_steps(str(root)) == [5, 12]
  variables, meta = checkpoint.restore_variables(str(tmp_path))
  assert meta['step'] == 12


def test_variables_only_checkpoints(tmp_path):
  state = _state(scale=2.0)
  variables = {'params': jax.device_get(state.params), 'batch_stats': state.batch_stats}
  path = checkpoint.write_variables(str(tmp_path / 'w'), variables, {'model': {'name': 'x'}},
                                    step=4, extra_meta={'source': 'unit test'})
  assert path.endswith(os.path.join('checkpoints', '4'))
  checkpoint.write_variables(str(tmp_path / 'w'), jax.tree.map(lambda x: x * 0, variables),
                             {'model': {'name': 'x'}}, step=9)
  # Workdir or checkpoints/ dir; latest by default, or a named step; no optimiser needed.
  for directory in (tmp_path / 'w', tmp_path / 'w' / 'checkpoints'):
    got, meta = checkpoint.restore_variables(str(directory), step=4)
    _equal(got, variables)
    assert meta == {'config': {'model': {'name': 'x'}}, 'step': 4, 'source': 'unit test',
                    'format_version': checkpoint.FORMAT_VERSION}
  got, meta = checkpoint.restore_variables(str(tmp_path / 'w'))
  assert meta['step'] == 9
  np.testing.assert_array_equal(got['params']['dense']['kernel'], 0.0)
  assert checkpoint.read_meta(str(tmp_path / 'w'), 4)['source'] == 'unit test'
  with pytest.raises(CheckpointError, match='step 5 not in'):
    checkpoint.restore_variables(str(tmp_path / 'w'), step=5)
  with pytest.raises(CheckpointError, match='no checkpoint directory'):
    checkpoint.restore_variables(str(tmp_path / 'nothing'))
  # A training checkpoint also restores as variables only.
  ck = checkpoint.Checkpointer(str(tmp_path / 't'))
  ck.save(_state(3, scale=3.0), meta={'config': {}})
  ck.close()
  got, meta = checkpoint.restore_variables(str(tmp_path / 't'))
  np.testing.assert_array_equal(got['batch_stats']['bn']['mean'], 1.5)
  assert not ck.has_train_state(99)


def test_to_jsonable_handles_numpy_and_non_finite():
  out = checkpoint.to_jsonable({'a': np.float32(1.5), 'b': np.arange(2), 'c': (1, 'x'),
                                'd': float('nan'), 'e': np.int64(3)})
  assert out == {'a': 1.5, 'b': [0, 1], 'c': [1, 'x'], 'd': None, 'e': 3}
