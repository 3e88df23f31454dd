"""Shared pieces of the fault suite: the tiny demo command, a child process whose output is read
while it runs, metrics.jsonl comparisons, toy runs in-process, image datasets on disk, and a
size-limited directory.

The tiny demo sizes are tests/test_main.py's (GRL, 32 x 16 frames, 4-frame clips, ResNet width
4, batch 4), so the suite shares its compiled programs through the JAX compilation cache.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Iterator, Optional

import numpy as np
import pytest

from tests import helpers as c

# ------------------------------------------------------------------------------------------------
# The real command line on the tiny demo

DEMO_TINY = ('--config.data.height=32', '--config.data.width=16',
             '--config.data.synthetic.height=32', '--config.data.synthetic.width=16',
             '--config.data.seq_len=4', '--config.model.resnet_width=4',
             '--config.train.global_batch_size=4', '--config.train.log_every_steps=1',
             '--config.eval.batch_size=8', '--config.evals.ranked_list.queries=2')


def demo_command(workdir, *extra: str, steps: int = 6) -> list[str]:
  """`python -m grl_jax.main` on the tiny demo (6 train / 4 test ids, generated in the run)."""
  return [sys.executable, '-u', '-m', 'grl_jax.main',
          f'--config=configs/demo.py:ids=6,test_ids=4,steps={steps}', *DEMO_TINY, *extra,
          f'--workdir={workdir}']


class Child:
  """A child process whose stdout + stderr lines are collected by a thread as they come, so
  the test can wait for a line or a file while the child runs and kill it at any moment."""

  def __init__(self, args: list[str], env: Optional[dict] = None):
    self.proc = subprocess.Popen(args, cwd=c.REPO, env=env or c.subprocess_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    self.t0 = time.time()
    self.lines: list[str] = []
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.proc.stdout:
      self.lines.append(line)

  def text(self) -> str:
    return ''.join(self.lines)

  def wait_for(self, cond: Callable[[], bool], timeout: float, what: str,
               poll: float = 0.005) -> None:
    """Polls `cond` until true; fails the test if the child exits or `timeout` passes."""
    deadline = time.time() + timeout
    while not cond():
      if self.proc.poll() is not None:
        self._reader.join(5)
        if cond():
          return
        pytest.fail(f'child exited ({self.proc.returncode}) before {what}:\n{self.text()}')
      if time.time() > deadline:
        self.kill()
        pytest.fail(f'timed out waiting for {what}:\n{self.text()}')
      time.sleep(poll)

  def wait_line(self, pattern: str, timeout: float = 300) -> re.Match:
    found = []

    def cond():
      for line in list(self.lines):
        m = re.search(pattern, line)
        if m:
          found.append(m)
          return True
      return False
    self.wait_for(cond, timeout, f'a line matching {pattern!r}')
    return found[0]

  def kill(self, sig: int = signal.SIGKILL) -> None:
    if self.proc.poll() is None:
      self.proc.send_signal(sig)

  def finish(self, timeout: float = 300) -> tuple[int, str]:
    """Waits for the exit; (return code, all output)."""
    try:
      self.proc.wait(timeout)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()
      pytest.fail(f'child still running after {timeout}s:\n{self.text()}')
    self._reader.join(10)
    return self.proc.returncode, self.text()


def run_to_end(args: list[str], timeout: float = 400) -> str:
  """Runs a child to completion; its output (the test fails on a non-zero exit)."""
  rc, out = Child(args).finish(timeout)
  assert rc == 0, out
  return out


# ------------------------------------------------------------------------------------------------
# metrics.jsonl

TIMING = ('time', 'steps_per_sec', 'clips_per_sec')


def records(workdir) -> list[dict]:
  """metrics.jsonl records without the wall-clock fields (those differ between any two runs)."""
  out = []
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      if line.strip():
        out.append({k: v for k, v in json.loads(line).items() if k not in TIMING})
  return out


def last(recs: list[dict], kind: str) -> dict:
  found = [r for r in recs if r['kind'] == kind]
  assert found, f'no {kind} record in {recs}'
  return found[-1]


def by_step(recs: list[dict], kind: str) -> dict[int, list[dict]]:
  out: dict[int, list[dict]] = {}
  for r in recs:
    if r['kind'] == kind:
      out.setdefault(r['step'], []).append(r)
  return out


# ------------------------------------------------------------------------------------------------
# The toy model in-process (tests/helpers.py)


def toy_run(root, workdir, data=None, **overrides):
  """(train_and_evaluate's result, config) of a toy run; `data` defaults to in-memory data."""
  from grl_jax.trainer import loop  # pylint: disable=g-import-not-at-top
  config = c.toy_config(root, **overrides)
  out = loop.train_and_evaluate(config, str(workdir),
                                data=data if data is not None else c.toy_data(config))
  return out, config


def variables(workdir, step: Optional[int] = None) -> dict[str, np.ndarray]:
  """{'params/...' | 'batch_stats/...': array} of a checkpoint (latest by default)."""
  from grl_jax import checkpoint  # pylint: disable=g-import-not-at-top
  v, _ = checkpoint.restore_variables(str(workdir), step)
  return {**{f'params/{k}': x for k, x in c.flat_params(v['params']).items()},
          **{f'batch_stats/{k}': x for k, x in c.flat_params(v['batch_stats']).items()}}


def assert_same_variables(a: dict, b: dict):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ------------------------------------------------------------------------------------------------
# An image dataset on disk (the custom CSV format) for the real pipeline with the toy model


def write_image_dataset(root, *, ids: int = 8, train_per_id: int = 4, frames: int = 8,
                        seed: int = 0, noise: float = 40.0,
                        shift: float = 40.0) -> dict[str, list[str]]:
  """JPEG frames of c.TOY_H x c.TOY_W in `root` plus `root/dataset.csv` (custom format).

  Each identity has a random top / bottom colour pair; each tracklet shifts it by a random
  brightness of scale `shift` (a camera), each frame adds Gaussian noise of `noise` grey levels,
  so the toy model is far from perfect and metrics can move. Splits: `train_per_id` train
  tracklets per identity; one query (camera 0) and two gallery tracklets (cameras 1, 2).
  Returns {split: [frame paths]}.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  colours = rng.uniform(40, 215, (ids, 2, 3))
  rows = ['path,pid,camid,tracklet,split']
  paths: dict[str, list[str]] = {'train': [], 'query': [], 'gallery': []}
  layout = [('train', j, j % 2) for j in range(train_per_id)]
  layout += [('query', 0, 0), ('gallery', 1, 1), ('gallery', 2, 2)]
  h = c.TOY_H // 2
  for pid in range(ids):
    for split, j, cam in layout:
      tracklet = f'{split}_{pid}_{j}'
      base = colours[pid] + rng.normal(0, shift)
      for f in range(frames):
        img = np.concatenate([np.broadcast_to(base[0], (h, c.TOY_W, 3)),
                              np.broadcast_to(base[1], (c.TOY_H - h, c.TOY_W, 3))])
        img = np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)
        rel = f'{split}/{pid:04d}/{tracklet}/{f:03d}.jpg'
        os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
        Image.fromarray(img).save(os.path.join(root, rel), quality=95)
        rows.append(f'{rel},{pid},{cam},{tracklet},{split}')
        paths[split].append(os.path.join(str(root), rel))
  with open(os.path.join(root, 'dataset.csv'), 'w') as f:
    f.write('\n'.join(rows) + '\n')
  return paths


def corrupt(path: str, kind: str) -> None:
  """Damages one frame file: 'truncated' (first half kept), 'empty' (0 bytes), 'not_image'."""
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    if kind == 'truncated':
      f.write(data[:len(data) // 2])
    elif kind == 'not_image':
      f.write(b'<html>this is not an image</html>\n' * 4)
    elif kind != 'empty':
      raise ValueError(kind)


# ------------------------------------------------------------------------------------------------
# A size-limited directory


@contextlib.contextmanager
def tmpfs(path, size_kib: int) -> Iterator[Optional[str]]:
  """Mounts a tmpfs of `size_kib` at `path` (root only); yields None where mounting fails."""
  os.makedirs(path, exist_ok=True)
  mount = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size_kib}k', 'tmpfs', str(path)],
                         capture_output=True, text=True, check=False)
  if mount.returncode != 0:
    yield None
    return
  try:
    yield str(path)
  finally:
    subprocess.run(['umount', '-l', str(path)], capture_output=True, check=False)


def fill(directory: str, leave_bytes: int) -> str:
  """Writes `directory/filler` until at most `leave_bytes` are free there; returns its path."""
  filler = os.path.join(directory, 'filler')
  with open(filler, 'ab') as f:
    while True:
      st = os.statvfs(directory)
      free = st.f_bavail * st.f_frsize
      if free <= leave_bytes:
        break
      try:
        f.write(b'\0' * min(free - leave_bytes, 1 << 20))
        f.flush()
      except OSError:
        break
  return filler
