"""Writes the checkpoint-compatibility fixture of the current format (tests/faults/test_compat.py).

    python -m tests.faults.make_fixture            # from the repository root

It trains the toy model of tests/helpers.py for 4 steps on its in-memory data (evaluated and
saved at step 4) and writes
    tests/faults/fixtures/toy_v<FORMAT_VERSION>/checkpoints/4/   the orbax step directory
    tests/faults/fixtures/toy_v<FORMAT_VERSION>/expected.npz     every TrainState leaf as saved,
                                                        and the gallery's descriptors
(about 110 KB). FORMAT_VERSION is grl_jax/checkpoint.py's.

When to run it: only after bumping FORMAT_VERSION (a change of what a step directory holds:
items, TrainState fields, meta keys that readers rely on). It then ADDS the new version's
fixture beside the old ones, which stay: they are the checkpoints users already have, and
test_compat.py keeps restoring every one of them. It refuses to overwrite an existing version;
remove an old fixture only when that format is deliberately no longer read (and say so).
Changing the toy model or objective also changes what the fixture restores into: leave them
as they are, or regenerate with --force and explain why in the commit.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from grl_jax import checkpoint
from grl_jax import offline
from grl_jax import sharding
from grl_jax.trainer import loop
from grl_jax.trainer import setup as setup_lib
from tests import helpers as c

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures')
STEP = 4
RUN = dict(train__num_steps=STEP, train__eval_every_epochs=1)   # 4 steps per epoch
GALLERY = 'gallery_features'


def fixture_dir(version: int) -> str:
  return os.path.join(FIXTURES, f'toy_v{version}')


def versions() -> list[int]:
  """The format versions that have a fixture, ascending."""
  names = os.listdir(FIXTURES) if os.path.isdir(FIXTURES) else []
  return sorted(int(n[len('toy_v'):]) for n in names
                if n.startswith('toy_v') and n[len('toy_v'):].isdigit())


def restore_state(config, workdir: str, step: int = STEP):
  """The TrainState of `workdir`'s `step`, restored into the current code's state structure."""
  setup = setup_lib.build(config, num_classes=8, steps_per_epoch=4)
  abstract = checkpoint.abstract_tree(setup.abstract_state, sharding.replicated(setup.mesh))
  ckpt = checkpoint.Checkpointer(workdir, read_only=True)
  try:
    return ckpt.restore(abstract, step)
  finally:
    ckpt.close()


def state_leaves(state) -> dict[str, np.ndarray]:
  """{key path: numpy array} of every TrainState leaf (PRNG keys as their key data)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    out[jax.tree_util.keystr(path)] = np.asarray(jax.device_get(leaf))
  return out


def make(target: str) -> None:
  with tempfile.TemporaryDirectory() as tmp:
    config = c.toy_config(tmp, **RUN)
    work = os.path.join(tmp, 'w')
    loop.train_and_evaluate(config, work, data=c.toy_data(config))
    assert checkpoint.complete_steps(os.path.join(work, 'checkpoints')) == [STEP]
    state, _ = restore_state(config, work)
    features = gallery_features(config, work)
    os.makedirs(target)
    shutil.copytree(os.path.join(work, 'checkpoints'), os.path.join(target, 'checkpoints'))
  np.savez(os.path.join(target, 'expected.npz'), **state_leaves(state),
           **{GALLERY: features})


def gallery_features(config, workdir: str) -> np.ndarray:
  """float[16, D]: the toy gallery's descriptors by `--mode=extract` from `workdir`'s checkpoint."""
  path = offline.extract(config, workdir, split='gallery', data=c.toy_data(config),
                         output=os.path.join(workdir, 'gallery.npz'))
  with np.load(path, allow_pickle=False) as z:
    return z['features']


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--force', action='store_true',
                      help='overwrite the fixture of the current version (see the docstring)')
  args = parser.parse_args()
  target = fixture_dir(checkpoint.FORMAT_VERSION)
  if os.path.exists(target):
    if not args.force:
      raise SystemExit(f'{target} exists: fixtures of a released format are never rewritten '
                       '(bump FORMAT_VERSION for a new format, or pass --force)')
    shutil.rmtree(target)
  make(target)
  print(f'wrote {target}')


if __name__ == '__main__':
  main()
