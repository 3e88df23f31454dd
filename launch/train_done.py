r"""Has a workdir's training run finished? The test the launchers' resume loops repeat on.

    python launch/train_done.py --workdir=gs://bucket/workdirs/mars_grl

Exit status 0: the latest complete checkpoint is at the run's last step (config.train.num_steps,
or optim.epochs x steps per epoch, from the config stored in the checkpoint; grl_jax/schema.py
total_steps); 3: not yet (no checkpoint, or an earlier step); 1: the workdir cannot be read
(one line `train_done: error: ...`). It reads the checkpoint's meta JSON only, never arrays.
"""
from __future__ import annotations

import argparse
import sys

NOT_DONE = 3


def status(workdir: str) -> tuple[bool, str]:
  """(done, a one-line description) for `workdir` (local or remote)."""
  from grl_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from grl_jax import cli  # pylint: disable=g-import-not-at-top
  from grl_jax import schema  # pylint: disable=g-import-not-at-top
  if not checkpoint.exists(workdir):
    return False, f'{workdir}: no checkpoint yet'
  meta = checkpoint.read_meta(workdir)
  step, epoch = int(meta['step']), float(meta.get('epoch') or 0.0)
  if epoch <= 0:
    return False, f'{workdir}: latest checkpoint is step {step}, before any full step'
  steps_per_epoch = max(int(round(step / epoch)), 1)
  total = schema.total_steps(cli.locked_config(meta['config']), steps_per_epoch)
  return step >= total, f'{workdir}: step {step} of {total}'


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True)
  ns = parser.parse_args(argv)
  from grl_jax.errors import GrlJaxError  # pylint: disable=g-import-not-at-top
  try:
    done, line = status(ns.workdir)
  except (GrlJaxError, OSError) as e:
    print(f'train_done: error: {" ".join(str(e).split())}', file=sys.stderr)
    return 1
  print(f'train_done: {"done" if done else "not done"}: {line}')
  return 0 if done else NOT_DONE


if __name__ == '__main__':
  sys.exit(main())
