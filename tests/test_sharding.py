"""Data parallelism: the same step on 8 simulated devices and on 1 device gives the same result."""
from __future__ import annotations

import subprocess
import sys

import jax
import numpy as np
import pytest

from grl_jax import sharding
from grl_jax.trainer import setup as setup_lib
from grl_jax.trainer import step as step_lib
from tests import helpers as c


def one_step(root: str, out: str):
  """Two training steps and one eval step of the toy model; everything they produce -> .npz."""
  config = c.toy_config(root, train__global_batch_size=16, eval__batch_size=16)
  data = c.toy_data(config)
  setup = setup_lib.build(config, num_classes=8, steps_per_epoch=data.steps_per_epoch)
  state = setup.init_state(0)
  batches = data.train_batches(0)
  for _ in range(2):
    batch = sharding.to_global(next(batches), setup.mesh)
    assert batch['frames'].sharding.spec == sharding.data_sharding(setup.mesh).spec
    state, metrics = setup.train_step(state, batch)
  desc, rows = setup.eval_step(state.variables, batch['frames'], batch['tracklet'])
  flat = {'param/' + k: v for k, v in c.flat_params(state.params).items()}
  flat.update({'bs/' + k: v for k, v in c.flat_params(state.batch_stats).items()})
  flat.update({'obj/' + k: np.asarray(v) for k, v in state.objective_state.items()})
  flat.update({'metric/' + k: np.asarray(v) for k, v in metrics.items()})
  flat['descriptor'] = np.asarray(desc)
  flat['rows'] = np.asarray(rows)
  flat['devices'] = np.asarray(len(setup.mesh.devices.flat))
  np.savez(out, **flat)


def test_eight_devices_match_one_device(tmp_path):
  code = ('import sys; from tests.test_sharding import one_step; '
          'one_step(sys.argv[1], sys.argv[2])')
  proc = subprocess.run([sys.executable, '-c', code, str(tmp_path), str(tmp_path / 'eight.npz')],
                        cwd=c.REPO, env=c.subprocess_env(num_devices=8), capture_output=True,
                        text=True, timeout=240)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert jax.device_count() == 1
  one_step(str(tmp_path), str(tmp_path / 'one.npz'))
  eight, one = np.load(tmp_path / 'eight.npz'), np.load(tmp_path / 'one.npz')
  assert int(eight['devices']) == 8 and int(one['devices']) == 1
  assert sorted(eight.files) == sorted(one.files)
  for key in sorted(set(one.files) - {'devices'}):
    np.testing.assert_allclose(eight[key], one[key], rtol=2e-5, atol=2e-6, err_msg=key)
  # The steps really moved the parameters and the BN statistics (global over the batch).
  assert np.isfinite(one['metric/loss']) and np.abs(one['bs/bn/mean']).sum() > 0


def test_mesh_is_auto_and_batches_shard_on_data(tmp_path):
  mesh = sharding.make_mesh(-1)
  assert mesh.axis_names == ('data',)
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  batch = sharding.to_global({'x': np.arange(6).reshape(3, 2)}, mesh)
  np.testing.assert_array_equal(np.asarray(batch['x']), np.arange(6).reshape(3, 2))
  with pytest.raises(ValueError):
    sharding.make_mesh(jax.device_count() + 1)


def test_normalize_frames_uses_imagenet_statistics():
  frames = np.zeros((1, 1, 1, 2, 3), np.uint8)
  frames[..., 1, :] = 255
  x = np.asarray(step_lib.normalize_frames(frames))
  mean = np.array([0.485, 0.456, 0.406])
  std = np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(x[0, 0, 0, 0], -mean / std, rtol=1e-5)
  np.testing.assert_allclose(x[0, 0, 0, 1], (1 - mean) / std, rtol=1e-5)
