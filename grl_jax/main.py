r"""Command line: train, evaluate or extract features with one config.

    python -m grl_jax.main --config=configs/mars.py:model=grl,accel=gpu --workdir=DIR \
        [--mode=train|eval|extract|search] [--step=N] [--split=query|gallery|train] \
        [--input=FOLDER|F.csv] [--output=F.npz|P.png] [--query=FOLDER --gallery=F.npz --top_k=10] \
        [--config.optim.lr=2e-3 --config.data.root=/data/MARS ...]

* train (default): trains, resuming from the latest checkpoint in DIR, evaluates every
  `config.train.eval_every_epochs` epochs and at the end (grl_jax/trainer/loop.py).
* eval: restores the latest (or --step) checkpoint of DIR without the optimiser and prints the
  CMC / mAP table. --config may be omitted: the config stored in the checkpoint is used.
* extract: writes per-tracklet descriptors of --split to DIR/features_<split>_step<N>.npz;
  with --input=FOLDER (one sub-folder of images per tracklet, any depth) or --input=F.csv (the
  custom format), the descriptors of those tracklets instead, no dataset needed
  (grl_jax/offline.py extract_folders, grl_jax/folders.py).
* search: --query=FOLDER (a tracklet folder, or a folder of them) against --gallery=F.npz (an
  `extract --input` output): prints the --top_k nearest gallery tracklets with distances and
  draws them (--output=P.png; grl_jax/search.py).

A user mistake (bad flag or config value, missing dataset or checkpoint, unwritable workdir)
ends the command with one line `grl_jax: error: ...` and exit status 1, before anything is
compiled.

Multi-process (multi-host TPU / GPU clusters): set GRL_JAX_DISTRIBUTED=1 (or pass
--distributed) and `jax.distributed.initialize()` auto-detects TPU pods, Slurm and Open MPI; or
set GRL_JAX_COORDINATOR=host:port, GRL_JAX_NUM_PROCESSES, GRL_JAX_PROCESS_ID for explicit
launches (launch/local_multiprocess.py). Timeouts bound every wait on the other processes: one
that dies ends the others within GRL_JAX_HEARTBEAT_TIMEOUT seconds (grl_jax/distributed.py).
"""
from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from grl_jax import cli
from grl_jax import schema

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/mars.py:model=grl (see configs/).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Checkpoints, logs and outputs go here.')
_MODE = flags.DEFINE_enum('mode', 'train', list(schema.MODES), 'What to do.')
_STEP = flags.DEFINE_integer('step', None, 'eval/extract: checkpoint step (default: latest).')
_SPLIT = flags.DEFINE_enum('split', 'query', list(schema.SPLITS), 'extract: split.')
_OUTPUT = flags.DEFINE_string('output', None, 'extract: output .npz path; search: picture .png.')
_INPUT = flags.DEFINE_string('input', None, 'extract: a folder of tracklet folders of images, '
                             'or a custom-format CSV, instead of --split.')
_QUERY = flags.DEFINE_string('query', None, 'search: a tracklet folder, or a folder of them.')
_GALLERY = flags.DEFINE_string('gallery', None, 'search: an .npz of `--mode=extract --input`.')
_TOP_K = flags.DEFINE_integer('top_k', 10, 'search: gallery tracklets listed per query.')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False,
                                 'Call jax.distributed.initialize() (also GRL_JAX_DISTRIBUTED=1).')


def _init_distributed():
  from grl_jax import distributed  # pylint: disable=g-import-not-at-top
  distributed.initialize(force=_DISTRIBUTED.value)


def run(mode: str, workdir: str) -> None:
  from grl_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from grl_jax import offline  # pylint: disable=g-import-not-at-top
  from grl_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from grl_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from grl_jax.trainer import loop  # pylint: disable=g-import-not-at-top
  if not workdir:
    raise ConfigError('--workdir is required (checkpoints, logs and outputs go there)')
  workdir = workdir_lib.prepare(workdir)   # the only place the workdir is created
  _init_distributed()
  try:
    config = _CONFIG.value
    if config is not None:
      config.keys()  # ml_collections defers a config file's load failure to its first use
  except OSError as e:
    raise ConfigError(f'--config: {" ".join(str(e.__cause__ or e).split())}') from e
  if config is None:
    if mode == 'train':
      raise ConfigError('--config is required for training (e.g. --config=configs/demo.py)')
    config = cli.locked_config(checkpoint.read_meta(workdir, _STEP.value)['config'])
  if mode == 'train':
    loop.train_and_evaluate(config, workdir)
  elif mode == 'eval':
    offline.evaluate(config, workdir, step=_STEP.value)
  elif mode == 'search':
    from grl_jax import search  # pylint: disable=g-import-not-at-top
    search.search(config, workdir, query=_QUERY.value, gallery=_GALLERY.value,
                  top_k=_TOP_K.value, step=_STEP.value, output=_OUTPUT.value)
  elif _INPUT.value:
    offline.extract_folders(config, workdir, input=_INPUT.value, step=_STEP.value,
                            output=_OUTPUT.value)
  else:
    offline.extract(config, workdir, split=_SPLIT.value, step=_STEP.value,
                    output=_OUTPUT.value)


def main(argv):
  if len(argv) > 1:
    cli.fail('grl_jax', f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    # orbax and friends log every save at INFO; our progress goes to stdout. -v 0 shows them.
    logging.set_verbosity(logging.WARNING)
  from grl_jax import distributed  # pylint: disable=g-import-not-at-top
  cli.run_or_fail('grl_jax', lambda: distributed.run_guarded(
      'grl_jax', lambda: run(_MODE.value, _WORKDIR.value), workdir=_WORKDIR.value or ''))
  _exit_now()


def _exit_now() -> None:
  """Ends a successful run without the interpreter's teardown.

  Everything is written and closed by now; what remains is the final garbage collection of the
  JAX / TensorFlow objects, which took 30-55 s after a demo run (a thread dump showed only
  "Garbage-collecting"). The exit handlers still run (jax.distributed's shutdown barrier among
  them, so multi-process runs still end together), then the streams are flushed.
  """
  import atexit  # pylint: disable=g-import-not-at-top
  atexit._run_exitfuncs()  # pylint: disable=protected-access
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(0)  # pylint: disable=protected-access


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  app.run(main, flags_parser=lambda argv: cli.parse_flags('grl_jax', argv))
