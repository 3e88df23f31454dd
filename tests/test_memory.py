"""grl_jax/trainer/memory.py: the pre-training memory check on the toy model with an injected
device limit (the CPU reports none): the error names the bytes XLA wanted, the limit and the
largest batch that fits; a fitting step is compiled once and reused by the first step."""
from __future__ import annotations

import logging
import re

import jax
import pytest

from grl_jax import checkpoint
from grl_jax import sharding
from grl_jax.errors import ConfigError
from grl_jax.trainer import memory
from grl_jax.trainer import setup as setup_lib
from tests import helpers as c


def _setup(tmp_path, **overrides):
  config = c.toy_config(tmp_path, **overrides)
  return config, setup_lib.build(config, num_classes=8, steps_per_epoch=4, check_memory=False)


def _need(s, config, batch: int) -> int:
  state = checkpoint.abstract_tree(s.abstract_state, sharding.replicated(s.mesh))
  return memory.step_bytes(
      s.train_step.lower(state, memory.abstract_batch(config, batch, s.mesh)).compile())


def test_largest_fitting_bisects_in_units():
  calls = []

  def fits(b):
    calls.append(b)
    return b <= 22

  best, probes = memory.largest_fitting(fits, 64, 4)
  assert best == 20 and probes == [(b, b <= 22) for b in calls]
  assert all(b % 4 == 0 for b in calls) and len(calls) <= 4
  assert memory.largest_fitting(lambda b: False, 64, 4)[0] == 0
  assert memory.largest_fitting(fits, 64, 4, max_probes=1) == (0, [(32, False)])


def test_too_small_a_limit_is_a_one_line_config_error(tmp_path):
  config, s = _setup(tmp_path)            # global batch 8, pairs: unit 2
  needs = {b: _need(s, config, b) for b in (2, 4, 6, 8)}
  assert needs[2] < needs[4] < needs[6] < needs[8]
  limit = (needs[4] + needs[6]) // 2      # 4 fits, 6 does not
  with pytest.raises(ConfigError) as e:
    memory.check_train_step(s.train_step, s.abstract_state, config, s.mesh, limit_bytes=limit)
  msg = str(e.value)
  assert '\n' not in msg and msg.startswith('config.train.global_batch_size')
  assert f'needs {needs[8]:,} bytes' in msg and f'holds {limit:,} bytes' in msg
  assert re.search(r'largest batch that fits is 4 \(4 per device', msg), msg
  with pytest.raises(ConfigError, match='even a batch of 2'):
    memory.check_train_step(s.train_step, s.abstract_state, config, s.mesh,
                            limit_bytes=needs[2] - 1)


def test_a_fitting_step_is_checked_once_and_reused(tmp_path, monkeypatch):
  config, s = _setup(tmp_path)
  monkeypatch.delenv(memory.ENV_LIMIT, raising=False)
  # No limit on the CPU: nothing is compiled.
  assert memory.device_limit(s.mesh) is None
  assert memory.check_train_step(None, s.abstract_state, config, s.mesh) is None
  monkeypatch.setenv(memory.ENV_LIMIT, str(2**40))
  s = setup_lib.build(config, num_classes=8, steps_per_epoch=4)   # checks: fits
  compiles = []

  class Catch(logging.Handler):
    def emit(self, record):
      if 'Compiling jit(step_fn)' in record.getMessage():
        compiles.append(record.getMessage())

  handler = Catch()
  logging.getLogger('jax').addHandler(handler)
  state = s.init_state(0)
  batch = sharding.to_global(next(c.toy_data(config).train_batches(0)), s.mesh)
  try:
    with jax.log_compiles(True):
      state, metrics = s.train_step(state, batch)
      jax.block_until_ready(metrics)
  finally:
    logging.getLogger('jax').removeHandler(handler)
  assert not compiles   # the executable the check compiled is the one that ran


def test_the_environment_limit_reaches_build(tmp_path, monkeypatch):
  config = c.toy_config(tmp_path)
  monkeypatch.setenv(memory.ENV_LIMIT, '1000')
  with pytest.raises(ConfigError, match=r'holds 1,000 bytes.*even a batch of 2'):
    setup_lib.build(config, num_classes=8, steps_per_epoch=4)
  monkeypatch.setenv(memory.ENV_LIMIT, 'lots')
  with pytest.raises(ConfigError, match='GRL_JAX_DEVICE_MEMORY_BYTES'):
    setup_lib.build(config, num_classes=8, steps_per_epoch=4)
