"""Framework-free pieces of the device suite: the JSON row, timing and the largest-batch search.

Imports neither JAX nor torch, so both `jax_rows.py` and the official PyTorch script
(`torch_grl.py`, run in its own process) share it.

A row is one measurement, one JSON line:

    {"name", "config", "clips_per_s", "step_s", "compile_s", "peak_memory_gib", "memory_source",
     "flops_per_step", "flops_source", "tflops_per_s", "utilisation", "peak_tflops_per_s",
     "device", "platform", "date", "skipped"}

with utilisation = (flops_per_step / step_s) / peak, the peak being the bf16 matmul rate the
same run measured (`matmul_bf16_peak` row). A skipped row keeps every key, with None values and
the reason in "skipped".
"""
from __future__ import annotations

import time
from typing import Callable

DATE = '2026-12-01'   # the date rows and the RESULTS.md table carry (fixed for this project)

FIELDS = ('name', 'config', 'clips_per_s', 'step_s', 'compile_s', 'peak_memory_gib',
          'memory_source', 'flops_per_step', 'flops_source', 'tflops_per_s', 'utilisation',
          'peak_tflops_per_s', 'device', 'platform', 'date', 'skipped')


def make_row(name: str, config: dict, **values) -> dict:
  """A full row: every key of FIELDS (missing ones None), plus any extra keys given."""
  row = {k: None for k in FIELDS}
  row.update(name=name, config=dict(config), date=DATE)
  row.update(values)
  if row['tflops_per_s'] is None and row['flops_per_step'] and row['step_s']:
    row['tflops_per_s'] = row['flops_per_step'] / row['step_s'] / 1e12
  return row


def skipped_row(name: str, config: dict, reason: str) -> dict:
  return make_row(name, config, skipped=str(reason))


def add_utilisation(row: dict, peak_tflops: float | None) -> dict:
  """Fills utilisation = achieved TFLOP/s / the measured bf16 matmul peak."""
  if peak_tflops and row.get('tflops_per_s') is not None and not row.get('skipped'):
    row['peak_tflops_per_s'] = peak_tflops
    row['utilisation'] = row['tflops_per_s'] / peak_tflops
  return row


def median(xs: list[float]) -> float:
  s = sorted(xs)
  n = len(s)
  return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def time_calls(fn: Callable[[], object], sync: Callable[[object], object], steps: int,
               warmup: int = 1) -> list[float]:
  """Wall times of `steps` calls of `fn` after `warmup` untimed ones; `sync` waits for the
  result (block_until_ready / cuda.synchronize) so each time covers the device work."""
  for _ in range(warmup):
    sync(fn())
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - t0)
  return times


def search_largest_batch(fits: Callable[[int], bool], start: int, *, multiple: int = 2,
                         resolution: int = 8, max_batch: int = 4096,
                         max_probes: int = 8, deadline: float | None = None) -> dict:
  """Largest batch for which `fits(batch)` holds: doubling from `start`, then bisection.

  `fits` is a probe (here: compile the step and compare XLA's memory analysis with the free
  device memory), assumed monotone: fits(b) implies fits(b') for b' < b. Batches are multiples
  of `multiple` (GRL's pair batches need even sizes). Doubling stops at the first batch that
  does not fit (or at `max_batch`); bisection then narrows [lo, hi) until hi - lo <= resolution.
  `max_probes` bounds the calls of `fits` and `deadline` (a time.perf_counter() value) the time:
  when either is hit the search stops and reports the largest batch seen to fit.

  Returns {'batch': largest fitting batch or 0, 'probes': [(batch, fits), ...],
  'stopped': None or why the search ended early, 'upper': smallest batch known not to fit}.
  """
  if start <= 0 or start % multiple:
    raise ValueError(f'search_largest_batch: start={start} must be a positive multiple of '
                     f'{multiple}')
  probes: list[tuple[int, bool]] = []

  def probe(b: int):
    if len(probes) >= max_probes:
      return None, f'probe limit {max_probes}'
    if deadline is not None and time.perf_counter() > deadline:
      return None, 'time budget'
    ok = bool(fits(b))
    probes.append((b, ok))
    return ok, None

  ok, why = probe(start)
  if not ok:
    return {'batch': 0, 'probes': probes, 'stopped': why, 'upper': start if why is None else None}
  lo, hi = start, None
  while True:
    if hi is None:   # doubling until a batch does not fit
      b = min(2 * lo, max_batch // multiple * multiple)
      if b <= lo:
        return {'batch': lo, 'probes': probes, 'stopped': f'max_batch {max_batch}', 'upper': None}
    else:            # bisection of [lo, hi)
      b = (lo + hi) // 2 // multiple * multiple
      if hi - lo <= max(resolution, multiple) or b <= lo:
        break
    ok, why = probe(b)
    if why:
      return {'batch': lo, 'probes': probes, 'stopped': why, 'upper': hi}
    if ok:
      lo = b
    else:
      hi = b
  return {'batch': lo, 'probes': probes, 'stopped': None, 'upper': hi}
