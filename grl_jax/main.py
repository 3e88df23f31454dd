r"""Command line: train, evaluate or extract features with one config.

    python -m grl_jax.main --config=configs/mars.py:model=grl,accel=gpu --workdir=DIR \
        [--mode=train|eval|extract] [--step=N] [--split=query|gallery|train] [--output=F.npz] \
        [--config.optim.lr=2e-3 --config.data.root=/data/MARS ...]

* train (default): trains, resuming from the latest checkpoint in DIR, evaluates every
  `config.train.eval_every_epochs` epochs and at the end.
* eval: restores the latest (or --step) checkpoint of DIR without the optimiser and prints the
  CMC / mAP table. --config may be omitted: the config stored in the checkpoint is used.
* extract: writes per-tracklet descriptors of --split to DIR/features_<split>_step<N>.npz.

Multi-process (multi-host TPU / GPU clusters): set GRL_JAX_DISTRIBUTED=1 (or pass
--distributed) and `jax.distributed.initialize()` auto-detects TPU pods, Slurm and Open MPI; or
set GRL_JAX_COORDINATOR=host:port, GRL_JAX_NUM_PROCESSES, GRL_JAX_PROCESS_ID for explicit
launches (launch/local_multiprocess.py).
"""
from __future__ import annotations

import os
import sys

# `configs/` lives at the repository root, next to the package: make `--config=configs/x.py`
# importable wherever the command is started from.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
  sys.path.insert(0, _REPO)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/mars.py:model=grl (see configs/).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Checkpoints, logs and outputs go here.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'extract'], 'What to do.')
_STEP = flags.DEFINE_integer('step', None, 'eval/extract: checkpoint step (default: latest).')
_SPLIT = flags.DEFINE_enum('split', 'query', ['query', 'gallery', 'train'], 'extract: split.')
_OUTPUT = flags.DEFINE_string('output', None, 'extract: output .npz path.')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False,
                                 'Call jax.distributed.initialize() (also GRL_JAX_DISTRIBUTED=1).')


def _init_distributed():
  import jax  # pylint: disable=g-import-not-at-top
  coordinator = os.environ.get('GRL_JAX_COORDINATOR')
  if coordinator:
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=int(os.environ['GRL_JAX_NUM_PROCESSES']),
        process_id=int(os.environ['GRL_JAX_PROCESS_ID']),
        initialization_timeout=int(os.environ.get('GRL_JAX_INIT_TIMEOUT', '300')))
  elif _DISTRIBUTED.value or os.environ.get('GRL_JAX_DISTRIBUTED') == '1':
    jax.distributed.initialize()


def _config_from_checkpoint(workdir: str):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from grl_jax import checkpoint  # pylint: disable=g-import-not-at-top
  meta = checkpoint.read_meta(workdir, _STEP.value)
  config = ml_collections.ConfigDict(meta['config'])
  config.lock()
  return config


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    # orbax and friends log every save at INFO; our progress goes to stdout. -v 0 shows them.
    logging.set_verbosity(logging.WARNING)
  from configs.base import ConfigError  # pylint: disable=g-import-not-at-top
  from grl_jax import train  # pylint: disable=g-import-not-at-top
  workdir = _WORKDIR.value
  known = (ConfigError, train.WorkdirError, train.NonFiniteLossError, FileNotFoundError)
  try:
    from data_pipeline.datasets import DatasetError  # pylint: disable=g-import-not-at-top
    known += (DatasetError,)
  except ImportError:
    pass
  try:
    if not workdir:
      raise train.WorkdirError('--workdir is required (checkpoints, logs and outputs go there)')
    # Before anything else: a workdir we cannot write is reported before any compute.
    workdir = train.prepare_workdir(workdir)
    _init_distributed()
    import jax  # pylint: disable=g-import-not-at-top
    config = _CONFIG.value
    if config is None:
      if _MODE.value == 'train':
        raise ConfigError('--config is required for training (e.g. --config=configs/demo.py)')
      config = _config_from_checkpoint(workdir)
    logging.info('process %d/%d, %d local / %d global devices (%s)', jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count(),
                 jax.devices()[0].platform)
    if _MODE.value == 'train':
      train.train_and_evaluate(config, workdir)
    elif _MODE.value == 'eval':
      train.evaluate(config, workdir, step=_STEP.value)
    else:
      train.extract(config, workdir, split=_SPLIT.value, step=_STEP.value, output=_OUTPUT.value)
  except known as e:
    print(f'grl_jax: error: {e}', file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
