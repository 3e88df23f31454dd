"""The `reid` evaluator: CMC / mAP / mINP of the query vs gallery descriptors under one
protocol, optionally after k-reciprocal re-ranking.

The gallery of each protocol is the dataset reader's (data_pipeline/datasets/common.py composes
every protocol over one test index); grl_jax/evaluation/ applies its AP and junk rules. Several
reid evaluators (one per protocol, say) share the descriptors: grl_jax/evaluators/features.py
computes each test tracklet once per test sampling.

Config fields (`config.evals.<name>`, defaults in `DEFAULTS`):
  protocol: 'official' | 'torchreid' | 'cas', or '' for config.data.protocol.
  test_sampling: 'rrs_test' | 'dense' | 'evenly', or '' for config.data.test_sampling.
  rerank: k-reciprocal re-ranking (grl_jax/reranking/) of the descriptor distances before
    ranking, with rerank_k1 / rerank_k2 / rerank_lambda (Zhong et al.: 20, 6, 0.3). A model
    whose descriptors compare by dot product is re-ranked on cosine distances (the method
    squares distances, which a negative dot product does not allow).
  at: 'every' evaluation or only the 'final' one.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from grl_jax import evaluation
from grl_jax import reranking
from grl_jax.evaluators import features

DEFAULTS = dict(type='reid', at='every', protocol='', test_sampling='', rerank=False,
                rerank_k1=20, rerank_k2=6, rerank_lambda=0.3)

# The scalar results of `grl_jax.evaluation.evaluate` besides the CMC ranks.
METRICS = ('mAP', 'mINP')


def scalar_results(results: dict) -> dict:
  """The scalar metrics (mAP, mINP, rank1, ...) as floats; arrays such as the CMC are dropped."""
  return {k: float(v) for k, v in results.items()
          if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)}


def metric_names(max_rank: int) -> tuple[str, ...]:
  """The scalar metric names a reid evaluator reports (for config.eval.best_metric)."""
  ranks = tuple(f'rank{k}' for k in (1, 5, 10, 20) if k <= max_rank)
  return METRICS + ranks


@dataclasses.dataclass
class ReidEvaluator:
  """See the module docstring. `context` is a grl_jax.evaluators.Context."""
  name: str
  cfg: Any
  context: Any

  def __post_init__(self):
    (self.protocol, self.sampling, self.query_rows,
     self.gallery_rows) = features.protocol_view(self.cfg, self.context)

  def require(self, feats) -> None:
    feats.require(self.sampling, self.query_rows)
    feats.require(self.sampling, self.gallery_rows)

  def run(self, feats, step: int, title: str):
    """Returns (scalar metrics, table, details for the eval JSON, artifacts)."""
    test = feats.test
    qf = feats.get(self.sampling, self.query_rows)
    gf = feats.get(self.sampling, self.gallery_rows)
    q, g = test.subset(self.query_rows), test.subset(self.gallery_rows)
    setup = self.context.setup
    max_rank = int(setup.config.eval.max_rank)
    metric = setup.spec.descriptor_distance
    if self.cfg.rerank:
      dist = reranking.re_ranking_features(
          qf, gf, metric='cosine' if metric == 'dot' else metric,
          k1=int(self.cfg.rerank_k1), k2=int(self.cfg.rerank_k2),
          lambda_value=float(self.cfg.rerank_lambda))
      results = evaluation.evaluate(dist, q.pids, g.pids, q.camids, g.camids,
                                    protocol=self.protocol, max_rank=max_rank)
    else:
      results = evaluation.evaluate_features(qf, gf, q.pids, g.pids, q.camids, g.camids,
                                             metric=metric, protocol=self.protocol,
                                             max_rank=max_rank)
    scalars = scalar_results(results)
    how = f'{self.sampling} clips' + (', re-ranked' if self.cfg.rerank else '')
    table = evaluation.format_results(results, title=f'[{self.name}] {title}, {how}')
    details = dict(scalars, cmc=np.asarray(results['cmc']).tolist(), protocol=self.protocol,
                   test_sampling=self.sampling, rerank=bool(self.cfg.rerank),
                   queries=len(q), gallery=len(g))
    return scalars, table, details, {}
