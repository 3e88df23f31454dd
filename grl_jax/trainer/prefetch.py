"""Batches placed on the devices ahead of the step that uses them.

`DevicePrefetch(batches, mesh, size)` wraps an iterator of host batches (dicts of numpy arrays,
this process's rows; data_pipeline/builder.py's `train_batches`) and yields the same batches as
global arrays sharded over `mesh` (`grl_jax.sharding.to_global`), keeping `size` of them
already transferred. A transfer (`jax.make_array_from_process_local_data`, a sharded
`device_put`) is asynchronous: it is issued `size` steps before its step, so it runs while
the steps before it compute instead of between two steps. With size 2 (the default) the
device holds two batches beyond the running step's own (frames uint8[B, T, H, W, 3] each: 12.6 MB at
16 x 8 x 256 x 128).

Resume stays exact: reading ahead changes nothing in the sample stream, which is a pure
function of (seed, step); a resumed run rebuilds the stream at its restored step.
`close()` drops the prefetched arrays and closes the wrapped iterator (a tf.data iterator must
be released before interpreter shutdown; grl_jax/trainer/loop.py's finally block calls it).
"""
from __future__ import annotations

import collections
from typing import Any, Callable, Iterator, Mapping

from grl_jax import sharding

DEFAULT_SIZE = 2


class DevicePrefetch:
  """Iterator of device batches, `size` of them transferred ahead (module docstring)."""

  def __init__(self, batches: Iterator[Mapping[str, Any]], mesh, size: int = DEFAULT_SIZE,
               put: Callable[[Mapping[str, Any], Any], dict] = sharding.to_global):
    if int(size) < 1:
      raise ValueError(f'DevicePrefetch: size={size}; expected >= 1 batches ahead')
    self._source = batches
    self._mesh = mesh
    self._size = int(size)
    self._put = put
    self._queue: collections.deque = collections.deque()
    self._exhausted = False

  @property
  def source(self):
    """The wrapped host iterator."""
    return self._source

  @property
  def size(self) -> int:
    return self._size

  def __iter__(self):
    return self

  def _push(self) -> None:
    if self._exhausted:
      return
    try:
      host = next(self._source)
    except StopIteration:
      self._exhausted = True
      return
    self._queue.append(self._put(host, self._mesh))

  def __next__(self) -> dict:
    while len(self._queue) < self._size and not self._exhausted:
      self._push()
    if not self._queue:
      raise StopIteration
    batch = self._queue.popleft()
    # The transfer of the batch `size` steps ahead starts now, before this step is dispatched.
    self._push()
    return batch

  def close(self) -> None:
    """Drops the prefetched device batches and closes the wrapped iterator (if it can)."""
    self._queue.clear()
    self._exhausted = True
    close = getattr(self._source, 'close', None)
    if close is not None:
      close()


def on_devices(batches, mesh, size: int = DEFAULT_SIZE, **kwargs) -> DevicePrefetch:
  """`batches` wrapped in a DevicePrefetch over `mesh`, or itself if it already is one."""
  if isinstance(batches, DevicePrefetch):
    return batches
  return DevicePrefetch(batches, mesh, size, **kwargs)
