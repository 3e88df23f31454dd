"""Disk full during a checkpoint save (toy model, in-process).

Two ways to fill the disk, both on a 12-step run that saves at steps 4, 8 and 12 and keeps one
checkpoint (plus the best), so a save that deleted the previous step before its own was
complete would lose it:

  tmpfs    the workdir is a 1 MiB tmpfs (`mount -t tmpfs`, root only: CI runs as root) that a
           filler file fills to 48 KiB free when the loop asks for the step-8 save (a toy
           checkpoint takes about 140 KiB there);
  enospc   without root: every write orbax makes through etils.epath into step 8's directory
           raises OSError(ENOSPC), as a full disk would (the arrays, written by tensorstore,
           still land, but the step never gets its commit marker).

Either way: one line naming the workdir, the space problem and the last complete checkpoint
(on the tmpfs the first write to fail may be TensorBoard's or metrics.jsonl's rather than the
save's: the failed save itself takes the last free bytes); that one still restores to exactly the weights of an undisturbed run;
once space is back the same command resumes from it and ends exactly where the undisturbed run
ended.
"""
from __future__ import annotations

import errno
import os
import time

import pytest
from etils import epath

from grl_jax import checkpoint
from grl_jax.errors import CheckpointError
from grl_jax.trainer import loop
from tests import helpers as c
from tests.faults import helpers as fh

pytestmark = [
    pytest.mark.faults,
    # orbax's failed background writes leave un-awaited coroutines and unretrieved task errors
    # behind; what matters here is what the run reports and leaves on disk.
    pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning'),
    pytest.mark.filterwarnings('ignore:coroutine .* was never awaited:RuntimeWarning'),
]

RUN = dict(train__keep_checkpoints=1, train__eval_every_epochs=2)   # evals at 8, 12


@pytest.fixture(scope='module')
def undisturbed(tmp_path_factory):
  root = tmp_path_factory.mktemp('undisturbed')
  out, _ = fh.toy_run(root, root / 'w', **dict(RUN, train__keep_checkpoints=3))
  return {'final': out['final'], 'step4': fh.variables(root / 'w', 4),
          'end': fh.variables(root / 'w', 12)}


@pytest.fixture
def before_save_8(monkeypatch):
  """Registers an action run when the loop asks for the step-8 save, once step 4 is on disk."""
  actions = []
  real_save = checkpoint.Checkpointer.save

  def save(self, state, **kwargs):
    if int(state.step) == 8:
      deadline = time.time() + 60   # the step-4 save is asynchronous: let it land first
      while 4 not in checkpoint.complete_steps(self.directory) and time.time() < deadline:
        time.sleep(0.01)
      for action in actions:
        action()
    return real_save(self, state, **kwargs)
  monkeypatch.setattr(checkpoint.Checkpointer, 'save', save)
  return actions


def _fails_then_resumes(root, work: str, undisturbed, capsys, *expected: str):
  config = c.toy_config(root, **RUN)
  ckpts = os.path.join(work, 'checkpoints')
  with pytest.raises(CheckpointError) as caught:
    loop.train_and_evaluate(config, work, data=c.toy_data(config))
  msg = str(caught.value)
  assert '\n' not in msg, msg
  for part in (f'no space left on the device of {work} while ',
               f'the last complete checkpoint is {ckpts}/4', 'rerun the same command', *expected):
    assert part in msg, (part, msg)
  # The step before is complete and holds exactly the undisturbed run's weights.
  assert checkpoint.complete_steps(ckpts) == [4]
  fh.assert_same_variables(fh.variables(work), undisturbed['step4'])
  capsys.readouterr()


def test_tmpfs_fills_during_a_save(tmp_path, undisturbed, capsys, before_save_8):
  with fh.tmpfs(tmp_path / 'disk', 1024) as disk:
    if disk is None:
      pytest.skip('mounting a tmpfs needs root; test_enospc_during_a_save covers the rest')
    work = os.path.join(disk, 'w')
    before_save_8.append(lambda: fh.fill(disk, 48 << 10))
    _fails_then_resumes(tmp_path, work, undisturbed, capsys)
    before_save_8.clear()
    os.remove(os.path.join(disk, 'filler'))   # space is back
    config = c.toy_config(tmp_path, **RUN)
    out = loop.train_and_evaluate(config, work, data=c.toy_data(config))
    assert f'resumed from {work}/checkpoints/4' in capsys.readouterr().out
    assert out['final'] == undisturbed['final'] and out['step'] == 12
    fh.assert_same_variables(fh.variables(work), undisturbed['end'])


def test_enospc_during_a_save(tmp_path, undisturbed, capsys, monkeypatch, before_save_8):
  work = str(tmp_path / 'w')
  real_write = epath.Path('/').__class__.write_text
  full = []

  def write_text(self, data, *args, **kwargs):
    if full and f'{os.sep}checkpoints{os.sep}8' in str(self):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
    return real_write(self, data, *args, **kwargs)

  monkeypatch.setattr(epath.Path('/').__class__, 'write_text', write_text)
  before_save_8.append(lambda: full.append(True))
  _fails_then_resumes(tmp_path, work, undisturbed, capsys, 'while saving checkpoint step 8')
  before_save_8.clear()
  full.clear()   # space is back
  config = c.toy_config(tmp_path, **RUN)
  out = loop.train_and_evaluate(config, work, data=c.toy_data(config))
  assert f'resumed from {work}/checkpoints/4' in capsys.readouterr().out
  assert out['final'] == undisturbed['final'] and out['step'] == 12
  fh.assert_same_variables(fh.variables(work), undisturbed['end'])
