"""The trainer on a toy model and in-memory data: logs, checkpoints, resume, faults, eval."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from grl_jax import checkpoint
from grl_jax import reporting
from grl_jax import offline
from grl_jax.errors import NonFiniteLossError
from grl_jax.evaluators import features
from grl_jax.trainer import loop
from grl_jax.trainer import setup as setup_lib
from tests import helpers as c


def _train(root, workdir, **overrides):
  config = c.toy_config(root, **overrides)
  return loop.train_and_evaluate(config, str(workdir), data=c.toy_data(config)), config


def test_train_logs_checkpoints_and_evaluates(tmp_path, capsys):
  out, config = _train(tmp_path, tmp_path / 'w', train__eval_at_start=True,
                       train__eval_every_epochs=2)
  assert out['step'] == 12 and out['stopped'] is None
  assert out['initial'] is not None and 0.0 <= out['final']['reid/mAP'] <= 1.0
  text = capsys.readouterr().out
  assert 'step 12/12' in text and 'mAP' in text and 'untrained -> trained' in text
  records = reporting.read_jsonl(str(tmp_path / 'w' / 'metrics.jsonl'))
  train_steps = [r['step'] for r in records if r['kind'] == 'train']
  eval_steps = [r['step'] for r in records if r['kind'] == 'eval']
  assert train_steps == [1, 2, 4, 6, 8, 10, 12] and eval_steps == [0, 8, 12]
  lr = {r['step']: r['lr'] for r in records if r['kind'] == 'train'}
  # decay_epochs=(2,) with 4 steps/epoch: updates 1..8 use 0.05, updates 9..12 use 0.005.
  assert lr[8] == pytest.approx(0.05) and lr[10] == pytest.approx(0.005)
  assert all(np.isfinite(r['loss']) for r in records if r['kind'] == 'train')
  assert os.listdir(tmp_path / 'w' / 'tensorboard')
  # Checkpoints at 4 (periodic, then dropped), 8 (eval), 12 (eval, final); keep 2 + best.
  ck = checkpoint.Checkpointer(str(tmp_path / 'w'), read_only=True)
  assert ck.all_steps() == [8, 12]
  meta = checkpoint.read_meta(str(tmp_path / 'w'))
  assert meta['step'] == 12 and meta['config']['model']['name'] == 'toy'
  assert meta['num_classes'] == 8 and 'reid/mAP' in meta['eval']
  assert json.load(open(tmp_path / 'w' / 'config.json'))['optim']['lr'] == 0.05


def test_resume_continues_the_identical_run(tmp_path):
  straight, _ = _train(tmp_path, tmp_path / 'a', optim__epochs=2)
  # Same config, but the first run stops after 4 of 8 steps (its own num_steps), then a second
  # run with the full length resumes from the step-4 checkpoint.
  _train(tmp_path, tmp_path / 'b', train__num_steps=4, optim__epochs=2)
  resumed, config = _train(tmp_path, tmp_path / 'b', optim__epochs=2)
  assert straight['step'] == resumed['step'] == 8
  a, _ = checkpoint.restore_variables(str(tmp_path / 'a'), step=8)
  b, _ = checkpoint.restore_variables(str(tmp_path / 'b'), step=8)
  fa, fb = c.flat_params(a['params']), c.flat_params(b['params'])
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_allclose(fa[k], fb[k], rtol=1e-6, atol=1e-7, err_msg=k)
  for k in ('bn/mean', 'bn/var'):
    np.testing.assert_allclose(c.flat_params(a['batch_stats'])[k],
                               c.flat_params(b['batch_stats'])[k], rtol=1e-6, atol=1e-7)


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
  with pytest.raises(NonFiniteLossError, match=r'at step 6 .*Last good checkpoint: .*/4'):
    _train(tmp_path, tmp_path / 'w', loss__nan_at_step=6)
  ck = checkpoint.Checkpointer(str(tmp_path / 'w'), read_only=True)
  assert ck.all_steps() == [4]
  variables, _ = checkpoint.restore_variables(str(tmp_path / 'w'))
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(variables))


def test_warm_start_copies_matching_tensors_under_prefix(tmp_path):
  config = c.toy_config(tmp_path)
  setup = setup_lib.build(config, num_classes=8, steps_per_epoch=4)
  donor = jax.device_get(setup.init_state(123).params)
  fresh = setup.init_state(0)
  # A donor holding only the conv layer's tensors at its root (like a converted backbone).
  checkpoint.write_variables(str(tmp_path / 'donor'), {'params': donor['conv']}, config)

  def warm(prefix):
    cfg = c.toy_config(tmp_path)
    cfg.unlock()
    cfg.init.checkpoint, cfg.init.prefix = str(tmp_path / 'donor'), prefix
    return setup_lib.warm_start(fresh, cfg, setup.mesh)

  with pytest.raises(Exception, match='no tensor path matches'):
    warm('')
  with pytest.raises(Exception, match='shapes differ'):
    warm('embed')   # embed/kernel exists but has another shape
  state = warm('conv')
  np.testing.assert_array_equal(state.params['conv']['kernel'], donor['conv']['kernel'])
  np.testing.assert_array_equal(state.params['embed']['kernel'], fresh.params['embed']['kernel'])


def test_eval_and_extract_restore_without_optimizer(tmp_path, capsys):
  out, config = _train(tmp_path, tmp_path / 'w', train__num_steps=4)
  data = c.toy_data(config)
  results = offline.evaluate(config, str(tmp_path / 'w'), data=data)
  assert 'reid/mAP' in results and 'step 4' in capsys.readouterr().out
  assert os.path.exists(tmp_path / 'w' / 'eval_step4.json')
  path = offline.extract(config, str(tmp_path / 'w'), split='gallery', data=data)
  npz = np.load(path)
  assert npz['features'].shape == (16, 16) and np.isfinite(npz['features']).all()
  np.testing.assert_array_equal(npz['pids'], data.dataset.gallery.pids)
  np.testing.assert_array_equal(npz['tracklet'], np.arange(16))
  # Tracklet features are the mean over the tracklet's clips (one clip each here): the same
  # descriptors as the query features of an identical tracklet set.
  setup, variables, _ = offline._restore(config, str(tmp_path / 'w'), None, data)
  feats = features.TestFeatures(setup, variables, data)
  gf = feats.get(config.data.test_sampling, feats.gallery_rows['torchreid'])
  np.testing.assert_allclose(gf, npz['features'], rtol=1e-5, atol=1e-6)


_SIGTERM_CHILD = textwrap.dedent('''
    import sys, time
    from tests import helpers as c
    from grl_jax.trainer import loop

    config = c.toy_config(sys.argv[1], train__num_steps=100000, train__log_every_steps=1,
                          train__checkpoint_every_steps=100000)
    data = c.toy_data(config)
    inner = data.train_batches
    def slow(start):
      for b in inner(start):
        time.sleep(0.02)
        yield b
    data.train_batches = slow
    out = loop.train_and_evaluate(config, sys.argv[1], data=data)
    print('STOPPED', out['stopped'], out['step'], flush=True)
''')


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
  proc = subprocess.Popen([sys.executable, '-c', _SIGTERM_CHILD, str(tmp_path)],
                          cwd=c.REPO, env=c.subprocess_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  lines = []
  deadline = time.time() + 120
  try:
    for line in proc.stdout:
      lines.append(line)
      m = re.search(r'\[train\] step\s+(\d+)/', line)
      if (m and int(m.group(1)) >= 5) or time.time() > deadline:
        break
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  text = ''.join(lines) + rest
  assert proc.returncode == 0, text
  assert 'received SIGTERM' in text and 'STOPPED SIGTERM' in text, text
  stopped_at = int(text.split('STOPPED SIGTERM')[1].split()[0])
  assert 5 <= stopped_at < 100000
  assert checkpoint.complete_steps(str(tmp_path / 'checkpoints')) == [stopped_at]
