"""grl_jax/trainer/prefetch.py: device batches transferred ahead, in order, closed with the
loop; a resumed toy run stays bit-identical to a straight one with the prefetch in the loop."""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from grl_jax import checkpoint
from grl_jax import sharding
from grl_jax.trainer import loop
from grl_jax.trainer import prefetch
from tests import helpers as c


class Source:
  """Host batches 0..n-1 ({'x': int32[4] = i}), counting reads and recording close()."""

  def __init__(self, n: int):
    self.n, self.reads, self.closed = n, 0, False

  def __iter__(self):
    return self

  def __next__(self):
    if self.closed or self.reads >= self.n:
      raise StopIteration
    self.reads += 1
    return {'x': np.full((4,), self.reads - 1, np.int32)}

  def close(self):
    self.closed = True


def test_yields_the_host_batches_in_order_on_the_mesh():
  mesh = sharding.make_mesh()
  src = Source(5)
  it = prefetch.DevicePrefetch(src, mesh, size=2)
  assert src.reads == 0                                   # nothing read before the first step
  first = next(it)
  assert src.reads == 3                                   # the step's batch + 2 ahead
  assert isinstance(first['x'], jax.Array)
  assert first['x'].sharding == sharding.data_sharding(mesh)
  got = [int(first['x'][0])] + [int(b['x'][0]) for b in it]
  assert got == [0, 1, 2, 3, 4] and src.reads == 5
  with pytest.raises(StopIteration):
    next(it)


def test_the_transfer_ahead_is_issued_before_the_step_gets_its_batch():
  calls = []

  def put(batch, mesh):
    calls.append(int(batch['x'][0]))
    return sharding.to_global(batch, mesh)

  it = prefetch.DevicePrefetch(Source(6), sharding.make_mesh(), size=3, put=put)
  for i in range(6):
    assert int(next(it)['x'][0]) == i
    # When step i receives its batch, batches up to i + 3 are already being transferred.
    assert calls == list(range(min(i + 4, 6)))


def test_close_closes_the_source_and_drops_what_was_prefetched():
  src = Source(10)
  it = prefetch.on_devices(src, sharding.make_mesh())
  assert prefetch.on_devices(it, None) is it              # idempotent: wraps once
  next(it)
  it.close()
  assert src.closed
  with pytest.raises(StopIteration):
    next(it)
  with pytest.raises(ValueError, match='size=0'):
    prefetch.DevicePrefetch(Source(1), sharding.make_mesh(), size=0)


def _run(root, workdir, sources: list, **overrides):
  """A toy training run whose train iterators are recorded in `sources`."""
  config = c.toy_config(root, optim__epochs=2, **overrides)
  data = c.toy_data(config)
  host_batches = data.train_batches

  class Tracked:
    def __init__(self, start):
      self.inner, self.reads, self.closed = host_batches(start), 0, False

    def __iter__(self):
      return self

    def __next__(self):
      self.reads += 1
      return next(self.inner)

    def close(self):
      self.closed = True
      self.inner.close()

  def train_batches(start):
    sources.append(Tracked(start))
    return sources[-1]

  return loop.train_and_evaluate(config, str(workdir),
                                 data=dataclasses.replace(data, train_batches=train_batches))


def test_loop_prefetches_closes_and_resumes_bit_exactly(tmp_path):
  straight_sources, resumed_sources = [], []
  out = _run(tmp_path, tmp_path / 'a', straight_sources)
  assert out['step'] == 8
  (src,) = straight_sources
  # 8 steps read 8 batches plus at most the prefetch depth ahead; the loop closed the stream.
  assert 8 <= src.reads <= 8 + prefetch.DEFAULT_SIZE and src.closed
  _run(tmp_path, tmp_path / 'b', resumed_sources, train__num_steps=4)
  _run(tmp_path, tmp_path / 'b', resumed_sources)
  assert all(s.closed for s in resumed_sources)
  a, _ = checkpoint.restore_variables(str(tmp_path / 'a'), step=8)
  b, _ = checkpoint.restore_variables(str(tmp_path / 'b'), step=8)
  for tree in ('params', 'batch_stats'):
    fa, fb = c.flat_params(a[tree]), c.flat_params(b[tree])
    assert fa.keys() == fb.keys()
    for k in fa:
      np.testing.assert_array_equal(fa[k], fb[k], err_msg=f'{tree}/{k}')
