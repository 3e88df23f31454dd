"""The host plan of one batch, shared by training and evaluation.

A plan says, for each of the b clips of one step, which files to load and how to augment them;
`BatchIterator` (stream.py) turns it into frames. Training and evaluation build it with the same
function and differ only in what they pass: sampled rows, frames and augmentation for training;
consecutive test clips, padding rows and no augmentation for evaluation. Reading a pack
(data_pipeline/pack/), the plan also carries each frame's bytes (`data`), read here on the host by
record; on loose files it has no `data` and the graph reads `paths`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from data_pipeline.index import TrackletIndex
from data_pipeline.pipeline.recovery import Resolver

# The plan's path and int32 fields, in the order the tf.data graph receives them (stream.py),
# followed there by the frame bytes (DATA_KEY: only in the plans of a pack; empty strings are
# fed in its place on loose files).
PLAN_KEYS = ('paths', 'idx0', 'replaced', 'tracklet', 'pid', 'camid', 'flip', 'crop', 'erase')
DATA_KEY = 'data'
GRAPH_KEYS = PLAN_KEYS + (DATA_KEY,)


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
    crop: int32[b, 2], erase: int32[b, T, 8]}, and data: object[b, T], the frames' bytes, when
    the resolver reads a pack (`resolver.read_many`).
  """
  frames = np.asarray(frames)
  b, t = frames.shape
  paths = np.empty((b, t), object)
  replaced = np.zeros((b, t), np.int32)
  resolved = []
  for j in range(b):
    row = int(load_rows[j])
    for s in range(t):
      path, rep = resolver.host_resolve(row, int(frames[j, s]))
      paths[j, s], replaced[j, s] = path.encode(), rep
      resolved.append(path)
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
  if resolver.read_many is not None:
    data = np.empty(b * t, object)
    data[:] = resolver.read_many(resolved)
    plan[DATA_KEY] = data.reshape(b, t)
  return plan
