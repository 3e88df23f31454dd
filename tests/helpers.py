"""Test helpers: the JAX compilation cache, a toy model / objective (registered as 'toy') and
an in-memory data source for the trainer tests, so they never depend on the real models or
datasets, and a child-process environment for multi-device tests.

The JAX compilation cache lives in <repo>/.jax_cache (git-ignored): a warm cache makes the suite
several times faster. The PRNG implementation is left at JAX's default (threefry): switching to
'rbg' would speed up initialisation but change every random stream relative to a normal run.
"""
from __future__ import annotations

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_DIR = os.environ.get('GRL_JAX_TEST_CACHE', os.path.join(REPO, '.jax_cache'))

import jax  # noqa: E402

jax.config.update('jax_compilation_cache_dir', CACHE_DIR)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)

import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from configs import base as config_base  # noqa: E402
from data_pipeline.builder import Data  # noqa: E402
from data_pipeline.index import Dataset, TrackletIndex  # noqa: E402
from grl_jax import models  # noqa: E402

TOY_H, TOY_W, TOY_T = 16, 8, 2


def subprocess_env(num_devices: int | None = None) -> dict:
  """Environment for a child Python (run with cwd=REPO): same compile cache, N CPU devices."""
  env = dict(os.environ)
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  env['GRL_JAX_TEST_CACHE'] = CACHE_DIR
  env['JAX_COMPILATION_CACHE_DIR'] = CACHE_DIR
  env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  env['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
  env.pop('XLA_FLAGS', None)
  if num_devices:
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={num_devices}'
  return env


# Lines a child process may print around a one-line error (library start-up logging).
LOG_NOISE = ('oneDNN', 'absl::InitializeLog', 'GOOGLE_AUTH_TOKEN_FOR_TESTING')


def one_line_error_output(rc: int, out: str, prog: str = 'grl_jax') -> str:
  """Asserts a child's exit status 1 and output of exactly one `<prog>: error: ...` line (start-up
  logging aside) and no traceback; returns that line."""
  lines = [x for x in out.splitlines() if x.strip() and not any(n in x for n in LOG_NOISE)]
  assert rc == 1, out
  assert len(lines) == 1 and lines[0].startswith(f'{prog}: error: '), out
  assert 'Traceback' not in out, out
  return lines[0]


def one_line_error_raised(capsys, call, prog: str) -> tuple[str, str]:
  """Runs `call()` (a CLI entry point), asserts SystemExit(1) and exactly one stderr line
  `<prog>: error: ...`; returns (that line, what was printed on stdout)."""
  import pytest  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as exit_info:
    call()
  assert exit_info.value.code == 1
  captured = capsys.readouterr()
  err = captured.err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(f'{prog}: error: '), captured
  return err[0], captured.out

# ------------------------------------------------------------------------------------------------
# Toy model and objective (registered as 'toy')


class ToyModel(nn.Module):
  """Conv -> BN -> ReLU -> spatial/temporal mean -> embedding (descriptor) -> classifier."""
  num_classes: int
  width: int = 8
  feature_dim: int = 16

  @nn.compact
  def __call__(self, frames, train: bool = False):
    b, t, h, w, c = frames.shape
    x = frames.reshape(b * t, h, w, c)
    x = nn.Conv(self.width, (3, 3), strides=(2, 2), name='conv')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name='bn')(x)
    x = nn.relu(x).mean(axis=(1, 2)).reshape(b, t, -1).mean(axis=1)
    f = nn.Dense(self.feature_dim, name='embed')(x)
    logits = nn.Dense(self.num_classes, name='classifier')(f)
    return {'descriptor': f, 'feature': f, 'logits': logits}


class ToyObjective:
  """Cross-entropy + a pull towards per-identity running centres (non-trainable state, like
  GRL's OIM tables). `nan_at_step` > 0 makes the loss NaN from that step on (fault tests)."""

  def __init__(self, loss_cfg, num_classes: int):
    self.num_classes = num_classes
    self.feature_dim = int(loss_cfg.get('feature_dim', 16))
    self.center_weight = float(loss_cfg.get('center_weight', 0.1))
    self.nan_at_step = int(loss_cfg.get('nan_at_step', 0))

  def init_state(self):
    return {'centers': jnp.zeros((self.num_classes, self.feature_dim), jnp.float32),
            'updates': jnp.zeros((), jnp.int32)}

  def loss(self, outputs, batch, state):
    logp = jax.nn.log_softmax(outputs['logits'])
    ce = -jnp.take_along_axis(logp, batch['pid'][:, None], axis=1).mean()
    centers = jax.lax.stop_gradient(state['centers'][batch['pid']])
    center = jnp.sum(jnp.square(outputs['feature'] - centers), axis=1).mean()
    loss = ce + self.center_weight * center
    if self.nan_at_step > 0:
      # state['updates'] counts completed steps: step s (1-based) sees s - 1.
      loss = jnp.where(state['updates'] + 1 >= self.nan_at_step, jnp.nan, loss)
    return loss, {'ce': ce, 'center': center}

  def update_state(self, outputs, batch, state):
    f = outputs['feature']
    onehot = jax.nn.one_hot(batch['pid'], self.num_classes)
    counts = onehot.sum(0)
    mean = (onehot.T @ f) / jnp.maximum(counts, 1.0)[:, None]
    centers = jnp.where(counts[:, None] > 0, 0.5 * state['centers'] + 0.5 * mean,
                        state['centers'])
    return {'centers': centers, 'updates': state['updates'] + 1}


