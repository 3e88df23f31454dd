"""`config.data` as the pipeline reads it: a frozen `DataOptions`, read and checked once.

The defaults live in one place, `configs/base.py` (`_data_defaults`): `DataOptions` has none,
and `data_options` raises a ConfigError naming `config.data.<field>` when a field is missing, so
a partial config can never silently pick up a second, drifting set of defaults.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from grl_jax import schema
from grl_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DataOptions:
  """The `config.data` fields the pipeline reads (meanings in configs/base.py)."""
  height: int
  width: int
  seq_len: int  # T, frames per clip
  train_sampling: str  # schema.TRAIN_SAMPLINGS
  sample_stride: int  # for train_sampling='stride'
  test_sampling: str  # schema.TEST_SAMPLINGS
  batch_sampler: str  # schema.BATCH_SAMPLERS
  p: Optional[int]  # None: derived from the batch size (config value 0)
  k: Optional[int]  # None: derived from the batch size (config value 0)
  pk_mode: str  # schema.PK_MODES
  flip: bool
  erasing_prob: float
  erasing_mode: str  # schema.ERASING_MODES
  pad_crop: int
  strict: bool
  prefetch: int  # batches prefetched; 0 = none, -1 = tf.data.AUTOTUNE
  threads: int  # tf.data private thread pool size; 0 = TF's shared pool (one per core)


_MISSING = object()
_CHOICES = {
    'train_sampling': schema.TRAIN_SAMPLINGS,
    'test_sampling': schema.TEST_SAMPLINGS,
    'batch_sampler': schema.BATCH_SAMPLERS,
    'pk_mode': schema.PK_MODES,
    'erasing_mode': schema.ERASING_MODES,
}
_MIN_INT = {'height': 1, 'width': 1, 'seq_len': 1, 'sample_stride': 1, 'pad_crop': 0,
            'threads': 0, 'prefetch': -1}


def _get(data_cfg: Any, name: str) -> Any:
  if hasattr(data_cfg, 'get'):  # ConfigDict or mapping
    return data_cfg.get(name, _MISSING)
  return getattr(data_cfg, name, _MISSING)


def _int(name: str, v: Any, minimum: int) -> int:
  if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
    raise ConfigError(f'config.data.{name}={v!r}: expected an int >= {minimum}')
  return int(v)


def data_options(data_cfg: Any) -> DataOptions:
  """Reads and validates `config.data` (a ConfigDict, a mapping, an object or a DataOptions).

  Raises:
    ConfigError: a field is missing (`config.data.<field> is missing`) or holds a value of the
      wrong type, range or enum (schema.py).
  """
  if isinstance(data_cfg, DataOptions):
    return data_cfg
  values = {}
  for f in dataclasses.fields(DataOptions):
    v = _get(data_cfg, f.name)
    if v is _MISSING:
      raise ConfigError(f'config.data.{f.name} is missing; every field of configs/base.py '
                        '_data_defaults is required')
    values[f.name] = v
  for name, minimum in _MIN_INT.items():
    values[name] = _int(name, values[name], minimum)
  for name in ('p', 'k'):  # 0 or None: derived from the batch size
    values[name] = None if values[name] in (0, None) else _int(name, values[name], 1)
  for name, allowed in _CHOICES.items():
    schema.check_choice(values[name], allowed, f'config.data.{name}')
  for name in ('flip', 'strict'):
    if not isinstance(values[name], (bool, np.bool_)):
      raise ConfigError(f'config.data.{name}={values[name]!r}: expected a bool')
    values[name] = bool(values[name])
  prob = values['erasing_prob']
  if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0 <= prob <= 1:
    raise ConfigError(f'config.data.erasing_prob={prob!r}: expected a float in [0, 1]')
  values['erasing_prob'] = float(prob)
  return DataOptions(**values)
