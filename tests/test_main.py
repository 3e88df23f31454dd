"""The command line, end to end in subprocesses: errors before compute, train -> eval -> extract."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import numpy as np

from tests import helpers as c


def _main(*args, timeout=600):
  proc = subprocess.run([sys.executable, '-m', 'grl_jax.main', *args], cwd=c.REPO,
                        env=c.subprocess_env(), capture_output=True, text=True, timeout=timeout)
  return proc.returncode, proc.stdout + proc.stderr


def test_bad_input_is_reported_before_any_compute(tmp_path):
  # A workdir that cannot be created (a file in the way).
  (tmp_path / 'file').write_text('x')
  rc, out = _main('--config=configs/demo.py', f'--workdir={tmp_path}/file/sub')
  assert rc == 1 and 'is not writable' in out and '[init]' not in out, out
  # A dataset that is not on disk: what is missing, what it must contain, how to fix it.
  rc, out = _main(f'--config=configs/mars.py:root={tmp_path}/MARS', f'--workdir={tmp_path}/w')
  assert rc == 1 and '[init]' not in out, out
  for expected in ('does not exist', 'bbox_train', 'info/', '--config.data.root'):
    assert expected in out, (expected, out)
  # A mistyped override.
  rc, out = _main('--config=configs/demo.py', '--config.optim.lr_multt=2',
                  f'--workdir={tmp_path}/w')
  assert rc != 0 and 'lr_multt' in out, out
  # An inconsistent value.
  rc, out = _main('--config=configs/demo.py', '--config.train.global_batch_size=7',
                  f'--workdir={tmp_path}/w')
  assert rc == 1 and 'even batch' in out, out


def test_demo_cli_preempt_resume_eval_extract(tmp_path):
  work = tmp_path / 'demo'
  tiny = ['--config.data.height=32', '--config.data.width=16',
          '--config.data.synthetic.height=32', '--config.data.synthetic.width=16',
          '--config.data.seq_len=4', '--config.model.resnet_width=4',
          '--config.train.global_batch_size=4', '--config.train.log_every_steps=1',
          '--config.eval.batch_size=8', '--config.eval.ranked_list_queries=2',
          f'--workdir={work}']
  # 1. Train "forever" on the real tf.data pipeline; SIGTERM after step 2 must save and exit 0.
  proc = subprocess.Popen([sys.executable, '-m', 'grl_jax.main',
                           '--config=configs/demo.py:ids=6,test_ids=4,steps=100000', *tiny],
                          cwd=c.REPO, env=c.subprocess_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  lines = []
  try:
    for line in proc.stdout:
      lines.append(line)
      if re.search(r'\[train\] step\s+2/', line):
        proc.send_signal(signal.SIGTERM)
        break
    rest, _ = proc.communicate(timeout=180)
  finally:
    if proc.poll() is None:
      proc.kill()
  out = ''.join(lines) + rest
  assert proc.returncode == 0, out
  assert 'untrained model' in out and (work / 'data' / 'info' / '.synthetic_complete').exists()
  stopped = int(re.search(r'stopped by SIGTERM at step (\d+)', out).group(1))
  assert os.listdir(work / 'checkpoints') == [str(stopped)]

  # 2. The same command with a finite length resumes from that checkpoint and finishes.
  final = stopped + 2
  rc, out = _main(f'--config=configs/demo.py:ids=6,test_ids=4,steps={final}', *tiny)
  assert rc == 0, out
  assert f'resumed from {work}/checkpoints/{stopped}' in out, out
  assert f'step {final}/{final}' in out and 'untrained model' not in out, out
  assert (work / f'ranked_list_step{final}.png').exists()
  records = [json.loads(x) for x in open(work / 'metrics.jsonl')]
  assert [r['step'] for r in records if r['kind'] == 'eval'] == [0, final]
  train_steps = [r['step'] for r in records if r['kind'] == 'train']
  assert train_steps == list(range(1, final + 1)), train_steps

  # 3. eval without --config: the config comes from the checkpoint.
  rc, out = _main('--mode=eval', f'--workdir={work}')
  assert rc == 0 and 'mAP' in out and f'step {final}' in out, out
  saved = json.load(open(work / f'eval_step{final}.json'))
  np.testing.assert_allclose(saved['mAP'], records[-1]['mAP'], rtol=1e-5)

  # 4. extract.
  rc, out = _main('--mode=extract', '--split=gallery', f'--workdir={work}',
                  f'--output={tmp_path}/g.npz')
  assert rc == 0, out
  npz = np.load(tmp_path / 'g.npz')
  assert npz['features'].shape[1] == 3 * 32 * 4        # GRL descriptor: 3 x D, D = 32 x width
  assert len(npz['pids']) == len(npz['features']) == len(npz['first_frame'])


def test_two_processes_train_like_one_host_of_a_cluster(tmp_path):
  """launch/local_multiprocess.py: 2 jax.distributed processes x 1 CPU device each."""
  work = tmp_path / 'mp'
  proc = subprocess.run(
      [sys.executable, 'launch/local_multiprocess.py', '--processes=2', '--timeout=300', '--',
       '--config=configs/demo.py:ids=6,test_ids=4,steps=3', '--config.data.height=32',
       '--config.data.width=16', '--config.data.synthetic.height=32',
       '--config.data.synthetic.width=16', '--config.data.seq_len=4',
       '--config.model.resnet_width=4', '--config.train.global_batch_size=4',
       '--config.train.log_every_steps=1', '--config.train.eval_at_start=false',
       '--config.eval.batch_size=8', f'--workdir={work}'],
      cwd=c.REPO, env=c.subprocess_env(), capture_output=True, text=True, timeout=400)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out
  assert "mesh {'data': 2} over 2 cpu device(s), 2 process(es)" in out, out
  # Only process 0 reports and writes logs; both take part in every step and checkpoint.
  assert '[p0] [train] step 3/3' in out and '[p1] [train]' not in out, out
  records = [json.loads(x) for x in open(work / 'metrics.jsonl')]
  assert [r['step'] for r in records if r['kind'] == 'train'] == [1, 2, 3]
  assert [r['step'] for r in records if r['kind'] == 'eval'] == [3]
  assert os.listdir(work / 'checkpoints') == ['3']
