"""Shared defaults and presets of every grl_jax config (pure data: no runtime logic).

A config module (`configs/mars.py`, ...) exposes `get_config(arg)`; `arg` is the short string
after the colon of `--config=configs/mars.py:model=grl,accel=gpu,runlocal` (big_vision style):
comma-separated `key=value` pairs, a bare `key` meaning `key=True`. The module builds

  base defaults (`base_config`)
  <- the model family's published recipe (`configs/models/<family>.py:recipe(name)`)
  <- dataset facts (root, protocol, splits)
  <- the accelerator preset (`apply_accel`) and, if asked, the quick local run (`apply_runlocal`)

and returns a *locked* ConfigDict: a mistyped `--config.optim.lr_multt=...` override, or a recipe
setting a field that does not exist, is an error instead of a silently ignored value.

The allowed values of every enum field are in grl_jax/schema.py; `grl_jax.validation.validate`
checks a config against them (and the batch against the devices, the data root, the model's
shape constraints) at start-up, before anything is compiled.

Schema (every field has a default here, so a recipe can only change existing fields):

  seed                      int, one seed for init, sampling and augmentation.
  data.*                    see `_data_defaults` (read by data_pipeline).
  model.*                   owned by the model family's recipe; `name` picks the registry entry.
  loss.*                    owned by the recipe (objective options).
  optim.*                   see `_optim_defaults` (read by grl_jax.optim).
  train.*                   see `_train_defaults` (read by grl_jax/trainer/).
  eval.*                    see `_eval_defaults` (shared by the evaluators).
  evals.<name>              one evaluator each (grl_jax/evaluators/: type 'reid', 'ranked_list',
                            'gce_map' and that type's fields); metrics are '<name>/<metric>'.
  init.*                    optional warm start from a converted checkpoint (ImageNet ResNet).
  mesh.data                 devices on the 'data' mesh axis; -1 = all devices.
  rng_impl                  JAX PRNG implementation ('rbg', 'threefry2x32', 'unsafe_rbg').
  accel                     the preset applied ('cpu', 'gpu', 'tpu'; informational).
"""
from __future__ import annotations

import importlib
import os

import ml_collections

from grl_jax import evaluators
from grl_jax import schema
from grl_jax.errors import ConfigError

ConfigDict = ml_collections.ConfigDict

# Model name -> configs/models/<family>.py holding its recipe.
MODEL_FAMILIES = {'grl': 'grl', 'nvan': 'nvan', 'ste_nvan': 'nvan', 'iaunet': 'iaunet'}

# Directory name under $GRL_JAX_DATA (default ./data) that the dataset configs use as root.
DEFAULT_DIRS = {'mars': 'MARS', 'duke': 'DukeMTMC-VideoReID', 'ilids': 'iLIDS-VID',
                'prid': 'PRID-2011', 'lsvid': 'LS-VID', 'custom': 'custom'}


# ------------------------------------------------------------------------------------------------
# Defaults


def _data_defaults() -> ConfigDict:
  return ConfigDict(dict(
      dataset='mars',
      root='',                   # '' with synthetic.enabled: <workdir>/data
      packed='',                 # a pack (python -m data_pipeline.pack) read instead of root
      protocol='torchreid',      # gallery composition (grl_jax.evaluation)
      split_id=0,                # iLIDS-VID / PRID-2011 split (0..9)
      height=256,
      width=128,
      seq_len=8,                 # T frames per clip
      train_sampling='rrs',
      sample_stride=4,           # for train_sampling='stride'
      test_sampling='rrs_test',
      batch_sampler='pair',
      p=0,                       # identities per batch (batch_sampler='pk'; 0 = B / k)
      k=0,                       # tracklets per identity ('pk'; 0 = B / p, or 4 if both 0)
      pk_mode='replace',         # see data_pipeline.samplers
      flip=True,
      erasing_prob=0.0,
      erasing_mode='frame',
      pad_crop=0,
      strict=False,              # corrupt/missing frame: raise instead of replacing
      prefetch=2,                # batches prepared ahead
      threads=0,                 # tf.data private thread pool (0 = tf.data's default)
      synthetic=ConfigDict(dict(
          enabled=False,         # generate a MARS-format synthetic dataset if absent
          num_train_ids=64,
          num_test_ids=32,
          seed=0,
          height=256,
          width=128,
      )),
  ))


