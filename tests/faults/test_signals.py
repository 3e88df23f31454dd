"""SIGTERM during an evaluation and during a checkpoint save; a NaN loss at a given step.

The toy model of tests/helpers.py on in-memory data: 12 steps, saves every 4 steps, keeps 2.
* SIGTERM (tests/faults/toy_child.py in a child process) while the step-4 evaluation runs, and
  while the step-4 save is still being written: the evaluation / save finishes, the next step
  saves a checkpoint, the process exits 0; every checkpoint on disk is complete, and resuming
  in this process ends with exactly the weights and metrics of an undisturbed run.
* NaN from a given step (ToyObjective's `nan_at_step`): the run stops with one line naming that
  step and the last good checkpoint, which is intact (complete, the undisturbed run's weights),
  and a rerun without the fault resumes from it to the undisturbed run's end.
"""
from __future__ import annotations

import json
import os
import signal
import sys

import pytest

from grl_jax import checkpoint
from grl_jax import cli
from grl_jax.trainer import loop
from tests import helpers as c
from tests.faults import helpers as fh
from tests.faults import toy_child

pytestmark = pytest.mark.faults


@pytest.fixture(scope='module')
def undisturbed(tmp_path_factory):
  root = tmp_path_factory.mktemp('undisturbed')
  out, _ = fh.toy_run(root, root / 'w', train__keep_checkpoints=12, **toy_child.RUN)
  steps = checkpoint.complete_steps(str(root / 'w' / 'checkpoints'))
  assert steps == [4, 8, 12]
  return {'final': out['final'], **{s: fh.variables(root / 'w', s) for s in steps}}


def _child(work, root, mode):
  return fh.Child([sys.executable, '-m', 'tests.faults.toy_child', str(work), str(root), mode])


def _resume_matches(root, work, undisturbed, capsys, stopped_at):
  out, _ = fh.toy_run(root, work, **toy_child.RUN)
  assert f'resumed from {work}/checkpoints/{stopped_at}' in capsys.readouterr().out
  assert out['step'] == 12 and out['final'] == undisturbed['final']
  fh.assert_same_variables(fh.variables(work), undisturbed[12])


def _stopped_cleanly(child) -> int:
  rc, out = child.finish(180)
  assert rc == 0, out
  assert 'received SIGTERM' in out, out
  result = json.loads(out.split('RESULT ', 1)[1].splitlines()[0])
  assert result['stopped'] == 'SIGTERM' and result['final'] is None, out
  return result['step']


def test_sigterm_during_an_evaluation(tmp_path, undisturbed, capsys):
  work = tmp_path / 'w'
  child = _child(work, tmp_path, 'slow_eval')
  child.wait_line(r'EVAL-BATCH', 180)   # the evaluation after step 4
  child.kill(signal.SIGTERM)
  stopped = _stopped_cleanly(child)
  # The evaluation finished and was logged and saved with its metrics; the next step saved.
  assert stopped == 5
  assert checkpoint.complete_steps(str(work / 'checkpoints')) == [4, 5]
  evals = [r for r in fh.records(work) if r['kind'] == 'eval']
  assert [r['step'] for r in evals] == [4] and 'reid/mAP' in evals[0]
  assert checkpoint.read_meta(str(work), 4)['eval']['reid/mAP'] == evals[0]['reid/mAP']
  fh.assert_same_variables(fh.variables(work, 4), undisturbed[4])
  _resume_matches(tmp_path, work, undisturbed, capsys, 5)


def test_sigterm_during_a_save(tmp_path, undisturbed, capsys):
  work = tmp_path / 'w'
  ckpts = work / 'checkpoints'
  child = _child(work, tmp_path, 'slow_save')
  child.wait_line(r'SAVING 4', 180)
  child.wait_for(lambda: ckpts.is_dir() and any(
      n.startswith('4.orbax-checkpoint-tmp') for n in os.listdir(ckpts)), 30, 'the save')
  child.kill(signal.SIGTERM)
  in_flight = any(n.startswith('4.orbax-checkpoint-tmp') for n in os.listdir(ckpts))
  assert in_flight   # the signal came while step 4 was being written (1.5 s late)
  stopped = _stopped_cleanly(child)
  assert stopped == 5
  assert checkpoint.complete_steps(str(ckpts)) == [4, 5]
  assert not [n for n in os.listdir(ckpts) if not n.isdigit()]   # nothing half-written left
  fh.assert_same_variables(fh.variables(work, 4), undisturbed[4])
  _resume_matches(tmp_path, work, undisturbed, capsys, 5)


@pytest.mark.parametrize('nan_at, last_good', [
    (5, 4),      # the step right after a save, while that save may still be in flight
    (9, 8),      # right after an evaluation and its save
    (1, None),   # before any checkpoint
])
def test_nan_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, undisturbed, capsys,
                                                               nan_at, last_good):
  work = tmp_path / 'w'
  config = c.toy_config(tmp_path, loss__nan_at_step=nan_at, **toy_child.RUN)
  with pytest.raises(SystemExit):
    cli.run_or_fail('grl_jax', lambda: loop.train_and_evaluate(
        config, str(work), data=c.toy_data(config)))
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('grl_jax: error: loss is nan at step '), err
  assert f' at step {nan_at} ' in err[0], err
  ckpts = str(work / 'checkpoints')
  if last_good is None:
    assert 'Last good checkpoint: none' in err[0], err
    assert not checkpoint.complete_steps(ckpts)
  else:
    assert f'Last good checkpoint: {ckpts}/{last_good}.' in err[0], err
    assert checkpoint.complete_steps(ckpts) == [s for s in (4, 8) if s <= last_good]
    fh.assert_same_variables(fh.variables(work), undisturbed[last_good])
  # Without the fault, the same workdir resumes and ends where the undisturbed run ended.
  out, _ = fh.toy_run(tmp_path, work, **toy_child.RUN)
  assert out['final'] == undisturbed['final']
  fh.assert_same_variables(fh.variables(work), undisturbed[12])
