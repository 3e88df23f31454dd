"""ImageNet initialisation: a torchvision ResNet state dict -> the trunk of a fresh model.

The source is a torchvision ResNet (Bottleneck) `state_dict()` (`conv1.weight`,
`layer1.0.downsample.0.weight`, ..., `fc.*`), as `.pth` or `.npz` with the same keys. Its
stage sizes and width set config.model.stage_sizes / resnet_width. The ResNet trunk of the
target model (the sub-tree under `prefix`, e.g. GRL's `backbone`, or the top-level `conv1`,
`bn1`, `layer{s}_{j}` of NVAN / STE-NVAN / IAUnet when `prefix` is empty) takes the weights;
every other variable keeps the model's own initialiser (seed `--seed`). Eval-mode init: a
classifier is not part of the output (its width is the training set's identity count, and the
trainer's warm start would reject a mismatch). `fc.*` and `num_batches_tracked` are reported
as ignored.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from grl_jax.convert import template as template_lib
from grl_jax.convert import torch_layout as tl
from grl_jax.errors import ConversionError

PyTree = Any
State = tl.State
PART = 'resnet'   # the single source state dict of these formats


def read(input_path: str, siamese: str | None = None) -> dict[str, State]:
  """{'resnet': state dict of `input_path`}."""
  del siamese
  return {PART: tl.load_state_dict(input_path)}


def infer(sources: Mapping[str, State], source: str = 'torchvision-resnet50') -> dict:
  """config.model fields implied by the ResNet: stage_sizes (blocks per stage), resnet_width."""
  state = sources[PART]
  if 'conv1.weight' not in state:
    raise ConversionError(f"{source}: missing key 'conv1.weight' (is this a torchvision ResNet "
                          'state dict?)')
  stages = tl.stage_sizes(state, lambda s, j: f'layer{s}.{j}.conv1.weight')
  return dict(stage_sizes=stages, resnet_width=int(state['conv1.weight'].shape[0]))


def _ignore(part: str, key: str) -> bool:
  del part
  return key.endswith('num_batches_tracked') or key.startswith('fc.')


def trunk_into(template: PyTree, state: Mapping[str, np.ndarray], prefix: str = 'backbone',
               source: str = 'torchvision-resnet50') -> tuple[dict, list[str]]:
  """Replaces the ResNet of `template` (initialised values) by `state`.

  Args:
    template: variables of the target model (numpy values).
    state: torchvision ResNet state dict.
    prefix: top-level module holding the ResNet; '' when the trunk modules are top level.
    source: names the source in error messages.
  Returns:
    (variables as numpy, ignored keys). Variables outside the trunk keep the template's values.
  """
  def key_fn(collection, path):
    if prefix:
      return PART + ':' + tl.resnet_torch_key(collection, path[1:]) if path[0] == prefix else None
    return PART + ':' + tl.resnet_torch_key(collection, path) if tl.is_resnet_module(
        path[0]) else None
  sources = {PART: dict(state)}
  variables, used = tl.fill(template, key_fn, sources, source)
  return variables, tl.check_unused(sources, used, _ignore, source)


def variables(sources: Mapping[str, State], model_cfg: Mapping[str, Any], *, seed: int = 0,
              clip_shape: tuple[int, ...] = template_lib.DEFAULT_CLIP,
              source: str = 'torchvision-resnet50', prefix: str = 'backbone',
              jit_init: bool = True) -> tuple[dict, list[str]]:
  """Fresh `model_cfg` model (seed `seed`) with its trunk from `sources['resnet']`.

  `prefix` and `jit_init` (see `template.model_variables`) come from the format's entry.
  """
  fresh = template_lib.model_variables(model_cfg, seed=seed, clip_shape=clip_shape,
                                       jit=jit_init)
  return trunk_into(fresh, sources[PART], prefix, source)


def imagenet_variables(state: Mapping[str, np.ndarray], model_cfg: Mapping[str, Any],
                       seed: int = 0, source: str = 'torchvision-resnet50', prefix: str = '',
                       clip_shape: tuple[int, ...] = template_lib.DEFAULT_CLIP,
                       jit_init: bool = False) -> tuple[dict, list[str]]:
  """One call for scripts and tests: state dict -> (variables, ignored keys) of a fresh model
  whose trunk modules are top level (NVAN, STE-NVAN, IAUnet; GRL: prefix='backbone')."""
  return variables({PART: dict(state)}, model_cfg, seed=seed, clip_shape=clip_shape,
                   source=source, prefix=prefix, jit_init=jit_init)
