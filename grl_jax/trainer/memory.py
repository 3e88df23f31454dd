"""Does the train step fit in device memory? XLA's compile-time answer, before training starts.

`check_train_step` compiles the jitted train step for the config's global batch (abstract
arguments: nothing is allocated or run) and reads XLA's memory analysis of the executable, per
device: arguments + outputs + temporaries + generated code - the bytes aliased by donation.
If that exceeds the device's memory (`device.memory_stats()['bytes_limit']`, the allocator's
limit on GPU / TPU) it bisects the batch, compiling only, and raises a one-line ConfigError
with the bytes XLA wanted, the limit and the largest batch that fits, instead of an
allocator crash in the middle of the first step.

Where no limit is known (the CPU backend reports none) nothing is compiled and the check is
skipped; `limit_bytes=` or the environment variable GRL_JAX_DEVICE_MEMORY_BYTES sets one (a
test, or headroom for another process on the same device). When the step fits, the compiled
executable is what the first training step runs (JAX reuses it; no second compile).
"""
from __future__ import annotations

import math
import os
from typing import Callable, Optional

import jax

from grl_jax import checkpoint as ckpt_lib
from grl_jax import schema
from grl_jax import sharding
from grl_jax.errors import ConfigError

ENV_LIMIT = 'GRL_JAX_DEVICE_MEMORY_BYTES'
GIB = 2.0**30


def step_bytes(compiled) -> Optional[int]:
  """Device bytes one call of a jax.stages.Compiled needs (None without a memory analysis)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  (a backend without the analysis)
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             + getattr(m, 'generated_code_size_in_bytes', 0) - m.alias_size_in_bytes)


def device_limit(mesh=None) -> Optional[int]:
  """Bytes one device may hold: $GRL_JAX_DEVICE_MEMORY_BYTES, else the smallest allocator
  `bytes_limit` over this process's devices of `mesh` (all local devices without one), else
  None (CPU)."""
  env = os.environ.get(ENV_LIMIT, '').strip()
  if env:
    try:
      value = int(float(env))
    except ValueError:
      value = 0
    if value <= 0:
      raise ConfigError(f'${ENV_LIMIT}={env!r}: expected a positive number of bytes')
    return value
  devices = ([d for d in mesh.devices.flat if d.process_index == jax.process_index()]
             if mesh is not None else jax.local_devices())
  limits = []
  for d in devices:
    stats = d.memory_stats() if hasattr(d, 'memory_stats') else None
    if stats and stats.get('bytes_limit'):
      limits.append(int(stats['bytes_limit']))
  return min(limits) if limits else None


def abstract_batch(config, batch_size: int, mesh) -> dict:
  """The trainer's batch {frames uint8[B, T, H, W, 3], pid, camid, tracklet int32[B]} as
  sharded ShapeDtypeStructs (what data_pipeline's train iterator yields, put on `mesh`)."""
  d = config.data
  sh = sharding.data_sharding(mesh)
  spec = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=sh)  # noqa: E731
  return {'frames': spec((batch_size, int(d.seq_len), int(d.height), int(d.width), 3),
                         'uint8'),
          'pid': spec((batch_size,), 'int32'), 'camid': spec((batch_size,), 'int32'),
          'tracklet': spec((batch_size,), 'int32')}


def batch_unit(config, mesh_size: int) -> int:
  """Global batches are multiples of this: the mesh size and the sampler's group (a pair for
  'pair', K tracklets of an identity for 'pk')."""
  d = config.data
  group = 2 if str(d.batch_sampler) == 'pair' else max(1, int(d.k) or 4)
  return math.lcm(max(1, mesh_size), group)


def largest_fitting(fits: Callable[[int], bool], upper: int, unit: int,
                    max_probes: int = 8) -> tuple[int, list]:
  """Largest multiple of `unit` below `upper` (which does not fit) for which `fits` holds,
  by bisection over [unit, upper) with at most `max_probes` calls; 0 if even `unit` does not
  fit (or was not reached). Returns (batch, [(batch, fits), ...])."""
  probes = []
  lo, hi = 0, upper // unit          # in units: lo fits (0 = none known), hi does not
  while hi - lo > 1 and len(probes) < max_probes:
    mid = (lo + hi) // 2
    ok = bool(fits(mid * unit))
    probes.append((mid * unit, ok))
    lo, hi = (mid, hi) if ok else (lo, mid)
  return lo * unit, probes


def check_train_step(train_step, abstract_state, config, mesh, *,
                     limit_bytes: Optional[int] = None, max_probes: int = 8) -> Optional[int]:
  """Raises ConfigError if the train step at the config's global batch needs more than one
  device's memory (module docstring); returns the bytes it needs (None if unchecked).

  Args:
    train_step: the jitted step `(state, batch) -> (state, metrics)` (grl_jax/trainer/setup.py).
    abstract_state: its state as ShapeDtypeStructs (Setup.abstract_state).
    config: the run config (config.train batch fields, config.data shapes and sampler).
    mesh: the ('data',) mesh the step is sharded over.
    limit_bytes: per-device limit; default `device_limit(mesh)`; None there skips the check.
    max_probes: compiles the bisection may spend on finding the largest batch that fits.
  """
  limit = device_limit(mesh) if limit_bytes is None else int(limit_bytes)
  if limit is None:
    return None
  n_mesh = int(mesh.devices.size)
  batch = schema.global_batch_size(config, n_mesh)
  state = ckpt_lib.abstract_tree(abstract_state, sharding.replicated(mesh))

  def need(b: int) -> Optional[int]:
    return step_bytes(train_step.lower(state, abstract_batch(config, b, mesh)).compile())

  wanted = need(batch)
  if wanted is None or wanted <= limit:
    return wanted
  unit = batch_unit(config, n_mesh)
  best, _ = largest_fitting(lambda b: (need(b) or 0) <= limit, batch, unit, max_probes)
  field = ('config.train.per_device_batch_size'
           if int(config.train.per_device_batch_size) > 0 else 'config.train.global_batch_size')
  if best:
    hint = (f'the largest batch that fits is {best} ({best // n_mesh} per device; XLA memory '
            f'analysis, compiled only)')
  else:
    hint = f'even a batch of {unit} ({max(1, unit // n_mesh)} per device) does not fit'
  raise ConfigError(
      f'{field}: a train step of batch {batch} ({batch // n_mesh} per device, '
      f'{int(config.data.seq_len)} x {int(config.data.height)} x {int(config.data.width)} '
      f'frames, {config.model.get("dtype", "float32")}) needs {wanted:,} bytes '
      f'({wanted / GIB:.2f} GiB) per device, but a device holds {limit:,} bytes '
      f'({limit / GIB:.2f} GiB); {hint}. Lower the batch (with the sampler\'s p for P x K), '
      'use config.model.dtype=bfloat16, or add devices.')

