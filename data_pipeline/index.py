"""The compact tracklet index every reader produces and every sampler consumes.

A split (train, query or gallery) is a `TrackletIndex`: one flat array of frame paths plus, per
tracklet, where its frames start in that array, how many there are, its person id and camera id.
Nothing here touches pixels; a MARS-sized index is a few tens of MB of strings and loads in
seconds.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class TrackletIndex:
  """Tracklets of one split.

  Attributes:
    frame_paths: str[F], every frame of every tracklet, tracklet after tracklet, in temporal
      order. Paths are absolute (local or gs://).
    starts: int64[N], index into `frame_paths` of each tracklet's first frame.
    lengths: int32[N], number of frames of each tracklet (>= 1).
    pids: int32[N], person id. Train splits are relabelled to 0..num_ids-1; test splits keep
      the dataset's ids (MARS: -1 junk, 0 distractor).
    camids: int32[N], 0-based camera id.
  """
  frame_paths: np.ndarray
  starts: np.ndarray
  lengths: np.ndarray
  pids: np.ndarray
  camids: np.ndarray

  def __post_init__(self):
    n = len(self.starts)
    for name in ('lengths', 'pids', 'camids'):
      if len(getattr(self, name)) != n:
        raise ValueError(f'TrackletIndex.{name} has {len(getattr(self, name))} entries, '
                         f'expected {n} (one per tracklet)')
    if n and (self.lengths.min() < 1 or (self.starts + self.lengths).max() > len(self.frame_paths)
              or self.starts.min() < 0):
      raise ValueError('TrackletIndex: a tracklet points outside frame_paths '
                       f'({len(self.frame_paths)} frames) or has no frames')

  @classmethod
  def from_lists(cls, tracklets: list[list[str]], pids, camids) -> 'TrackletIndex':
    """Builds an index from per-tracklet lists of frame paths."""
    lengths = np.array([len(t) for t in tracklets], np.int32)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(
        tracklets) else np.zeros(0, np.int64)
    paths = np.array([p for t in tracklets for p in t], dtype=object)
    return cls(paths, starts, lengths, np.asarray(pids, np.int32), np.asarray(camids, np.int32))

  def __len__(self) -> int:
    return len(self.starts)

  def frames(self, i: int) -> np.ndarray:
    """The frame paths of tracklet `i`, in temporal order."""
    s = int(self.starts[i])
    return self.frame_paths[s:s + int(self.lengths[i])]

  @property
  def num_frames(self) -> int:
    return int(self.lengths.sum())

  @property
  def num_ids(self) -> int:
    return int(len(np.unique(self.pids)))

  def subset(self, rows) -> 'TrackletIndex':
    """A new index holding tracklets `rows` (in that order); frame paths are re-packed."""
    rows = np.asarray(rows, np.int64)
    pieces = [self.frame_paths[self.starts[r]:self.starts[r] + self.lengths[r]] for r in rows]
    lengths = self.lengths[rows]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(
        rows) else np.zeros(0, np.int64)
    paths = np.concatenate(pieces) if pieces else np.zeros(0, dtype=object)
    return TrackletIndex(paths, starts, lengths, self.pids[rows], self.camids[rows])

  @staticmethod
  def concat(a: 'TrackletIndex', b: 'TrackletIndex') -> 'TrackletIndex':
    return TrackletIndex(
        np.concatenate([a.frame_paths, b.frame_paths]),
        np.concatenate([a.starts, b.starts + len(a.frame_paths)]),
        np.concatenate([a.lengths, b.lengths]),
        np.concatenate([a.pids, b.pids]),
        np.concatenate([a.camids, b.camids]))


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A video re-ID dataset ready for training and evaluation.

  The reader composes the gallery of every protocol from one test index (`test`, each test
  tracklet once), so evaluators can compute each tracklet's descriptor once and report several
  protocols side by side (grl_jax/evaluators/); `query` / `gallery` are the views of the
  configured `protocol`.

  Attributes:
    name: reader name ('mars', 'duke', 'ilids', 'prid', 'lsvid', 'custom').
    train: training tracklets, pids relabelled to 0..num_train_ids-1.
    query: query tracklets (original pids).
    gallery: gallery tracklets for `protocol` (original pids).
    protocol: one of grl_jax/schema.py PROTOCOLS (its rules: grl_jax/evaluation/).
    meta: free-form facts (root, split id, original train pids, ...).
    test: every test tracklet the protocols draw from; None for a dataset assembled from a
      query and a gallery only (then `query + gallery` is the test index and only `protocol`
      is available).
    query_rows: int64[Q], the rows of `test` that are the queries.
    gallery_rows: protocol -> int64[G_p], the rows of `test` that make its gallery, in order.
  """
  name: str
  train: TrackletIndex
  query: TrackletIndex
  gallery: TrackletIndex
  protocol: str
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  test: TrackletIndex | None = None
  query_rows: np.ndarray | None = None
  gallery_rows: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def test_split(self) -> tuple[TrackletIndex, np.ndarray, dict[str, np.ndarray]]:
    """(test index, query rows, {protocol: gallery rows}) as described above."""
    if self.test is not None:
      return self.test, np.asarray(self.query_rows, np.int64), dict(self.gallery_rows)
    nq, ng = len(self.query), len(self.gallery)
    return (TrackletIndex.concat(self.query, self.gallery), np.arange(nq, dtype=np.int64),
            {self.protocol: nq + np.arange(ng, dtype=np.int64)})

  @property
  def protocols(self) -> tuple[str, ...]:
    """The protocols whose gallery this dataset can compose."""
    return tuple(self.gallery_rows) if self.test is not None else (self.protocol,)

  @property
  def num_train_ids(self) -> int:
    return self.train.num_ids
