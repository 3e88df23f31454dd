"""Preemption: SIGTERM / SIGINT set a flag that the loop checks after each step, so the step
finishes, a checkpoint is saved and the run exits cleanly (a second Ctrl-C aborts at once)."""
from __future__ import annotations

import signal
import threading

import jax
import numpy as np


class StopFlag:
  """Context manager installing the handlers (restored on exit); `is_set()` polls the flag."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C aborts without waiting for the checkpoint
    self.signum = signum
    print(f'[train] received {signal.Signals(signum).name}: saving a checkpoint after this '
          'step', flush=True)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum else 'stop'

  def is_set(self) -> bool:
    """The local flag; with several processes, True if any process got a signal (a collective:
    every process must call it at the same step)."""
    local = self.signum is not None
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return bool(np.any(multihost_utils.process_allgather(np.array(local))))
    return local
