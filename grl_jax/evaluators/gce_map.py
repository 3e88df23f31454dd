"""The `gce_map` evaluator (GRL only): the GCE correlation maps of a few query tracklets,
high- vs low-correlation regions over each frame (grl_jax/gce_map.py), written to
`<workdir>/<name>_step<N>.png` by process 0.

Config fields (`config.evals.<name>`, defaults in `DEFAULTS`): tracklets (how many query
tracklets, 1..8, spread evenly over the query set, one picture row each), at.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from grl_jax import io
from grl_jax.evaluators import features

DEFAULTS = dict(type='gce_map', at='final', tracklets=4)

# Models whose GCE correlation map can be drawn.
MODELS = ('grl',)


@dataclasses.dataclass
class GceMapEvaluator:
  name: str
  cfg: Any
  context: Any

  def __post_init__(self):
    _, query_rows, _ = self.context.data.dataset.test_split()
    self.rows = features.spread(query_rows, int(self.cfg.tracklets))

  def require(self, feats) -> None:
    del feats  # draws from frames, not descriptors

  def run(self, feats, step: int, title: str):
    del title
    if jax.process_index() != 0 or not len(self.rows):
      return {}, None, None, {}
    from data_pipeline import sampling  # pylint: disable=g-import-not-at-top
    from grl_jax import folders  # pylint: disable=g-import-not-at-top
    from grl_jax import gce_map  # pylint: disable=g-import-not-at-top
    config = self.context.setup.config
    t, h, w = int(config.data.seq_len), int(config.data.height), int(config.data.width)
    clips = []
    for row in self.rows:
      paths = feats.test.frames(int(row))
      first = sampling.test_clips('rrs_test', len(paths), t)[0]   # one clip per tracklet
      clips.append(folders.read_frames([str(paths[j]) for j in first], h, w))
    frames = np.stack(clips)
    maps = gce_map.correlation_maps(self.context.setup.model, jax.device_get(feats.variables),
                                    frames)
    path = io.join(self.context.workdir, f'{self.name}_step{step}.png')
    labels = [f'id {int(feats.test.pids[r])} cam {int(feats.test.camids[r])}' for r in self.rows]
    gce_map.draw(frames, maps, path, title=f'GCE correlation, step {step}', labels=labels)
    return {}, None, None, {self.name: path}
