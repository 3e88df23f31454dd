"""Progress lines, TensorBoard event files and a JSON-lines metrics log (process 0 writes).

    <workdir>/metrics.jsonl      one JSON object per line: {"step", "kind": "train"|"eval", ...}
    <workdir>/tensorboard/       TensorBoard events: train/<loss terms>, train/lr,
                                 train/steps_per_sec, train/clips_per_sec, eval/mAP, eval/rank1..

A progress line looks like

    [train] step   120/600  20.0% | loss 3.2110 oim_frame 1.20 ... | lr 1.0e-03 | 2.31 steps/s
            36.9 clips/s | elapsed 52s ETA 3m28s

Time spent in evaluation and checkpointing is excluded from the throughput (`Chrono.pause`).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping, Optional

import numpy as np

from grl_jax import io


def fmt_duration(seconds: float) -> str:
  if not math.isfinite(seconds) or seconds < 0:
    return '?'
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  if h:
    return f'{h}h{m:02d}m'
  if m:
    return f'{m}m{s:02d}s'
  return f'{s}s'


class Chrono:
  """Steps/s and ETA over training time only (pauses for eval and checkpoints excluded)."""

  def __init__(self, start_step: int, total_steps: int):
    self.total_steps = total_steps
    self.start_step = start_step
    self._t0 = time.perf_counter()
    self._paused_total = 0.0
    self._pause_start: Optional[float] = None
    self._last_step = start_step
    self._last_time = self._t0
    self._last_paused = 0.0
    self._ticks = 0

  def pause(self):
    if self._pause_start is None:
      self._pause_start = time.perf_counter()

  def resume(self):
    if self._pause_start is not None:
      self._paused_total += time.perf_counter() - self._pause_start
      self._pause_start = None

  def elapsed(self) -> float:
    return time.perf_counter() - self._t0

  def tick(self, step: int) -> dict[str, float]:
    """Throughput since the previous tick and the ETA for the remaining steps."""
    now = time.perf_counter()
    busy = (now - self._last_time) - (self._paused_total - self._last_paused)
    steps = step - self._last_step
    rate = steps / busy if busy > 0 and steps > 0 else float('nan')
    self._last_step, self._last_time, self._last_paused = step, now, self._paused_total
    self._ticks += 1
    # The first interval includes compilation: no ETA from it.
    eta = ((self.total_steps - step) / rate if self._ticks > 1 and rate == rate and rate > 0
           else float('nan'))
    return {'steps_per_sec': rate, 'eta_sec': eta}


def _scalar(v: Any) -> Optional[float]:
  try:
    f = float(np.asarray(v))
  except (TypeError, ValueError):
    return None
  return f


class Reporter:
  """Writes metrics to stdout, TensorBoard and metrics.jsonl; a no-op writer off process 0."""

  def __init__(self, workdir: str, *, total_steps: int, is_main: bool = True,
               tensorboard: bool = True, stream=None):
    self.workdir = workdir
    self.total_steps = total_steps
    self.is_main = is_main
    self.stream = stream or sys.stdout
    self._tb = None
    self._jsonl = None
    if is_main:
      io.makedirs(workdir)
      self._jsonl = io.open_append(io.join(workdir, 'metrics.jsonl'))
      if tensorboard:
        os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
        import tensorflow as tf  # pylint: disable=g-import-not-at-top
        self._tf = tf
        self._tb = tf.summary.create_file_writer(io.join(workdir, 'tensorboard'))

  # -- output channels
  def print(self, msg: str):
    if self.is_main:
      print(msg, file=self.stream, flush=True)

  def write(self, step: int, kind: str, scalars: Mapping[str, Any]):
    """Appends `scalars` (non-scalar values skipped) to TensorBoard and metrics.jsonl."""
    if not self.is_main:
      return
    clean = {k: _scalar(v) for k, v in scalars.items()}
    clean = {k: v for k, v in clean.items() if v is not None}
    if self._jsonl is not None:
      record = {'step': int(step), 'kind': kind, 'time': time.time()}
      record.update({k: (v if math.isfinite(v) else None) for k, v in clean.items()})
      self._jsonl.write(json.dumps(record) + '\n')
      self._jsonl.flush()
    if self._tb is not None:
      with self._tb.as_default():
        for k, v in clean.items():
          if math.isfinite(v):
            self._tf.summary.scalar(f'{kind}/{k}', v, step=int(step))
      self._tb.flush()

  # -- formatted events
  def train_progress(self, step: int, metrics: Mapping[str, float], lr: float,
                     timing: Mapping[str, float], clips_per_step: int, elapsed: float):
    rate = timing.get('steps_per_sec', float('nan'))
    scalars = dict(metrics)
    scalars.update(lr=lr, steps_per_sec=rate, clips_per_sec=rate * clips_per_step)
    self.write(step, 'train', scalars)
    loss = metrics.get('loss', float('nan'))
    # 'total' (some objectives report the weighted sum again) would repeat the loss.
    terms = ' '.join(f'{k} {v:.3g}' for k, v in metrics.items()
                     if k != 'loss' and not (k == 'total' and abs(v - loss) <= 1e-6 * abs(loss)))
    pct = 100.0 * step / max(self.total_steps, 1)
    self.print(f'[train] step {step:>{len(str(self.total_steps))}}/{self.total_steps} '
               f'{pct:5.1f}% | loss {loss:.4f} {terms} | lr {lr:.1e} | {rate:.2f} steps/s '
               f'{rate * clips_per_step:.1f} clips/s | elapsed {fmt_duration(elapsed)} '
               f'ETA {fmt_duration(timing.get("eta_sec", float("nan")))}')

  def eval_results(self, step: int, results: Mapping[str, Any], table: str, header: str = ''):
    scalars = {k: v for k, v in results.items() if _scalar(v) is not None}
    self.write(step, 'eval', scalars)
    self.print((header + '\n' if header else '') + table)

  def close(self):
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_jsonl(path: str) -> list[dict]:
  """The records of a metrics.jsonl (for tests and notebooks)."""
  return [json.loads(line) for line in io.read_text(path).splitlines() if line.strip()]
