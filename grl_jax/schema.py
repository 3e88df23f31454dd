"""Every enum of the config, defined once, and the few rules derived from config values.

A leaf module (standard library only): data_pipeline, the models, the trainer, the evaluators
and the configs all read their allowed values from here, and `grl_jax.validation.validate`
checks a config against them at start-up. The registries that turn a name into code (dataset
readers, frame samplers, batch samplers, models) are keyed by these tuples.
"""
from __future__ import annotations

from typing import Any

from grl_jax.errors import ConfigError

DATASETS = ('mars', 'duke', 'ilids', 'prid', 'lsvid', 'custom')
# Gallery composition + AP rule (data_pipeline/datasets/common.py, grl_jax/evaluation.py).
PROTOCOLS = ('official', 'torchreid', 'cas')
SPLITS = ('train', 'query', 'gallery')
EVAL_TYPES = ('reid', 'ranked_list', 'gce_map')                 # grl_jax/evaluators/
EVAL_AT = ('every', 'final')     # an evaluator runs at every evaluation, or only the last
EVAL_SPLITS = ('query', 'gallery')
TRAIN_SAMPLINGS = ('rrs', 'stride', 'evenly', 'random')     # data_pipeline/sampling.py
TEST_SAMPLINGS = ('rrs_test', 'dense', 'evenly')
BATCH_SAMPLERS = ('pair', 'pk')                              # data_pipeline/samplers.py
PK_MODES = ('replace', 'distinct', 'cross_cam')
ERASING_MODES = ('frame', 'clip')
OPTIMIZERS = ('sgd', 'adam')                                 # grl_jax/optim.py
DTYPES = ('float32', 'bfloat16')                             # compute dtype of the models
DISTANCES = ('euclidean', 'cosine', 'dot')                   # descriptor distance
TRIPLET_METRICS = ('euclidean', 'cosine')                    # grl_jax/objectives.py
ACCUMULATIONS = ('plain', 'se')                              # GRL's TRL accumulation unit
NL_TYPES = ('full', 'stripe')                                # NVAN / STE-NVAN non-local blocks
NL_TEMPORAL_GROUPS = ('clip', 'pairs')
ACCELS = ('cpu', 'gpu', 'tpu')
RNG_IMPLS = ('rbg', 'threefry2x32', 'unsafe_rbg')
MODES = ('train', 'eval', 'extract', 'search')               # --mode of grl_jax.main
EXPORT_FORMATS = ('stablehlo', 'onnx', 'savedmodel')         # python -m grl_jax.export
EXPORT_PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')            # jax.export lowering platforms
# Frame files of a folder tracklet (grl_jax/folders.py), compared lower-cased.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')


def check_choice(value: Any, allowed: tuple, where: str) -> Any:
  """Returns `value` if it is one of `allowed`, else a ConfigError naming `where`."""
  if value not in allowed:
    raise ConfigError(f'{where}={value!r}: expected one of {tuple(allowed)}')
  return value


def mesh_devices(config, device_count: int) -> int:
  """Devices on the 'data' mesh axis: `config.mesh.data`, -1 meaning all of them."""
  n = int(config.mesh.data)
  return device_count if n == -1 else n


def global_batch_size(config, mesh_size: int) -> int:
  """Clips per step over all devices: per_device x mesh size when per_device_batch_size > 0."""
  if int(config.train.per_device_batch_size) > 0:
    return int(config.train.per_device_batch_size) * mesh_size
  return int(config.train.global_batch_size)


def total_steps(config, steps_per_epoch: int) -> int:
  """`config.train.num_steps`, or optim.epochs x steps_per_epoch when it is -1."""
  if int(config.train.num_steps) > 0:
    return int(config.train.num_steps)
  return int(config.optim.epochs) * steps_per_epoch


def parse_arg(arg: str | None, **defaults: Any) -> dict:
  """Parses a config module's argument string `'k1=v1,k2,k3=v3'` against typed `defaults`.

  The string is what follows the colon in `--config=configs/mars.py:model=grl,runlocal`
  (big_vision style). A bare `k` sets `k=True`; values take the type of their default (bools
  accept true/false/1/0/yes/no). Unknown keys and unparsable values raise ConfigError.
  Returns an attribute-accessible dict (ml_collections.ConfigDict).
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  out = ml_collections.ConfigDict(defaults)
  for item in (arg or '').split(','):
    key, sep, value = (s.strip() for s in item.partition('='))
    if not key:
      continue
    if key not in defaults:
      raise ConfigError(f'config argument {key!r} (in {arg!r}) is unknown; known: '
                        f'{sorted(defaults)}')
    default = defaults[key]
    if not sep:
      if not isinstance(default, bool):
        raise ConfigError(f'config argument {key!r} needs a value ({key}=...)')
      out[key] = True
    elif isinstance(default, bool):
      if value.lower() not in ('true', 'false', '1', '0', 'yes', 'no'):
        raise ConfigError(f'config argument {key}={value!r}: expected true/false')
      out[key] = value.lower() in ('true', '1', 'yes')
    elif isinstance(default, (int, float)):
      try:
        out[key] = type(default)(value)
      except ValueError as e:
        raise ConfigError(f'config argument {key}={value!r}: expected '
                          f'{"an int" if isinstance(default, int) else "a float"}') from e
    else:
      out[key] = value
  return out
