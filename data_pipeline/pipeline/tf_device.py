"""Keeps TensorFlow off the accelerator: TF only reads and decodes files, on the CPU.

Done lazily, when the first iterator is created, rather than on import: importing the pipeline
must not change the TF runtime of a process that only wants `data_options` or the clip counts.
It only works before TF's runtime is initialised (its first op: a tf.summary writer counts), so
a program that uses TF earlier should call `hide_accelerators_from_tf` first; otherwise a
warning says TF kept the GPU. tf.io.gfile does not initialise the runtime.
"""
from __future__ import annotations

import threading

from absl import logging
import tensorflow as tf

_LOCK = threading.Lock()
_DONE = False


def hide_accelerators_from_tf() -> None:
  """Makes TF see no GPU (the accelerator belongs to JAX). Idempotent; a no-op when the build
  has no GPU support or TF's runtime is already initialised (then a warning if it sees a GPU)."""
  global _DONE
  with _LOCK:
    if _DONE:
      return
    _DONE = True
    try:
      tf.config.set_visible_devices([], 'GPU')
    except ValueError:  # no GPU support in this build
      pass
    except RuntimeError:  # the runtime is already initialised, with whatever it saw
      if tf.config.list_logical_devices('GPU'):
        logging.warning('data_pipeline: TF was initialised before the input pipeline and keeps '
                        'the GPU(s) visible (it may hold accelerator memory); call '
                        'data_pipeline.pipeline.hide_accelerators_from_tf() before TF\'s first '
                        'op')
