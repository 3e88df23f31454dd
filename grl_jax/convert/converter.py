"""One conversion: source files + a config -> (variables, completed config, meta).

The config is the experiment the weights are for (e.g. configs/mars.py:model=grl). Its
config.model.name must be the format's model; the architecture fields the weights imply
(stage sizes, width, hidden sizes, ...) are written into config.model, except those the user
set explicitly (`overridden`), which win as they would on the training command line (a
contradiction with the weights then fails as a mis-shaped key). The returned config is a copy.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Collection

import jax
import ml_collections
import numpy as np

from grl_jax.convert import formats
from grl_jax.convert import template
from grl_jax.errors import ConversionError


def _copy(config: Any) -> ml_collections.ConfigDict:
  # deepcopy keeps the FieldReferences live (e.g. GRL's loss.feature_dim follows
  # model.resnet_width), so the inferred fields propagate as a command-line override would.
  if isinstance(config, ml_collections.ConfigDict):
    return copy.deepcopy(config)
  return ml_collections.ConfigDict(dict(config))


def convert(fmt: str, config: Any, input_path: str, siamese: str | None = None,
            seed: int = 0, overridden: Collection[str] = ()) -> tuple[dict, Any, dict]:
  """Runs format `fmt` on `input_path` (and `siamese`) for `config`.

  Args:
    fmt: a key of `formats.FORMATS`.
    config: the experiment ConfigDict (or nested dict) with `model` and `data` sections.
    input_path: the source file or folder.
    siamese: the second source file of formats that read one (grl-official).
    seed: init seed of the variables the source does not provide.
    overridden: config.model fields set explicitly by the user; the inferred values do not
      replace them.
  Returns:
    (variables {'params', 'batch_stats'} as numpy, the config with the inferred model fields,
    meta {'source': {'format', 'input', 'siamese', 'ignored_keys'}, 'num_params'}).
  """
  spec = formats.get(fmt)
  config = _copy(config)
  name = config.model.get('name')
  if name != spec.model:
    raise ConversionError(f'--format={fmt} holds {spec.model!r} weights but config.model.name='
                          f'{name!r}; use a {spec.model} config (e.g. '
                          f'--config=configs/mars.py:model={spec.model})')
  if siamese and not spec.siamese:
    raise ConversionError(f'--siamese={siamese}: --format={fmt} reads one file (--input); only '
                          f'{sorted(n for n, f in formats.FORMATS.items() if f.siamese)} read '
                          'a Siamese checkpoint')
  sources = spec.read(input_path, siamese)
  inferred = spec.infer(sources, fmt)
  with config.unlocked(), config.model.ignore_type():
    for k, v in inferred.items():
      if k not in overridden:
        config.model[k] = list(v) if isinstance(v, tuple) else v
  variables, ignored = spec.variables(sources, config.model.to_dict(), seed=int(seed),
                                      clip_shape=template.clip_from_config(config), source=fmt)
  num = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(variables.get('params', {})))
  meta = {'source': {'format': fmt, 'input': os.path.abspath(input_path), 'siamese': siamese,
                     'ignored_keys': ignored},
          'num_params': num}
  return variables, config, meta
