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


class TestFeatures:
  """Descriptors of the dataset's test tracklets for one set of variables, each tracklet
  computed once per test sampling however many evaluators read it.

  `require(sampling, rows)` collects what the evaluators will read; `compute()` runs one pass
  of the eval step per sampling over the union; `get(sampling, rows)` returns float32[len(rows),
  D]. Rows index `data.dataset.test_split()[0]` (data_pipeline/index.py).
  """

  def __init__(self, setup, variables, data):
    self.setup, self.variables, self.data = setup, variables, data
    self.test, self.query_rows, self.gallery_rows = data.dataset.test_split()
    self._wanted: dict[str, set] = {}
    self._features: dict[str, np.ndarray] = {}
    self._done: dict[str, np.ndarray] = {}

  def require(self, sampling: str, rows) -> None:
    self._wanted.setdefault(sampling, set()).update(np.asarray(rows, np.int64).tolist())

  def compute(self) -> None:
    for sampling, wanted in self._wanted.items():
      done = self._done.setdefault(sampling, np.zeros(len(self.test), bool))
      rows = np.array(sorted(r for r in wanted if not done[r]), np.int64)
      if not len(rows):
        continue
      sub = self.test.subset(rows)
      f = tracklet_features(self.setup, self.variables, sub,
                            self.data.eval_batches(sub, sampling))
      if sampling not in self._features:
        self._features[sampling] = np.zeros((len(self.test), f.shape[1]), np.float32)
      self._features[sampling][rows] = f
      done[rows] = True
    self._wanted.clear()

  def get(self, sampling: str, rows) -> np.ndarray:
    rows = np.asarray(rows, np.int64)
    self.require(sampling, rows)
    self.compute()
    return self._features[sampling][rows]


def protocol_view(cfg, context) -> tuple[str, str, np.ndarray, np.ndarray]:
  """(protocol, test sampling, query rows, gallery rows of that protocol) of an evaluator's
  config; its '' fields take config.data's. Rows index the dataset's test index."""
  data_cfg = context.setup.config.data
  protocol = str(cfg.protocol or data_cfg.protocol)
  sampling = str(cfg.test_sampling or data_cfg.test_sampling)
  _, query_rows, galleries = context.data.dataset.test_split()
  return protocol, sampling, query_rows, galleries[protocol]


def spread(rows: np.ndarray, n: int) -> np.ndarray:
  """At most `n` of `rows`, spread evenly from first to last (deterministic): the tracklets a
  picture shows."""
  n = min(int(n), len(rows))
  if not n:
    return rows[:0]
  return rows[np.unique(np.linspace(0, len(rows) - 1, n).round().astype(np.int64))]
