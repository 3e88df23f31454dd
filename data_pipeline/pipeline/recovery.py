"""Bad-frame bookkeeping on the host: which files are bad and what replaces them.

A bad file is logged once per process (WARNING, with its path), remembered, and each use is
replaced by the nearest valid frame of the same tracklet (i, i+1, i-1, i+2, i-2, ...): the same
choice on every path, so the stream stays deterministic given the files on disk. With
`config.data.strict` a BadFrameError naming the file is raised instead.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from typing import Callable, Iterator, Optional

from absl import logging
import numpy as np

from data_pipeline.index import TrackletIndex
from data_pipeline.pipeline.decode import load_frame_eager
from data_pipeline.pipeline.options import DataOptions
from grl_jax import io as storage
from grl_jax.errors import BadFrameError


@dataclasses.dataclass
class BadFrameStats:
  """What a pipeline replaced: `files` (bad paths seen) and `replaced` (delivered frames that
  were substitutes for bad ones; a bad frame sampled 3 times counts 3)."""
  replaced: int = 0
  files: set = dataclasses.field(default_factory=set)
  lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

  def add_file(self, path: str) -> bool:
    """Records a bad file; True the first time it is seen."""
    with self.lock:
      new = path not in self.files
      self.files.add(path)
    return new

  def add_replaced(self, n: int):
    with self.lock:
      self.replaced += int(n)


STATS = BadFrameStats()  # process-wide totals over every iterator


def candidates(i: int, n: int) -> Iterator[int]:
  """i, i+1, i-1, i+2, i-2, ... restricted to [0, n): nearest frames first."""
  yield i
  for d in range(1, n):
    for j in (i + d, i - d):
      if 0 <= j < n:
        yield j


class Resolver:
  """Maps (tracklet row, sampled frame index) to the path actually loaded, on the host.

  `frames` is set when the index's frames live in a pack (data_pipeline/pack/reader.py
  PackedFrames): paths are then virtual, never checked on disk, and loaded through its
  `read(path)` (one frame) and `read_many(paths)` (a batch's, concurrently).
  """

  def __init__(self, index: TrackletIndex, opts: DataOptions, stats: BadFrameStats,
               frames=None):
    self.index, self.opts, self.stats = index, opts, stats
    self.read: Optional[Callable[[str], bytes]] = None if frames is None else frames.read
    self.read_many: Optional[Callable[[list], list]] = (None if frames is None
                                                        else frames.read_many)
    self.bad: set = set()  # paths this iterator knows to be bad

  def _known_bad(self, path: str) -> bool:
    """Bad for this iterator, or found bad by an earlier one in this process (which saves
    the new iterator a tf.data restart; the replacement chosen is the same either way)."""
    if path in self.bad:
      return True
    if path in STATS.files:
      if self.opts.strict:
        raise BadFrameError(f'bad frame {path} (found earlier; config.data.strict=True)')
      self.bad.add(path)
      self.stats.add_file(path)
      return True
    return False

  def mark_bad(self, path: str, reason: str):
    if self.opts.strict:
      raise BadFrameError(f'bad frame {path}: {reason} (config.data.strict=True)')
    self.bad.add(path)
    self.stats.add_file(path)
    if STATS.add_file(path):  # log each file once per process
      logging.warning('data_pipeline: bad frame %s (%s); replacing it by the nearest valid '
                      'frame of its tracklet', path, reason)

  def host_resolve(self, row: int, i: int) -> tuple[str, bool]:
    """(path, replaced): the first candidate not known bad and, if local, existing."""
    start, n = int(self.index.starts[row]), int(self.index.lengths[row])
    for j in candidates(int(i), n):
      path = str(self.index.frame_paths[start + j])
      if self._known_bad(path):
        continue
      if self.read is None and not storage.is_remote(path) and not os.path.exists(path):
        self.mark_bad(path, 'missing file')
        continue
      return path, j != i
    # Every frame is bad: feed the sampled one anyway; the repair path turns it black.
    return str(self.index.frame_paths[start + int(i)]), True

  def full_resolve(self, row: int, i: int) -> tuple[bool, np.ndarray]:
    """(replaced, uint8[H, W, 3]): like host_resolve, but each candidate is loaded with the
    exception-safe eager loader (the slow path; a black frame if none is valid)."""
    start, n = int(self.index.starts[row]), int(self.index.lengths[row])
    for j in candidates(int(i), n):
      path = str(self.index.frame_paths[start + j])
      if self._known_bad(path):
        continue
      img, reason = load_frame_eager(path, self.opts.height, self.opts.width, self.read)
      if img is not None:
        return j != i, img
      self.mark_bad(path, reason)
    logging.error('data_pipeline: every frame of tracklet %d is bad; using black frames', row)
    return True, load_frame_eager('', self.opts.height, self.opts.width)[0]
