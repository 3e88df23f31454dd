"""The host plan of one batch, shared by training and evaluation.

A plan says, for each of the b clips of one step, which files to load and how to augment them;
`BatchIterator` (stream.py) turns it into frames. Training and evaluation build it with the same
function and differ only in what they pass: sampled rows, frames and augmentation for training;
consecutive test clips, padding rows and no augmentation for evaluation.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from data_pipeline.index import TrackletIndex
from data_pipeline.pipeline.recovery import Resolver

# The plan's fields, in the order the tf.data graph receives them (stream.py).
PLAN_KEYS = ('paths', 'idx0', 'replaced', 'tracklet', 'pid', 'camid', 'flip', 'crop', 'erase')


def batch_plan(index: TrackletIndex, resolver: Resolver, *, tracklets: Sequence[int],
               load_rows: Sequence[int], frames: np.ndarray,
               augs: Sequence[dict]) -> dict[str, np.ndarray]:
  """The numpy plan of one batch of b clips of T frames.

  Args:
    index: the split the rows index into.
    resolver: maps a sampled frame to the path loaded in its place (bad-frame recovery); its
      bad files are logged, or raised with `strict`, in row-major order of `frames`.
    tracklets: int[b], the row each clip is delivered as; -1 marks a padding clip (pid and
      camid -1, frames zeroed on delivery).
    load_rows: int[b], the row whose frames are loaded (a padding clip loads a real one: the
      graph has no branch for "no file").
    frames: int[b, T], sampled frame indices into each load row.
    augs: b dicts {flip, crop int[2], erase int[T, 8]} (augment.sample_augmentation or
      augment.no_augmentation).

  Returns:
    {paths: object[b, T] (bytes), idx0: int32[b, T] (sampled indices), replaced: int32[b, T]
    (1 = a substitute for a bad frame), tracklet, pid, camid: int32[b], flip: int32[b],
    crop: int32[b, 2], erase: int32[b, T, 8]}.
  """
  frames = np.asarray(frames)
  b, t = frames.shape
  paths = np.empty((b, t), object)
  replaced = np.zeros((b, t), np.int32)
  for j in range(b):
    row = int(load_rows[j])
    for s in range(t):
      path, rep = resolver.host_resolve(row, int(frames[j, s]))
      paths[j, s], replaced[j, s] = path.encode(), rep
  tracklets = np.asarray(tracklets, np.int64)
  load_rows = np.asarray(load_rows, np.int64)
  real = tracklets >= 0
  plan = {
      'paths': paths,
      'idx0': frames.astype(np.int32),
      'replaced': replaced,
      'tracklet': tracklets.astype(np.int32),
      'pid': np.where(real, np.asarray(index.pids)[load_rows], -1).astype(np.int32),
      'camid': np.where(real, np.asarray(index.camids)[load_rows], -1).astype(np.int32),
  }
  for k in ('flip', 'crop', 'erase'):
    plan[k] = np.asarray([a[k] for a in augs], np.int32)
  return plan
