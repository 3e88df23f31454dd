"""Re-ID metrics of a model: CMC / mAP / mINP of its query vs gallery features under the
dataset's protocol: the reader composed the gallery for it (data_pipeline/datasets/common.py),
grl_jax/evaluation/ applies its AP and junk rules."""
from __future__ import annotations

import numpy as np

from grl_jax import evaluation
from grl_jax.evaluators import features


def run(setup, variables, data) -> tuple[dict, np.ndarray, np.ndarray]:
  """(results, query features, gallery features) under `data.dataset.protocol`."""
  ds = data.dataset
  qf, gf = features.split_features(setup, variables, data)
  results = evaluation.evaluate_features(
      qf, gf, ds.query.pids, ds.gallery.pids, ds.query.camids, ds.gallery.camids,
      metric=setup.spec.descriptor_distance, protocol=ds.protocol,
      max_rank=int(setup.config.eval.max_rank))
  return results, qf, gf


def format_results(results: dict, title: str) -> str:
  return evaluation.format_results(results, title=title)


def scalar_results(results: dict) -> dict:
  """The scalar metrics (mAP, mINP, rank1, ...) as floats; arrays such as the CMC are dropped."""
  return {k: float(v) for k, v in results.items()
          if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)}
