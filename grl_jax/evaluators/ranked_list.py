"""The ranked-list picture: a few queries, each beside its top-10 gallery tracklets."""
from __future__ import annotations

from typing import Optional

import jax
import numpy as np

from grl_jax import evaluation
from grl_jax import io
from grl_jax import visualize


def write(setup, data, qf: np.ndarray, gf: np.ndarray, workdir: str,
          step: int) -> Optional[str]:
  """Writes `<workdir>/ranked_list_step<step>.png` (process 0, if config.eval.ranked_list) for
  `config.eval.ranked_list_queries` queries spread over the query set; returns its path."""
  config = setup.config
  if not config.eval.ranked_list or jax.process_index() != 0:
    return None
  ds = data.dataset
  n = min(int(config.eval.ranked_list_queries), len(ds.query))
  # Spread the shown queries over the query set (deterministic).
  rows = np.unique(np.linspace(0, len(ds.query) - 1, n).round().astype(np.int64))
  dist = np.asarray(evaluation.pairwise_distance(qf[rows], gf, setup.spec.descriptor_distance))
  path = io.join(workdir, f'ranked_list_step{step}.png')
  visualize.ranked_list_picture_from_distances(
      dist, ds.query.subset(rows), ds.gallery, range(len(rows)), path, top_k=10,
      protocol=ds.protocol)
  return path