def _optim_defaults() -> ConfigDict:
  return ConfigDict(dict(
      name='sgd',                # 'sgd' (momentum, optionally Nesterov) or 'adam'
      lr=1e-3,                   # base learning rate (multiplier 1)
      momentum=0.9,              # sgd
      nesterov=True,             # sgd
      b1=0.9,                    # adam
      b2=0.999,                  # adam
      eps=1e-8,                  # adam
      weight_decay=5e-4,         # coupled L2 (added to the gradient before momentum/Adam)
      no_decay=(),               # regexes of params excluded from weight decay
      frozen=(),                 # regexes of params that never change
      # (regex on the '/'-joined param path, lr multiplier); first match wins, default 1.
      lr_mult=(),
      epochs=60,                 # training length in epochs (train.num_steps overrides)
      decay_epochs=(15, 30, 45),  # lr *= decay_factor at the start of each
      decay_factor=0.1,
      warmup_epochs=0.0,         # linear warm-up from 0 (0 = none, as in all three recipes)
      grad_clip_norm=0.0,        # global-norm clipping (0 = off)
  ))


def _train_defaults() -> ConfigDict:
  return ConfigDict(dict(
      global_batch_size=16,      # clips per step over all devices (GRL: 8 pairs)
      per_device_batch_size=-1,  # > 0: global batch = this x device count (overrides)
      num_steps=-1,              # -1: optim.epochs x steps_per_epoch
      steps_per_epoch=-1,        # -1: from the batch sampler (one pass over the train set)
      log_every_steps=50,
      eval_every_epochs=5,       # 0: evaluate only at the end
      eval_at_start=False,       # also evaluate the untrained model (step 0)
      checkpoint_every_steps=1000,
      keep_checkpoints=2,        # latest K kept, plus the best by validation mAP
      async_checkpoints=True,
  ))


def _eval_defaults() -> ConfigDict:
  return ConfigDict(dict(
      batch_size=32,             # clips per eval batch over all devices
      max_rank=50,
      subset_ids=0,              # > 0: evaluate on the first N query identities only (quick runs)
      best_metric='reid/mAP',    # '<evaluator>/<metric>' that picks the best checkpoint
  ))


def _evals_defaults() -> ConfigDict:
  # Every field of each type is present (evaluators.defaults), so overrides such as
  # --config.evals.reid.rerank=True work on the locked config.
  return ConfigDict({'reid': evaluators.defaults('reid'),
                     'ranked_list': evaluators.defaults('ranked_list')})


def base_config() -> ConfigDict:
  """All fields with neutral defaults; recipes and dataset configs override them."""
  config = ConfigDict()
  config.seed = 0
  config.data = _data_defaults()
  config.model = ConfigDict({'name': 'grl'})
  config.loss = ConfigDict()
  config.optim = _optim_defaults()
  config.train = _train_defaults()
  config.eval = _eval_defaults()
  config.evals = _evals_defaults()
  config.init = ConfigDict(dict(
      checkpoint='',             # checkpoint dir written by grl_jax.convert (or a workdir)
      prefix='',                 # '/'-path in the model's params where its tree goes
      step=-1,                   # -1: latest
  ))
  config.mesh = ConfigDict({'data': -1})
  # JAX PRNG behind parameter init and in-model randomness. 'rbg' compiles the initialiser
  # 3-4x faster than JAX's default 'threefry2x32' (a GRL init: 30 s -> 8 s on 2 CPU cores) and
  # is fast on TPU; streams differ between implementations, not between runs or device counts.
  # (The data pipeline draws its randomness from numpy, independently of this.)
  config.rng_impl = 'rbg'
  config.accel = 'cpu'           # informational: the preset applied
  return config


def default_root(dataset: str) -> str:
  """`$GRL_JAX_DATA/<dataset dir>` (GRL_JAX_DATA defaults to ./data)."""
  return os.path.join(os.environ.get('GRL_JAX_DATA', 'data'), DEFAULT_DIRS[dataset])


# ------------------------------------------------------------------------------------------------
# Assembly


def _merge(section: ConfigDict, overrides: ConfigDict | dict, where: str):
  """Updates existing fields of `section` only; an unknown field is a ConfigError."""
  for key, value in dict(overrides).items():
    if key not in section:
      raise ConfigError(f'{where}: field {key!r} does not exist in the base config '
                        f'(known: {sorted(section.keys())})')
    if isinstance(section[key], ConfigDict) and isinstance(value, (dict, ConfigDict)):
      _merge(section[key], value, f'{where}.{key}')
    else:
      with section.ignore_type():
        section[key] = value