@models.register('toy')
def _toy_spec():
  return models.ModelSpec(
      build=lambda cfg, n: ToyModel(num_classes=n, width=int(cfg.get('width', 8)),
                                    feature_dim=int(cfg.get('feature_dim', 16))),
      objective=ToyObjective, descriptor_distance='euclidean')


# ------------------------------------------------------------------------------------------------
# Toy config and in-memory data


def toy_config(root: str, **overrides) -> ml_collections.ConfigDict:
  """A locked config for the toy model on in-memory data (root must exist)."""
  config = config_base.base_config()
  config.data.dataset = 'custom'
  config.data.root = str(root)
  config.data.height, config.data.width, config.data.seq_len = TOY_H, TOY_W, TOY_T
  config.model = ml_collections.ConfigDict({'name': 'toy', 'width': 8, 'feature_dim': 16})
  config.loss = ml_collections.ConfigDict({'feature_dim': 16, 'center_weight': 0.1,
                                           'nan_at_step': 0})
  config.optim.lr = 0.05
  config.optim.weight_decay = 5e-4
  config.optim.lr_mult = ((r'^classifier/', 2.0),)
  config.optim.decay_epochs = (2,)
  config.optim.epochs = 3
  config.train.global_batch_size = 8
  config.train.log_every_steps = 2
  config.train.checkpoint_every_steps = 4
  config.train.eval_every_epochs = 0
  config.train.keep_checkpoints = 2
  config.eval.batch_size = 8
  del config.evals['ranked_list']
  for key, value in overrides.items():
    section, field = key.split('__') if '__' in key else (None, key)
    target = config[section] if section else config
    with target.ignore_type():
      target[field] = value
  config.lock()
  return config


def _tracklets(num_ids: int, per_id: int, offset_pid: int, tag: str) -> TrackletIndex:
  paths, pids, cams = [], [], []
  for pid in range(num_ids):
    for j in range(per_id):
      paths.append([f'/toy/{tag}/{pid}_{j}_{f}.jpg' for f in range(4)])
      pids.append(pid + offset_pid)
      cams.append(j % 2)
  return TrackletIndex.from_lists(paths, pids, cams)


def _frames(pid: np.ndarray, rng: np.random.Generator, t: int = TOY_T) -> np.ndarray:
  """uint8[B, T, H, W, 3]: an identity-specific colour layout plus noise (learnable)."""
  ids = np.asarray(pid)
  base = np.stack([(ids * 37) % 256, (ids * 91) % 256, (ids * 53) % 256], -1).astype(np.float32)
  top = base[:, None, None, None, :]
  bottom = 255.0 - top
  img = np.concatenate([np.broadcast_to(top, (len(ids), t, TOY_H // 2, TOY_W, 3)),
                        np.broadcast_to(bottom, (len(ids), t, TOY_H // 2, TOY_W, 3))], axis=2)
  img = img + rng.normal(0, 25.0, img.shape)
  return np.clip(img, 0, 255).astype(np.uint8)


def toy_data(config, num_ids: int = 8, per_id: int = 4):
  """A `data_pipeline.builder.Data` whose batches are pure functions of (seed, step)."""
  train_index = _tracklets(num_ids, per_id, 0, 'train')
  query = _tracklets(num_ids, 1, 1, 'query')
  gallery = _tracklets(num_ids, 2, 1, 'gallery')
  gallery = TrackletIndex(gallery.frame_paths, gallery.starts, gallery.lengths, gallery.pids,
                          (gallery.camids + 1) % 2)
  dataset = Dataset('toy', train_index, query, gallery, protocol='torchreid')
  batch = int(config.train.global_batch_size)
  steps_per_epoch = (num_ids * per_id) // batch
  seed = int(config.seed)

  def train_batches(start_step):
    step = start_step
    while True:
      rng = np.random.default_rng([seed, step])
      rows = rng.choice(len(train_index), batch, replace=False).astype(np.int32)
      pid = train_index.pids[rows]
      yield {'frames': _frames(pid, rng), 'pid': pid, 'camid': train_index.camids[rows],
             'tracklet': rows}
      step += 1

  def eval_batches(index, test_sampling=None):
    del test_sampling  # one clip per tracklet here
    b = int(config.eval.batch_size)
    n = len(index)
    for s in range(0, n, b):
      rows = np.arange(s, s + b)
      valid = rows < n
      rows = np.where(valid, rows, -1).astype(np.int32)
      rng = np.random.default_rng([seed, 10**6 + s])
      pid = np.where(valid, index.pids[np.clip(rows, 0, n - 1)], 0)
      yield {'frames': _frames(pid, rng), 'tracklet': rows}

  return Data(dataset, steps_per_epoch, train_batches, eval_batches, batch)


def flat_params(params) -> dict[str, np.ndarray]:
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  return {'/'.join(k): np.asarray(v) for k, v in
          traverse_util.flatten_dict(jax.device_get(params)).items()}
