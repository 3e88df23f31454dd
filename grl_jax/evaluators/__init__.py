"""Evaluators (big_vision style): what an evaluation of a model's variables reports.

`config.evals` maps names to evaluator configs, each with a `type` from the registry below and
that type's fields (defaults: each module's `DEFAULTS`):

    config.evals.reid        = {type: 'reid', protocol: '', test_sampling: '', rerank: False, ...}
    config.evals.ranked_list = {type: 'ranked_list', queries: 4, top_k: 10, ...}
    config.evals.gce_map     = {type: 'gce_map', tracklets: 4}             (GRL only)

`build` makes them; `Evaluators.run(variables, step, final=...)` computes the test descriptors
once (per test sampling, only the tracklets some evaluator reads: features.py) and runs every
evaluator due (`at='every'`, or `'final'` for the last evaluation only). Metrics are named
`<evaluator>/<metric>` ('reid/mAP'); `config.eval.best_metric` names one of them. Several reid
evaluators report several protocols side by side from the same descriptors; each protocol's
gallery is the dataset reader's (data_pipeline/index.py `Dataset.test_split`).

* `features.py`: per-tracklet descriptors (every test clip through the jitted eval step,
  averaged per tracklet), shared by the evaluators of one evaluation.
* `reid.py`: CMC / mAP / mINP under a protocol, optionally re-ranked.
* `ranked_list.py`: the ranked-list picture of a few queries.
* `gce_map.py`: GRL's GCE correlation maps of a few query tracklets.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from grl_jax import schema
from grl_jax.errors import ConfigError
from grl_jax.evaluators import features as features_lib
from grl_jax.evaluators import gce_map
from grl_jax.evaluators import ranked_list
from grl_jax.evaluators import reid

REGISTRY = {'reid': reid.ReidEvaluator, 'ranked_list': ranked_list.RankedListEvaluator,
            'gce_map': gce_map.GceMapEvaluator}
_DEFAULTS = {'reid': reid.DEFAULTS, 'ranked_list': ranked_list.DEFAULTS,
             'gce_map': gce_map.DEFAULTS}
assert tuple(REGISTRY) == schema.EVAL_TYPES


def defaults(kind: str, **overrides) -> dict:
  """The full field set of an evaluator of type `kind`, with `overrides` applied."""
  schema.check_choice(kind, schema.EVAL_TYPES, 'evaluator type')
  out = dict(_DEFAULTS[kind])
  for key, value in overrides.items():
    if key not in out:
      raise ConfigError(f'evaluator {kind!r} has no field {key!r} (known: {sorted(out)})')
    out[key] = value
  return out


def check_config(config) -> None:
  """ConfigError for a bad `config.evals` or a `config.eval.best_metric` no evaluator reports."""
  evals = config.get('evals') or {}
  if not evals:
    raise ConfigError('config.evals is empty: expected at least one evaluator, e.g. '
                      "{'reid': {'type': 'reid'}}")
  names = set()
  for name, cfg in evals.items():
    where = f'config.evals.{name}'
    kind = schema.check_choice(cfg.get('type'), schema.EVAL_TYPES, f'{where}.type')
    unknown = sorted(set(cfg.keys()) - set(_DEFAULTS[kind]))
    if unknown:
      raise ConfigError(f'{where}: unknown field(s) {unknown} for type {kind!r} (known: '
                        f'{sorted(_DEFAULTS[kind])})')
    schema.check_choice(cfg.get('at', 'every'), schema.EVAL_AT, f'{where}.at')
    if 'protocol' in cfg and cfg.protocol:
      schema.check_choice(cfg.protocol, schema.PROTOCOLS, f'{where}.protocol')
    if 'test_sampling' in cfg and cfg.test_sampling:
      schema.check_choice(cfg.test_sampling, schema.TEST_SAMPLINGS, f'{where}.test_sampling')
    if kind == 'gce_map' and config.model.name not in gce_map.MODELS:
      raise ConfigError(f'{where}: the GCE correlation map is drawn for {gce_map.MODELS} only, '
                        f'not model {config.model.name!r}; remove the evaluator')
    if kind == 'reid' and cfg.get('at', 'every') == 'every':
      names.update(f'{name}/{m}' for m in reid.metric_names(int(config.eval.max_rank)))
    for field in ('queries', 'top_k', 'tracklets', 'rerank_k1', 'rerank_k2'):
      if field in cfg and int(cfg[field]) < 1:
        raise ConfigError(f'{where}.{field}={cfg[field]}: expected >= 1')
    if kind == 'gce_map' and int(cfg.tracklets) > 8:
      raise ConfigError(f'{where}.tracklets={cfg.tracklets}: expected at most 8 picture rows')
    if 'rerank_lambda' in cfg and not 0.0 <= float(cfg.rerank_lambda) <= 1.0:
      raise ConfigError(f'{where}.rerank_lambda={cfg.rerank_lambda}: expected in [0, 1]')
  best = str(config.eval.best_metric)
  if best not in names:
    raise ConfigError(f'config.eval.best_metric={best!r}: no evaluator run at every '
                      f'evaluation reports it; expected one of {sorted(names)}')


@dataclasses.dataclass
class Context:
  """What evaluators read: the run's Setup (grl_jax/trainer/setup.py), its Data
  (data_pipeline/builder.py) and the workdir their pictures go to."""
  setup: Any
  data: Any
  workdir: str


@dataclasses.dataclass
class Outcome:
  """One evaluation's results.

  Attributes:
    metrics: '<evaluator>/<metric>' -> float, every evaluator's scalars.
    tables: the printed result tables, in evaluator order.
    details: evaluator name -> what goes to the eval JSON (scalars, CMC, protocol, ...).
    artifacts: name -> path of each written picture.
    features: the TestFeatures used (for callers that want the descriptors).
  """
  metrics: dict
  tables: list
  details: dict
  artifacts: dict
  features: Any

  def of(self, evaluator: str) -> dict:
    """The unprefixed scalars of one evaluator ('reid' -> {'mAP': ...})."""
    prefix = evaluator + '/'
    return {k[len(prefix):]: v for k, v in self.metrics.items() if k.startswith(prefix)}


class Evaluators:
  """The evaluators of `config.evals`, in name order."""

  def __init__(self, config, context: Context):
    check_config(config)
    self.context = context
    self.items = [(name, cfg.get('at', 'every'), REGISTRY[cfg.type](name, cfg, context))
                  for name, cfg in config.evals.items()]

  def run(self, variables, step: int, *, final: bool, title: str) -> Outcome:
    """Runs the evaluators due at this evaluation on `variables` (placed as the eval step
    expects). Every process must call it (the descriptors are computed collectively)."""
    feats = features_lib.TestFeatures(self.context.setup, variables, self.context.data)
    due = [(name, ev) for name, at, ev in self.items if final or at == 'every']
    for _, ev in due:
      ev.require(feats)
    feats.compute()   # one pass per test sampling over every tracklet some evaluator reads
    metrics, tables, details, artifacts = {}, [], {}, {}
    for name, ev in due:
      scalars, table, detail, files = ev.run(feats, step, title)
      metrics.update({f'{name}/{k}': v for k, v in scalars.items()})
      if table:
        tables.append(table)
      if detail is not None:
        details[name] = detail
      artifacts.update(files)
    return Outcome(metrics, tables, details, artifacts, feats)


def build(config, setup, data, workdir: str) -> Evaluators:
  """The evaluators of `config.evals` for one run."""
  return Evaluators(config, Context(setup, data, workdir))