def recipe(model: str) -> ConfigDict:
  """The published recipe of `model` from configs/models/<family>.py."""
  if model not in MODEL_FAMILIES:
    raise ConfigError(f'config argument model={model!r} has no recipe; known: '
                      f'{sorted(MODEL_FAMILIES)}')
  module = importlib.import_module(f'configs.models.{MODEL_FAMILIES[model]}')
  return module.recipe(model)


def get_config(dataset: str, model: str = 'grl') -> ConfigDict:
  """Base defaults + the model's recipe for `dataset` (unlocked; callers lock)."""
  config = base_config()
  config.data.dataset = dataset
  config.data.root = default_root(dataset)
  r = recipe(model)
  config.model = ConfigDict(r.model)
  config.loss = ConfigDict(r.get('loss', {}))
  for section in ('optim', 'data', 'train', 'eval'):
    if section in r:
      _merge(config[section], r[section], f'configs/models/{MODEL_FAMILIES[model]}.py '
             f'recipe({model!r}).{section}')
  for name, evaluator in dict(r.get('evals', {})).items():   # a recipe may add evaluators
    config.evals[name] = ConfigDict(dict(evaluator))
  return config


def set_protocols(config: ConfigDict, protocols: str) -> ConfigDict:
  """Replaces the 'reid' evaluator by one per protocol of `protocols` ('official+cas'), named
  after it, all computed from the same descriptors; the first one picks the best checkpoint."""
  names = [p for p in protocols.split('+') if p]
  for p in names:
    schema.check_choice(p, schema.PROTOCOLS, 'config argument protocols')
  reid = config.evals.reid
  del config.evals['reid']
  for p in names:
    config.evals[p] = ConfigDict(dict(reid.to_dict(), protocol=p))
  metric = str(config.eval.best_metric).split('/', 1)[-1]
  config.eval.best_metric = f'{names[0]}/{metric}'
  return config


def apply_accel(config: ConfigDict, accel: str) -> ConfigDict:
  """Accelerator preset: compute dtype and eval batch. The training batch stays the recipe's.

  cpu: float32. gpu / tpu: bfloat16 compute (params, BN statistics and losses stay float32),
  larger eval batches. The mesh is always one 'data' axis over all devices.
  """
  schema.check_choice(accel, schema.ACCELS, 'config argument accel')
  config.accel = accel
  if 'dtype' in config.model:
    config.model.dtype = 'float32' if accel == 'cpu' else 'bfloat16'
  config.eval.batch_size = {'cpu': 16, 'gpu': 64, 'tpu': 128}[accel]
  config.data.prefetch = 2 if accel == 'cpu' else 4
  return config


def apply_runlocal(config: ConfigDict) -> ConfigDict:
  """A quick smoke run on a laptop: a few small steps, tiny eval on a few identities."""
  config.train.global_batch_size = 4
  config.train.per_device_batch_size = -1
  if config.data.batch_sampler == 'pk':
    config.data.p, config.data.k = 2, 2
  config.train.num_steps = 10
  config.train.log_every_steps = 1
  config.train.checkpoint_every_steps = 5
  config.train.eval_every_epochs = 0
  config.eval.batch_size = 4
  config.eval.subset_ids = 5
  config.evals.ranked_list.queries = 2
  config.data.test_sampling = 'rrs_test'
  config.data.prefetch = 1
  return config


# The `get_config(arg)` arguments every dataset module accepts (configs/{mars,duke,...}.py).
# protocols: e.g. 'official+torchreid+cas' reports those side by side (`set_protocols`).
DATASET_ARGS = dict(model='grl', accel='cpu', root='', runlocal=False, protocols='')


def finish_dataset_config(config: ConfigDict, args: ConfigDict) -> ConfigDict:
  """The common tail of a dataset module's get_config: root, accelerator preset, runlocal, lock."""
  if args.root:
    config.data.root = args.root
  apply_accel(config, args.accel)
  if args.runlocal:
    apply_runlocal(config)
  if args.protocols:
    set_protocols(config, args.protocols)
  config.lock()
  return config
