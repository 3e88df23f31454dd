"""Per-tracklet descriptors: all test clips of each tracklet through the eval step, averaged."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from data_pipeline.index import TrackletIndex
from grl_jax import sharding


def tracklet_features(setup, variables, index: TrackletIndex,
                      batches: Iterator[dict]) -> np.ndarray:
  """float32[N, D]: descriptors of all clips of each tracklet, averaged (official dense
  protocol; a single clip per tracklet with rrs_test).

  Args:
    setup: a grl_jax.trainer.setup.Setup (its `eval_step` and `mesh` are used).
    variables: {'params', 'batch_stats'} placed as `setup.eval_step` expects (replicated).
    index: the tracklets; `batches` yields {frames uint8[b, T, H, W, 3], tracklet int32[b]}
      covering every clip of every tracklet (tracklet -1 marks padding rows).
  """
  sums, counts = None, np.zeros(len(index), np.int64)
  for batch in batches:
    g = sharding.to_global({'frames': batch['frames'], 'tracklet': batch['tracklet']},
                           setup.mesh)
    desc, rows = setup.eval_step(variables, g['frames'], g['tracklet'])
    desc, rows = np.asarray(desc), np.asarray(rows)
    if sums is None:
      sums = np.zeros((len(index), desc.shape[1]), np.float64)
    valid = rows >= 0
    np.add.at(sums, rows[valid], desc[valid])
    np.add.at(counts, rows[valid], 1)
  if sums is None or (counts == 0).any():
    missing = int((counts == 0).sum()) if sums is not None else len(index)
    raise RuntimeError(f'evaluation: {missing} of {len(index)} tracklets got no clip')
  return (sums / counts[:, None]).astype(np.float32)


def split_features(setup, variables, data) -> tuple[np.ndarray, np.ndarray]:
  """(query features, gallery features) of `data.dataset`; gallery tracklets identical to a
  query tracklet (the queries-in-gallery protocols) reuse the query's feature instead of being
  recomputed."""
  ds = data.dataset
  qf = tracklet_features(setup, variables, ds.query, data.eval_batches(ds.query))
  qkey = {(ds.query.frame_paths[s], int(n)): i
          for i, (s, n) in enumerate(zip(ds.query.starts, ds.query.lengths))}
  same = np.array([qkey.get((ds.gallery.frame_paths[s], int(n)), -1)
                   for s, n in zip(ds.gallery.starts, ds.gallery.lengths)], np.int64)
  rest = np.flatnonzero(same < 0)
  gf = np.zeros((len(ds.gallery), qf.shape[1]), np.float32)
  gf[same >= 0] = qf[same[same >= 0]]
  if len(rest):
    sub = ds.gallery.subset(rest)
    gf[rest] = tracklet_features(setup, variables, sub, data.eval_batches(sub))
  return qf, gf
