"""configs/: every config builds, is locked, carries its recipe; the start-up validator
(grl_jax/validation.py) rejects bad input."""
from __future__ import annotations

import importlib
import os

import ml_collections
import pytest

from configs import base
from data_pipeline import datasets
from grl_jax import schema
from grl_jax import validation
from grl_jax.errors import ConfigError

DATASET_CONFIGS = ('mars', 'duke', 'ilids', 'prid', 'lsvid')


def _models():
  """Model names whose recipe module exists (the NVAN/IAUnet recipes are another task's)."""
  out = []
  for name, family in base.MODEL_FAMILIES.items():
    try:
      importlib.import_module(f'configs.models.{family}')
    except ModuleNotFoundError:
      continue
    out.append(name)
  return out


@pytest.mark.parametrize('dataset', DATASET_CONFIGS)
def test_dataset_configs_build_locked_and_validate(dataset, tmp_path):
  module = importlib.import_module(f'configs.{dataset}')
  for model in _models():
    config = module.get_config(f'model={model},root={tmp_path}')
    assert config.is_locked and config.model.name == model
    assert config.data.dataset == dataset and config.data.root == str(tmp_path)
    validation.validate(config, device_count=1)
    with pytest.raises(AttributeError):
      config.optim.lr_multt = 1.0        # unknown keys are errors, not silently ignored
  config = module.get_config('runlocal,accel=gpu')
  assert config.train.num_steps == 10 and config.model.dtype == 'bfloat16'


def test_grl_mars_recipe_is_the_published_one():
  c = importlib.import_module('configs.mars').get_config('model=grl')
  assert (c.optim.name, c.optim.lr, c.optim.momentum, c.optim.nesterov) == ('sgd', 1e-3, 0.9,
                                                                            True)
  assert c.optim.weight_decay == 5e-4 and c.optim.no_decay == () and c.optim.frozen == ()
  assert tuple(c.optim.decay_epochs) == (15, 30, 45) and c.optim.decay_factor == 0.1
  assert c.optim.epochs == 60 and c.optim.warmup_epochs == 0
  assert dict(c.optim.lr_mult) == {r'^backbone/': 1.0, r'^gce/': 1.0, r'.*': 2.0}
  assert (c.train.global_batch_size, c.data.seq_len, c.data.batch_sampler) == (16, 8, 'pair')
  assert (c.data.train_sampling, c.data.height, c.data.width) == ('rrs', 256, 128)
  assert c.data.erasing_prob == 0.5 and c.data.flip and c.model.last_stride == 1
  assert c.loss.verification_weight == 20.0 and c.loss.oim_scalar == 30.0
  assert c.data.protocol == 'cas'
  # The OIM table width follows the backbone width, also after an override.
  assert c.loss.feature_dim == 32 * c.model.resnet_width == 2048
  c.model.resnet_width = 8
  assert c.loss.feature_dim == 256


def test_parse_arg_types_and_errors():
  a = schema.parse_arg('model=nvan,runlocal,split=3,lr=0.5', model='grl', runlocal=False,
                     split=0, lr=1.0)
  assert (a.model, a.runlocal, a.split, a.lr) == ('nvan', True, 3, 0.5)
  with pytest.raises(ConfigError, match="'modle'.*known"):
    schema.parse_arg('modle=grl', model='grl')
  with pytest.raises(ConfigError, match='expected an int'):
    schema.parse_arg('split=x', split=0)
  with pytest.raises(ConfigError, match='needs a value'):
    schema.parse_arg('split', split=0)
  with pytest.raises(ConfigError, match='no recipe'):
    base.recipe('resnet')


def _valid(tmp_path) -> ml_collections.ConfigDict:
  c = importlib.import_module('configs.mars').get_config(f'root={tmp_path}')
  c.unlock()
  return c


@pytest.mark.parametrize('change, devices, message', [
    (dict(train__global_batch_size=12), 8, 'not divisible by the 8 devices'),
    (dict(train__global_batch_size=15), 1, 'needs an even batch'),
    (dict(data__batch_sampler='pk', data__p=4, data__k=3), 1, 'P x K = global batch'),
    (dict(data__batch_sampler='pk', data__k=5), 1, 'not a multiple of config.data.k=5'),
    (dict(data__protocol='market'), 1, "config.data.protocol='market'"),
    (dict(data__test_sampling='all'), 1, 'data.test_sampling'),
    (dict(optim__name='lamb'), 1, 'optim.name'),
    (dict(model__dtype='float16x'), 1, 'model.dtype'),
    (dict(data__split_id=3), 1, 'only ilids/prid have splits'),
    (dict(mesh__data=4), 2, 'mesh.data=4'),
    (dict(eval__batch_size=6), 4, 'eval.batch_size=6'),
    (dict(optim__decay_epochs=(30, 15)), 1, 'ascending'),
    (dict(optim__lr_mult=(('^a', ),)), 1, 'lr_mult entry'),
])
def test_validate_rejects_inconsistent_values(tmp_path, change, devices, message):
  c = _valid(tmp_path)
  for key, value in change.items():
    section, field = key.split('__')
    with c[section].ignore_type():
      c[section][field] = value
  with pytest.raises(ConfigError, match=message.replace('(', r'\(').replace(')', r'\)')):
    validation.validate(c, device_count=devices)


def test_per_device_batch_scales_with_devices(tmp_path):
  c = _valid(tmp_path)
  c.train.per_device_batch_size = 2
  validation.validate(c, device_count=8)
  assert schema.global_batch_size(c, 8) == 16


def test_missing_data_root_says_what_to_put_there(tmp_path):
  c = _valid(tmp_path / 'nope')
  with pytest.raises(ConfigError) as e:
    validation.validate(c)
  msg = str(e.value)
  for expected in ('does not exist', 'bbox_train', 'bbox_test', 'tracks_train_info.mat',
                   'query_IDX.mat', '--config.data.root', 'configs/demo.py'):
    assert expected in msg, (expected, msg)
  assert set(base.DEFAULT_DIRS) == set(schema.DATASETS)
  assert all(datasets.root_help(name) for name in schema.DATASETS)


def test_demo_config_uses_synthetic_data_and_a_reduced_grl():
  demo = importlib.import_module('configs.demo').get_config()
  assert demo.data.synthetic.enabled and demo.data.root == ''
  validation.validate(demo)                          # no root needed: generated into the workdir
  assert demo.model.name == 'grl' and demo.model.resnet_width < 64
  assert tuple(demo.model.stage_sizes) == (1, 1, 1, 1)
  assert demo.loss.feature_dim == 32 * demo.model.resnet_width
  assert demo.train.eval_at_start and demo.evals.ranked_list.at == 'final'
  assert os.path.basename(base.default_root('mars')) == 'MARS'
