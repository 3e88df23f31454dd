"""Evaluators (grl_jax/evaluators/): protocol galleries from the reader, several protocols from
one descriptor pass, re-ranking, pictures at the final evaluation, config checks."""
from __future__ import annotations

import dataclasses
import importlib
import os
import zlib

import jax
import numpy as np
import pytest

from data_pipeline import builder
from data_pipeline import datasets
from data_pipeline import synthetic
from grl_jax import evaluation
from grl_jax import evaluators
from grl_jax import reranking
from grl_jax import schema
from grl_jax import validation
from grl_jax.errors import ConfigError
from grl_jax.evaluators import features
from grl_jax.trainer import setup as setup_lib
from tests import helpers as c

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

TINY = dict(num_train_ids=4, num_test_ids=6, height=32, width=16, median_len=6, max_len=10,
            min_tracklets=3, max_tracklets=5)


@pytest.fixture(scope='module')
def mars_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('mars'))
  synthetic.generate(root, **TINY)
  return root


def _same_tracklets(a, b):
  assert len(a) == len(b)
  np.testing.assert_array_equal(a.pids, b.pids)
  np.testing.assert_array_equal(a.camids, b.camids)
  np.testing.assert_array_equal(a.lengths, b.lengths)
  np.testing.assert_array_equal(a.frame_paths, b.frame_paths)


def test_every_protocol_gallery_comes_from_the_reader(mars_root):
  ds = datasets.load('mars', mars_root, protocol='torchreid')
  test, query_rows, galleries = ds.test_split()
  assert set(galleries) == set(schema.PROTOCOLS) == set(ds.protocols)
  for protocol in schema.PROTOCOLS:
    other = datasets.load('mars', mars_root, protocol=protocol)
    _same_tracklets(test.subset(galleries[protocol]), other.gallery)
    _same_tracklets(test.subset(query_rows), other.query)
  # The identity subset restricts every protocol's gallery alike.
  sub = builder.subset_ids(ds, 2)
  test2, q2, g2 = sub.test_split()
  for protocol in schema.PROTOCOLS:
    other = builder.subset_ids(datasets.load('mars', mars_root, protocol=protocol), 2)
    _same_tracklets(test2.subset(g2[protocol]), other.gallery)
    _same_tracklets(test2.subset(q2), other.query)
  _same_tracklets(sub.gallery, test2.subset(g2['torchreid']))


def _frames_of(index, i, rng_seed=0):
  """uint8[T, H, W, 3] for tracklet i of any index: a function of its first frame path and pid
  only, so a tracklet's descriptor does not depend on which batch or subset carries it."""
  seed = zlib.crc32(str(index.frame_paths[index.starts[i]]).encode())
  rng = np.random.default_rng([rng_seed, seed])
  pid = np.asarray([int(index.pids[i]) % 7])
  return c._frames(pid, rng)[0]   # pylint: disable=protected-access


class _CountingData:
  """A builder.Data over a real dataset whose eval batches are synthesised per tracklet."""

  def __init__(self, dataset, batch: int):
    self.dataset, self.batch, self.seen = dataset, batch, []
    self.steps_per_epoch, self.global_batch_size = 1, batch

  def eval_batches(self, index, test_sampling=None):
    self.seen.append((len(index), test_sampling))
    n = len(index)
    for s in range(0, n, self.batch):
      rows = np.arange(s, s + self.batch)
      valid = rows < n
      frames = np.stack([_frames_of(index, r) if ok else np.zeros_like(_frames_of(index, 0))
                         for r, ok in zip(rows, valid)])
      yield {'frames': frames, 'tracklet': np.where(valid, rows, -1).astype(np.int32)}


def _toy(mars_root, evals: dict, best: str):
  config = c.toy_config(mars_root)
  config.unlock()
  config.data.dataset, config.data.protocol = 'mars', 'torchreid'
  for name in list(config.evals.keys()):
    del config.evals[name]
  for name, fields in evals.items():
    config.evals[name] = evaluators.defaults(fields.pop('type'), **fields)
  config.eval.best_metric = best
  config.lock()
  setup = setup_lib.build(config, num_classes=4, steps_per_epoch=1, train=False)
  variables = setup.init_state(0).variables
  return config, setup, variables


