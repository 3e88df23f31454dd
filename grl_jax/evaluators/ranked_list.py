"""The `ranked_list` evaluator: a picture of a few queries, each beside its top-10 gallery
tracklets (green border: same identity; grl_jax/visualize.py), written to
`<workdir>/<name>_step<N>.png` by process 0.

Config fields (`config.evals.<name>`, defaults in `DEFAULTS`): queries (how many, spread evenly
over the query set), top_k, protocol / test_sampling ('' = the config.data ones), at.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from grl_jax import evaluation
from grl_jax import io
from grl_jax import visualize
from grl_jax.evaluators import features

DEFAULTS = dict(type='ranked_list', at='final', queries=4, top_k=10, protocol='',
                test_sampling='')


@dataclasses.dataclass
class RankedListEvaluator:
  name: str
  cfg: Any
  context: Any

  def __post_init__(self):
    self.protocol, self.sampling, query_rows, self.gallery_rows = features.protocol_view(
        self.cfg, self.context)
    self.query_rows = features.spread(query_rows, int(self.cfg.queries))

  def require(self, feats) -> None:
    feats.require(self.sampling, self.query_rows)
    feats.require(self.sampling, self.gallery_rows)

  def run(self, feats, step: int, title: str):
    del title
    qf = feats.get(self.sampling, self.query_rows)
    gf = feats.get(self.sampling, self.gallery_rows)
    if jax.process_index() != 0 or not len(qf):
      return {}, None, None, {}
    setup = self.context.setup
    dist = np.asarray(evaluation.pairwise_distance(qf, gf, setup.spec.descriptor_distance))
    path = io.join(self.context.workdir, f'{self.name}_step{step}.png')
    test = feats.test
    visualize.ranked_list_picture_from_distances(
        dist, test.subset(self.query_rows), test.subset(self.gallery_rows), range(len(qf)),
        path, top_k=int(self.cfg.top_k), protocol=self.protocol)
    return {}, None, None, {self.name: path}
