"""Multi-host faults (grl_jax/distributed.py): when one process of a 2-process run dies or hangs,
the other exits non-zero within a bounded time with a clear message instead of hanging, and a
rerun resumes from the last complete checkpoint.

The runs are launch/local_multiprocess.py with `--module=tests.test_multihost_faults`: this
module run as a program trains the toy model of tests/helpers.py on its in-memory data (each
process feeding its contiguous half of every batch, as data_pipeline/builder.py does), through
`distributed.initialize` and `distributed.run_guarded` as grl_jax/main.py does; each batch
comes `SLOW` s late so that a signal lands mid-training. `--peer_grace` leaves the survivor
to end by itself (no launcher kills it), and the heartbeat timeout is shortened to HEARTBEAT s.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests import helpers as c

HEARTBEAT = 5           # GRL_JAX_HEARTBEAT_TIMEOUT for these runs (s)
BOUND = HEARTBEAT + 20  # a survivor must be gone this long after its peer died or froze (s)
SLOW = 0.3              # extra seconds per training batch
# The toy run: 12 steps (4 per epoch x 3 epochs), checkpoints every 4 steps.
# What a survivor prints: our line (a collective saw the peer's socket close) or JAX's (the
# coordination service saw the heartbeats stop).
CLEAR = (r'lost contact with the others .*another process died or was preempted'
         r'|another task died')


def _child(workdir: str) -> None:
  """The toy training run of one process (the program this module is as __main__)."""
  from grl_jax import distributed  # pylint: disable=g-import-not-at-top
  distributed.initialize()
  import jax  # pylint: disable=g-import-not-at-top
  from data_pipeline.builder import Data  # pylint: disable=g-import-not-at-top
  from grl_jax.trainer import loop  # pylint: disable=g-import-not-at-top
  config = c.toy_config(os.path.dirname(workdir), train__log_every_steps=1,
                        train__checkpoint_every_steps=4)
  full = c.toy_data(config)
  pi, pc = jax.process_index(), jax.process_count()

  def mine(batch):
    n = len(batch['tracklet']) // pc
    return {k: v[pi * n:(pi + 1) * n] for k, v in batch.items()}

  def train_batches(start):
    for batch in full.train_batches(start):
      time.sleep(SLOW)
      yield mine(batch)

  def eval_batches(index, test_sampling=None):
    return (mine(b) for b in full.eval_batches(index, test_sampling))

  data = Data(full.dataset, full.steps_per_epoch, train_batches, eval_batches,
              full.global_batch_size)
  distributed.run_guarded('toy', lambda: loop.train_and_evaluate(config, workdir, data=data),
                          workdir=workdir)


class _Run:
  """launch/local_multiprocess.py running two toy processes; lines are collected as they come."""

  def __init__(self, workdir, peer_grace: float = 0.0):
    env = c.subprocess_env()
    env['GRL_JAX_HEARTBEAT_TIMEOUT'] = str(HEARTBEAT)
    env['GRL_JAX_SHUTDOWN_TIMEOUT'] = '30'
    env['PYTHONUNBUFFERED'] = '1'
    self.proc = subprocess.Popen(
        [sys.executable, 'launch/local_multiprocess.py', '--processes=2', '--timeout=150',
         f'--peer_grace={peer_grace}', '--module=tests.test_multihost_faults', '--',
         str(workdir)],
        cwd=c.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    self.lines: list[tuple[float, str]] = []
    self.reader = threading.Thread(target=self._read, daemon=True)
    self.reader.start()

  def _read(self):
    for line in self.proc.stdout:
      self.lines.append((time.time(), line))

  def text(self) -> str:
    return ''.join(line for _, line in self.lines)

  def wait(self, pattern: str, timeout: float = 150) -> tuple[float, re.Match]:
    deadline = time.time() + timeout
    seen = 0
    while time.time() < deadline:
      for t, line in self.lines[seen:]:
        seen += 1
        m = re.search(pattern, line)
        if m:
          return t, m
      if self.proc.poll() is not None and seen == len(self.lines):
        self.reader.join(5)
        if seen == len(self.lines):
          break
      time.sleep(0.02)
    self.proc.kill()
    raise AssertionError(f'no line matching {pattern!r}:\n{self.text()}')

  def pid(self, i: int) -> int:
    return int(self.wait(rf'\[launch\] p{i} pid (\d+)', 30)[1].group(1))

  def finish(self, timeout: float = 150) -> int:
    try:
      self.proc.wait(timeout)
    finally:
      if self.proc.poll() is None:
        self.proc.kill()
    self.reader.join(5)
    return self.proc.returncode


def _survivor_exit(run: _Run, survivor: int, t_fault: float) -> tuple[int, float]:
  t, m = run.wait(rf'\[launch\] p{survivor} exited with status (-?\d+)', BOUND + 30)
  return int(m.group(1)), t - t_fault


def _wait_saved(run: _Run, work, step: int) -> list[int]:
  """Waits until checkpoint `step` is complete (a save may still be committing)."""
  from grl_jax import checkpoint  # pylint: disable=g-import-not-at-top
  deadline = time.time() + 30
  while step not in (steps := checkpoint.complete_steps(str(work / 'checkpoints'))):
    assert time.time() < deadline, run.text()
    time.sleep(0.05)
  return steps


def test_a_dead_or_frozen_process_ends_the_other_and_the_rerun_resumes(tmp_path):
  """1. Process 1 is killed (SIGKILL) after step 6: process 0 exits by itself, non-zero, within
  BOUND, saying why. 2. The same command resumes from step 4, the last complete checkpoint;
  after step 8 is saved, process 0 (which hosts the coordination service) freezes (SIGSTOP):
  process 1 must not wait in the next collective forever."""
  from grl_jax import checkpoint  # pylint: disable=g-import-not-at-top
  work = tmp_path / 'w'
  run = _Run(work, peer_grace=BOUND + 10)
  victim = run.pid(1)
  run.wait(r'\[p0\] \[train\] step\s+6/')
  _wait_saved(run, work, 4)
  os.kill(victim, signal.SIGKILL)
  status, took = _survivor_exit(run, 0, time.time())
  rc = run.finish()
  out = run.text()
  assert status != 0 and rc != 0, out
  assert took < BOUND, f'survivor took {took:.1f}s to exit:\n{out}'
  assert re.search(rf'\[p0\] .*({CLEAR})', out), out
  assert '[launch] killing' not in out, out        # it ended by itself
  # Step 8 needs both processes: 4 stays the last good checkpoint.
  assert max(checkpoint.complete_steps(str(work / 'checkpoints'))) == 4, out

  rerun = _Run(work, peer_grace=BOUND + 10)
  frozen = rerun.pid(0)
  try:
    rerun.wait(rf'\[p0\] \[init\] resumed from {re.escape(str(work))}/checkpoints/4 ')
    rerun.wait(r'\[p0\] \[train\] step\s+5/')  # the step after the checkpoint, not step 1
    rerun.wait(r'\[p0\] \[train\] step\s+9/')
    _wait_saved(rerun, work, 8)
    os.kill(frozen, signal.SIGSTOP)
    status, took = _survivor_exit(rerun, 1, time.time())
  finally:
    try:
      os.kill(frozen, signal.SIGKILL)   # a stopped process never ends by itself
    except ProcessLookupError:
      pass
  rc = rerun.finish()
  out = rerun.text()
  assert status != 0 and rc != 0, out
  assert took < BOUND, f'process 1 took {took:.1f}s to exit:\n{out}'
  assert re.search(rf'\[p1\] .*({CLEAR})', out), out
  assert not re.search(r'\[p0\] \[train\] step\s+[1-4]/', out), out


def test_timeouts_come_from_one_table_and_bad_values_are_one_line(monkeypatch, tmp_path):
  from grl_jax import distributed  # pylint: disable=g-import-not-at-top
  from grl_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  for var, _ in distributed.TIMEOUTS.values():
    monkeypatch.delenv(var, raising=False)
  for var in ('GRL_JAX_COORDINATOR', 'GRL_JAX_DISTRIBUTED', 'GRL_JAX_NUM_PROCESSES',
              'GRL_JAX_PROCESS_ID'):
    monkeypatch.delenv(var, raising=False)
  assert distributed.initialize_args() is None            # one process: nothing to join
  defaults = {k: d for k, (_, d) in distributed.TIMEOUTS.items()}
  assert distributed.initialize_args(force=True) == dict(
      initialization_timeout=defaults['init'], heartbeat_timeout_seconds=defaults['heartbeat'],
      shutdown_timeout_seconds=defaults['shutdown'])
  monkeypatch.setenv('GRL_JAX_HEARTBEAT_TIMEOUT', '7')
  monkeypatch.setenv('GRL_JAX_COORDINATOR', '10.0.0.1:1234')
  monkeypatch.setenv('GRL_JAX_NUM_PROCESSES', '4')
  monkeypatch.setenv('GRL_JAX_PROCESS_ID', '3')
  args = distributed.initialize_args()
  assert (args['heartbeat_timeout_seconds'], args['coordinator_address'], args['num_processes'],
          args['process_id']) == (7, '10.0.0.1:1234', 4, 3)
  for var, value, expected in (('GRL_JAX_PROCESS_ID', '4', 'expected 0 .. GRL_JAX_NUM_PROC'),
                               ('GRL_JAX_COORDINATOR', 'host', 'expected host:port'),
                               ('GRL_JAX_HEARTBEAT_TIMEOUT', 'soon', 'expected an integer')):
    with monkeypatch.context() as m:
      m.setenv(var, value)
      with pytest.raises(ConfigError, match=expected):
        distributed.initialize_args()
  # Through the command line: one line, before anything is compiled.
  env = c.subprocess_env()
  env.update(GRL_JAX_DISTRIBUTED='1', GRL_JAX_HEARTBEAT_TIMEOUT='0')
  proc = subprocess.run([sys.executable, '-m', 'grl_jax.main', '--config=configs/demo.py',
                         f'--workdir={tmp_path / "w"}'], cwd=c.REPO, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1, proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      "grl_jax: error: environment variable GRL_JAX_HEARTBEAT_TIMEOUT='0': expected an "
      'integer >= 1 (seconds)'), proc.stderr


def test_a_lost_peer_error_becomes_one_line_and_an_immediate_exit(monkeypatch, capsys):
  import jax  # pylint: disable=g-import-not-at-top
  from grl_jax import distributed  # pylint: disable=g-import-not-at-top
  lost = jax.errors.JaxRuntimeError('UNKNOWN: Gloo AllGather failed: [pair.cc:538] Read error '
                                    '[127.0.0.1]:33955: Connection reset by peer')
  local = jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: out of memory allocating 4 GiB')
  assert not distributed.peer_lost(lost)                   # one process: never a lost peer
  monkeypatch.setattr(jax.distributed, 'is_initialized', lambda: True)
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  assert distributed.peer_lost(lost) and not distributed.peer_lost(local)
  try:
    raise ValueError('saving failed') from lost
  except ValueError as wrapped:
    assert distributed.peer_lost(wrapped)                  # found in the chain
  exits = []

  def fake_exit(status):
    exits.append(status)
    raise SystemExit(status)
  monkeypatch.setattr(os, '_exit', fake_exit)

  def boom():
    raise lost
  with pytest.raises(SystemExit):
    distributed.run_guarded('grl_jax', boom, workdir='gs://b/w')
  assert exits == [1]
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(
      'grl_jax: error: process 1 of 2 lost contact with the others (JaxRuntimeError: UNKNOWN: '
      'Gloo AllGather failed'), err
  assert err[0].endswith('resumes from the last complete checkpoint in gs://b/w/checkpoints')
  # Any other error keeps its type and traceback.
  with pytest.raises(jax.errors.JaxRuntimeError, match='out of memory'):
    distributed.run_guarded('grl_jax', lambda: (_ for _ in ()).throw(local))
  assert distributed.run_guarded('grl_jax', lambda: 7) == 7


if __name__ == '__main__':
  _child(sys.argv[1])