def test_protocols_side_by_side_from_one_pass_of_descriptors(mars_root, tmp_path):
  evals = {p: dict(type='reid', protocol=p) for p in schema.PROTOCOLS}
  evals['rerank'] = dict(type='reid', protocol='torchreid', rerank=True)
  evals['ranked_list'] = dict(type='ranked_list', queries=2, top_k=3)
  config, setup, variables = _toy(mars_root, evals, 'official/mAP')
  ds = datasets.load('mars', mars_root, protocol='torchreid')
  data = _CountingData(ds, batch=8)
  runner = evaluators.build(config, setup, data, str(tmp_path))
  outcome = runner.run(variables, 3, final=True, title='t')

  # One pass: every test tracklet some evaluator reads went through the eval step once.
  test, query_rows, galleries = ds.test_split()
  needed = set(query_rows.tolist()).union(*[set(g.tolist()) for g in galleries.values()])
  assert sum(n for n, _ in data.seen) == len(needed)
  assert {s for _, s in data.seen} == {config.data.test_sampling}

  # Each protocol's metrics equal an evaluation of a dataset read with that protocol alone.
  for protocol in schema.PROTOCOLS:
    other = datasets.load('mars', mars_root, protocol=protocol)
    d2 = _CountingData(other, batch=8)
    qf = features.tracklet_features(setup, variables, other.query, d2.eval_batches(other.query))
    gf = features.tracklet_features(setup, variables, other.gallery,
                                    d2.eval_batches(other.gallery))
    want = evaluation.evaluate_features(qf, gf, other.query.pids, other.gallery.pids,
                                        other.query.camids, other.gallery.camids,
                                        metric='euclidean', protocol=protocol)
    got = outcome.of(protocol)
    assert got['mAP'] == pytest.approx(want['mAP'], abs=1e-6), protocol
    assert got['rank1'] == pytest.approx(want['rank1'], abs=1e-6), protocol
    assert outcome.details[protocol]['protocol'] == protocol
    if protocol == 'torchreid':
      dist = reranking.re_ranking_features(qf, gf, metric='euclidean')
      rr = evaluation.evaluate(dist, other.query.pids, other.gallery.pids, other.query.camids,
                               other.gallery.camids, protocol='torchreid')
      assert outcome.of('rerank')['mAP'] == pytest.approx(rr['mAP'], abs=1e-6)
      assert outcome.details['rerank']['rerank'] is True
  assert set(outcome.metrics) >= {f'{p}/mAP' for p in schema.PROTOCOLS} | {'rerank/mAP'}
  png = outcome.artifacts['ranked_list']
  assert png == str(tmp_path / 'ranked_list_step3.png') and os.path.getsize(png) > 0
  assert len(outcome.tables) == 4   # the picture has no table

  # Not the final evaluation: pictures (at='final') are skipped, metrics still computed.
  again = runner.run(variables, 4, final=False, title='t')
  assert 'ranked_list' not in again.artifacts and not os.path.exists(
      tmp_path / 'ranked_list_step4.png')
  assert again.metrics == pytest.approx(outcome.metrics)


@pytest.mark.parametrize('mutate, match', [
    (lambda e: e.reid.update(type='nope'), r"config.evals.reid.type='nope'"),
    (lambda e: e.reid.update(protocol='market'), r'config.evals.reid.protocol'),
    (lambda e: e.reid.update(at='sometimes'), r'config.evals.reid.at'),
    (lambda e: e.ranked_list.update(queries=0), r'config.evals.ranked_list.queries=0'),
    (lambda e: e.reid.update(rerank_lambda=2.0), r'rerank_lambda=2.0'),
])
def test_bad_evaluator_configs_are_named(mutate, match):
  config = importlib.import_module('configs.demo').get_config()
  config.unlock()
  mutate(config.evals)
  with pytest.raises(ConfigError, match=match):
    validation.validate(config, check_data=False)


def test_best_metric_and_model_specific_evaluators_are_checked():
  config = importlib.import_module('configs.demo').get_config()
  with config.unlocked():
    config.eval.best_metric = 'mAP'
  with pytest.raises(ConfigError, match=r"best_metric='mAP'.*'reid/mAP'"):
    validation.validate(config, check_data=False)
  nvan = importlib.import_module('configs.demo').get_config('model=nvan')
  assert 'gce_map' not in nvan.evals          # only GRL's recipe adds the GCE picture
  with nvan.unlocked():
    nvan.evals.gce_map = evaluators.defaults('gce_map')
  with pytest.raises(ConfigError, match=r"config.evals.gce_map.*not model 'nvan'"):
    validation.validate(nvan, check_data=False)
  with pytest.raises(ConfigError, match=r"has no field 'queriez'"):
    evaluators.defaults('ranked_list', queriez=3)


def test_protocols_config_argument_reports_them_side_by_side():
  config = importlib.import_module('configs.mars').get_config('protocols=official+cas')
  assert [k for k in config.evals if config.evals[k].type == 'reid'] == ['cas', 'official']
  assert config.evals.official.protocol == 'official' and config.eval.best_metric == \
      'official/mAP'
  validation.validate(config, check_data=False)
  with pytest.raises(ConfigError, match='protocols'):
    importlib.import_module('configs.mars').get_config('protocols=official+market')
