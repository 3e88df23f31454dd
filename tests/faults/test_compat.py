"""Checkpoint compatibility: the committed fixtures (tests/faults/fixtures/toy_v<N>/, written by
tests/faults/make_fixture.py with the format of their day) keep restoring with today's code,
for evaluation, extraction and resumed training; a checkpoint of a newer format than the code
knows is refused with one line naming the directory and both versions; one that records no
version is read as version 1.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from grl_jax import checkpoint
from grl_jax import cli
from grl_jax import offline
from grl_jax.errors import CheckpointError
from tests import helpers as c
from tests.faults import helpers as fh
from tests.faults import make_fixture as mf

pytestmark = pytest.mark.faults

VERSIONS = mf.versions()


def test_a_fixture_of_the_current_format_is_committed():
  assert checkpoint.FORMAT_VERSION in VERSIONS, (
      f'no fixture for FORMAT_VERSION={checkpoint.FORMAT_VERSION}: run python -m '
      'tests.faults.make_fixture')


def _copy(version: int, dst) -> str:
  shutil.copytree(mf.fixture_dir(version), dst)
  return str(dst)


def _meta_file(work: str) -> str:
  return os.path.join(work, 'checkpoints', str(mf.STEP), 'meta', 'metadata')


@pytest.mark.parametrize('version', VERSIONS)
def test_fixture_restores_evaluates_and_resumes(version, tmp_path, capsys):
  work = _copy(version, tmp_path / 'w')
  expected = dict(np.load(os.path.join(work, 'expected.npz'), allow_pickle=False))
  meta = checkpoint.read_meta(work)
  assert checkpoint.format_version(meta) == version and meta['step'] == mf.STEP
  config = c.toy_config(tmp_path, **mf.RUN)

  # Every TrainState leaf comes back, bit for bit, into today's state structure.
  state, _ = mf.restore_state(config, work)
  got = mf.state_leaves(state)
  assert got.keys() == {k for k in expected if k != mf.GALLERY}
  for key, value in got.items():
    np.testing.assert_array_equal(value, expected[key], err_msg=key)

  # Evaluation: the metrics stored with the checkpoint, and the same gallery descriptors.
  metrics = offline.evaluate(config, work, data=c.toy_data(config))
  for name, value in meta['eval'].items():
    assert metrics[name] == pytest.approx(value, abs=1e-6), name
  np.testing.assert_allclose(mf.gallery_features(config, work), expected[mf.GALLERY],
                             rtol=1e-5, atol=1e-6)

  # Resumed training continues from the fixture's step.
  capsys.readouterr()
  out, _ = fh.toy_run(tmp_path, work, train__num_steps=2 * mf.STEP)
  assert f'resumed from {work}/checkpoints/{mf.STEP}' in capsys.readouterr().out
  assert out['step'] == 2 * mf.STEP and out['final'] is not None
  assert all(np.isfinite(r['loss']) for r in fh.records(work) if r['kind'] == 'train')


def _set_version(work: str, value):
  path = _meta_file(work)
  with open(path) as f:
    meta = json.load(f)
  if value is None:
    meta.pop('format_version', None)
  else:
    meta['format_version'] = value
  with open(path, 'w') as f:
    json.dump(meta, f)


def test_newer_format_is_refused_in_one_line(tmp_path, capsys):
  work = _copy(checkpoint.FORMAT_VERSION, tmp_path / 'w')
  newer = checkpoint.FORMAT_VERSION + 1
  _set_version(work, newer)
  where = f'{work}/checkpoints/{mf.STEP}'
  expected = (f'checkpoint {where} has format version {newer}, newer than this code\'s '
              f'format version {checkpoint.FORMAT_VERSION}')
  config = c.toy_config(tmp_path, **mf.RUN)
  for read in (lambda: checkpoint.read_meta(work),
               lambda: checkpoint.restore_variables(work),
               lambda: mf.restore_state(config, work),
               lambda: fh.toy_run(tmp_path, work, train__num_steps=2 * mf.STEP)):
    with pytest.raises(CheckpointError) as e:
      read()
    assert str(e.value).startswith(expected), str(e.value)
  # What `--mode=eval` shows: one line, before any array is read.
  with pytest.raises(SystemExit):
    cli.run_or_fail('grl_jax', lambda: offline.evaluate(config, work, data=c.toy_data(config)))
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(f'grl_jax: error: {expected}'), err
  assert not os.path.exists(os.path.join(work, f'eval_step{mf.STEP}.json'))


def test_unversioned_is_version_1_and_garbage_is_refused(tmp_path):
  work = _copy(min(VERSIONS), tmp_path / 'w')
  _set_version(work, None)
  assert checkpoint.format_version(checkpoint.read_meta(work)) == 1
  variables, _ = checkpoint.restore_variables(work)
  assert variables['params']
  _set_version(work, 'two')
  with pytest.raises(CheckpointError, match="format_version='two' is not a positive integer"):
    checkpoint.restore_variables(work)


def test_saves_record_the_current_format(tmp_path):
  out, _ = fh.toy_run(tmp_path, tmp_path / 'w', train__num_steps=4)
  assert out['step'] == 4
  assert checkpoint.read_meta(str(tmp_path / 'w'))['format_version'] == checkpoint.FORMAT_VERSION
  checkpoint.write_variables(str(tmp_path / 'v'), {'params': {'w': np.ones(2)}}, {}, step=1)
  assert checkpoint.read_meta(str(tmp_path / 'v'))['format_version'] == checkpoint.FORMAT_VERSION
