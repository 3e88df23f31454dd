"""jackie840129/STE-NVAN checkpoints <-> NVAN / STE-NVAN variables (`grl_jax/models/nvan.py`).

The source is the state dict that the official `train_NL.py` saves
(`torch.save(nn.DataParallel(CNN(...)).state_dict())`, e.g. the README's `NVAN.pth`,
`STE_NVAN.pth`; `.pth` or `.npz` with the same keys). Keys:

  module.features.backbone.{conv1,bn1,layer{s}.{j}.*}   ResNet-50 trunk (torchvision names)
  module.features.backbone.NL_{s}.{i}.{theta,phi,g}.*   1x1x1 Conv3d C -> C/2 (+ bias)
  module.features.backbone.NL_{s}.{i}.W.0.*             1x1x1 Conv3d C/2 -> C (+ bias)
  module.features.backbone.NL_{s}.{i}.W.1.*             BatchNorm3d(C)
  module.bottleneck.*                                   BNNeck BatchNorm1d(2048), bias == 0
  module.classifier.weight                              Linear(2048, #ids), no bias

NL_s.i becomes the Flax module `nl{s}_{i}` (non-local block i of stage s, placed after
bottleneck `stage_size - non_layers[s] + i`). The architecture (stage sizes, width, NL blocks
per stage) is read from the keys; the stripe count of STE-NVAN has no parameters
(`--config.model.stripes`). The official BNNeck bias is frozen at 0 and our BNNeck has none: a
zero `bottleneck.bias` is reported as ignored, a non-zero one is an error. Conv3d 1x1x1
(O, I, 1, 1, 1) kernels become (O, I), then Dense (I, O).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import numpy as np

from grl_jax.convert import template as template_lib
from grl_jax.convert import torch_layout as tl
from grl_jax.errors import ConversionError

PyTree = Any
State = tl.State

_BACKBONE = 'features.backbone.'
_NL = re.compile(r'^nl(\d+)_(\d+)$')
_NL_SUB = {'w_conv': 'W.0', 'w_bn': 'W.1'}
_BNNECK_BIAS = 'bottleneck.bias'
PART = 'state'   # the single source state dict of these formats


# ------------------------------------------------------------------------------------------------
# Key mapping.
def official_key(collection: str, path: tuple[str, ...]) -> str:
  """Official state-dict key (without 'module.') of an `NVAN` variable.

  ('nl3_1', 'w_bn', 'scale') -> 'features.backbone.NL_3.1.W.1.weight';
  ('layer2_0', 'downsample_conv', 'kernel') -> 'features.backbone.layer2.0.downsample.0.weight';
  ('bnneck', 'var') in batch_stats -> 'bottleneck.running_var'.
  """
  top = path[0]
  leaf = tl.leaf_name(collection, path[-1])
  if top == 'bnneck':
    return f'bottleneck.{leaf}'
  if top == 'classifier':
    return f'classifier.{leaf}'
  nl = _NL.match(top)
  if nl:
    subs = [_NL_SUB.get(m, m) for m in path[1:-1]]
    return '.'.join([f'{_BACKBONE}NL_{nl.group(1)}.{nl.group(2)}', *subs, leaf])
  return _BACKBONE + tl.resnet_torch_key(collection, path)


def squeeze_conv3d(state: Mapping[str, np.ndarray]) -> State:
  """1x1x1 Conv3d kernels (O, I, 1, 1, 1) -> (O, I), the layout of a Linear / Dense source."""
  out = {}
  for key, value in state.items():
    value = np.asarray(value)
    if value.ndim == 5:
      if value.shape[2:] != (1, 1, 1):
        raise ConversionError(f'{key}: expected a 1x1x1 Conv3d kernel, got shape {value.shape}')
      value = value.reshape(value.shape[:2])
    out[key] = value
  return out


def to_official(variables: PyTree) -> State:
  """Inverse mapping: `NVAN` variables -> an official DataParallel state dict (numpy).

  Used to build test fixtures; Conv3d kernels get their (1, 1, 1) tail back and the BNNeck its
  zero bias.
  """
  out = {}
  for (collection, *path), value in tl.flatten(jax.device_get(variables)).items():
    key = official_key(collection, tuple(path))
    value = tl.flax_to_torch(np.asarray(value), path[-1])
    if path[0].startswith('nl') and path[-1] == 'kernel':
      value = value[:, :, None, None, None]
    out[tl.DATA_PARALLEL + key] = value
  scale = variables['params']['bnneck']['scale']
  out[tl.DATA_PARALLEL + _BNNECK_BIAS] = np.zeros(np.shape(scale), np.float32)
  return out


def strip_data_parallel(state: Mapping[str, Any], source: str) -> State:
  """Drops the `module.` prefix that nn.DataParallel puts on every key (required here)."""
  bad = [k for k in state if not k.startswith(tl.DATA_PARALLEL)]
  if bad:
    raise ConversionError(f'{source}: key {bad[0]!r} lacks the "module." prefix of an '
                          'nn.DataParallel state dict (the official train_NL.py saves one)')
  return squeeze_conv3d(tl.strip_data_parallel(state))


# ------------------------------------------------------------------------------------------------
# Architecture and conversion.
def infer_official(state: Mapping[str, np.ndarray], source: str) -> dict:
  """config.model fields implied by an official state dict (prefix already stripped)."""
  if _BACKBONE + 'conv1.weight' not in state:
    raise ConversionError(f"{source}: missing key '{_BACKBONE}conv1.weight' (not an official "
                          'NVAN / STE-NVAN checkpoint?)')
  stages, non_layers = [], []
  for s in range(1, 5):
    blocks = {int(m.group(1)) for k in state
              if (m := re.match(re.escape(f'{_BACKBONE}layer{s}.') + r'(\d+)\.', k))}
    nls = {int(m.group(1)) for k in state
           if (m := re.match(re.escape(f'{_BACKBONE}NL_{s}.') + r'(\d+)\.', k))}
    if not blocks:
      raise ConversionError(f"{source}: no keys '{_BACKBONE}layer{s}.*' (not a ResNet trunk)")
    stages.append(max(blocks) + 1)
    non_layers.append(max(nls) + 1 if nls else 0)
  # The released backbone: no ReLU after the stem BN, layer4 stride 1 (`last_stride=1`).
  return dict(stage_sizes=tuple(stages),
              resnet_width=int(state[_BACKBONE + 'conv1.weight'].shape[0]),
              non_layers=tuple(non_layers), stem_relu=False, last_stride=1)


def convert_official(state: Mapping[str, np.ndarray], model_cfg: Mapping[str, Any],
                     source: str, clip_shape: tuple[int, ...] = template_lib.DEFAULT_CLIP
                     ) -> tuple[dict, list[str]]:
  """Official state dict (prefix stripped, Conv3d squeezed) -> (variables, ignored keys)."""
  if 'classifier.weight' not in state:
    raise ConversionError(f"{source}: missing key 'classifier.weight'")
  num_classes = int(state['classifier.weight'].shape[0])
  # train=True: the classifier exists only in the training graph.
  template = template_lib.model_variables(model_cfg, num_classes=num_classes, train=True,
                                          clip_shape=clip_shape)
  sources = {PART: dict(state)}
  variables, used = tl.fill(template, lambda c, p: f'{PART}:{official_key(c, p)}', sources,
                            source)
  if _BNNECK_BIAS in state and np.any(np.asarray(state[_BNNECK_BIAS]) != 0):
    raise ConversionError(f'{source}: {_BNNECK_BIAS!r} is non-zero (max |b| = '
                          f'{np.abs(state[_BNNECK_BIAS]).max():.3g}); the official BNNeck '
                          'freezes it at 0 and this model has no BNNeck bias')
  ignore = lambda part, key: key.endswith('num_batches_tracked') or key == _BNNECK_BIAS  # noqa
  return variables, tl.check_unused(sources, used, ignore, source)


def official_variables(state: Mapping[str, Any], name: str, stripes: int = 16,
                       source: str = 'checkpoint', model_cfg: Mapping[str, Any] | None = None
                       ) -> tuple[dict, dict, int]:
  """One call for scripts and tests: DataParallel state dict -> (variables, model cfg, #ids).

  `model_cfg` (e.g. a recipe's config.model) supplies the fields the weights do not imply; the
  inferred architecture, `name` and `stripes` override it.
  """
  plain = strip_data_parallel(state, source)
  cfg = {**dict(model_cfg or {}), 'name': name, **infer_official(plain, source),
         'stripes': int(stripes)}
  variables, _ = convert_official(plain, cfg, source)
  return variables, cfg, int(plain['classifier.weight'].shape[0])


# ------------------------------------------------------------------------------------------------
# The format interface (grl_jax/convert/formats.py).
def read(input_path: str, siamese: str | None = None) -> dict[str, State]:
  """{'state': the DataParallel-stripped, Conv3d-squeezed state dict of `input_path`}."""
  del siamese
  return {PART: strip_data_parallel(tl.load_state_dict(input_path), input_path)}


def infer(sources: Mapping[str, State], source: str = 'nvan-official') -> dict:
  """Architecture fields of config.model implied by `read`'s state dict."""
  return infer_official(sources[PART], source)


def variables(sources: Mapping[str, State], model_cfg: Mapping[str, Any], *, seed: int = 0,
              clip_shape: tuple[int, ...] = template_lib.DEFAULT_CLIP,
              source: str = 'nvan-official') -> tuple[dict, list[str]]:
  """`read`'s state dict -> (variables, ignored keys); every variable comes from it."""
  del seed
  return convert_official(sources[PART], model_cfg, source, clip_shape)
