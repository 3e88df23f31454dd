"""Weight import for NVAN, STE-NVAN and IAUnet (formats of `python -m grl_jax.convert`).

Importing this module registers its formats in `grl_jax.convert.FORMATS` (convert.py imports it
in `_load_plugins`):

* `nvan-official`, `ste-nvan-official`: the state dict that jackie840129/STE-NVAN's
  `train_NL.py` saves (`torch.save(nn.DataParallel(CNN(...)).state_dict())`, e.g. the README's
  `NVAN.pth`, `STE_NVAN.pth`; `.pth` or `.npz` with the same keys). Keys:

    module.features.backbone.{conv1,bn1,layer{s}.{j}.*}   ResNet-50 trunk (torchvision names)
    module.features.backbone.NL_{s}.{i}.{theta,phi,g}.*   1x1x1 Conv3d C -> C/2 (+ bias)
    module.features.backbone.NL_{s}.{i}.W.0.*             1x1x1 Conv3d C/2 -> C (+ bias)
    module.features.backbone.NL_{s}.{i}.W.1.*             BatchNorm3d(C)
    module.bottleneck.*                                   BNNeck BatchNorm1d(2048), bias == 0
    module.classifier.weight                              Linear(2048, #ids), no bias

  NL_s.i becomes the Flax module `nl{s}_{i}` (non-local block i of stage s, placed after
  bottleneck `stage_size - non_layers[s] + i`). The architecture (stage sizes, width, NL blocks
  per stage) is read from the keys; the stripe count of STE-NVAN has no parameters
  (`--config.model.stripes`, default 16). The official BNNeck bias is frozen at 0 and our
  BNNeck has none: a zero `bottleneck.bias` is reported as ignored, a non-zero one is an error.
  Example:

    python -m grl_jax.convert --format=nvan-official --input=ckpt/NVAN.pth \
        --output=ckpt/nvan_jax --config=configs/mars.py:model=nvan

* `torchvision-resnet50-nvan`, `torchvision-resnet50-ste-nvan`, `torchvision-resnet50-iaunet`:
  ImageNet initialisation. The ResNet trunk (top level of these models: `conv1`, `bn1`,
  `layer{s}_{j}`) from a torchvision `resnet50` state dict, with `grl_jax.convert`'s
  torchvision key mapping; every other variable (non-local / IAU blocks, BNNeck, classifier)
  from the model's own initialisers (seed `--seed`); the classifier is left out (its width is
  the training set's identity count). Use the output as `--config.init.checkpoint` (with
  `init.prefix` empty).

Layouts: Conv2d OIHW -> HWIO; Conv3d 1x1x1 (O, I, 1, 1, 1) -> (O, I) -> Dense (I, O);
Linear (O, I) -> (I, O); BN weight/bias/running_mean/running_var -> scale/bias (params),
mean/var (batch_stats). A missing, mis-shaped or unexpected key is a
`grl_jax.convert.ConversionError` naming the key.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from grl_jax import convert

PyTree = Any
State = dict[str, np.ndarray]
ConversionError = convert.ConversionError

_BACKBONE = 'features.backbone.'
_NL = re.compile(r'^nl(\d+)_(\d+)$')
_NL_SUB = {'w_conv': 'W.0', 'w_bn': 'W.1'}
_BNNECK_BIAS = 'bottleneck.bias'
_PART = 'state'   # the single source state dict of these formats


# ------------------------------------------------------------------------------------------------
# Key mapping.


def official_key(collection: str, path: tuple[str, ...]) -> str:
  """Official state-dict key (without 'module.') of an `NVAN` variable.

  ('nl3_1', 'w_bn', 'scale') -> 'features.backbone.NL_3.1.W.1.weight';
  ('layer2_0', 'downsample_conv', 'kernel') -> 'features.backbone.layer2.0.downsample.0.weight';
  ('bnneck', 'var') in batch_stats -> 'bottleneck.running_var'.
  """
  top = path[0]
  leaf = convert.leaf_name(collection, path[-1])
  if top == 'bnneck':
    return f'bottleneck.{leaf}'
  if top == 'classifier':
    return f'classifier.{leaf}'
  nl = _NL.match(top)
  if nl:
    subs = [_NL_SUB.get(m, m) for m in path[1:-1]]
    return '.'.join([f'{_BACKBONE}NL_{nl.group(1)}.{nl.group(2)}', *subs, leaf])
  return _BACKBONE + convert.resnet_torch_key(collection, path)


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
  for (collection, *path), value in convert.flatten(jax.device_get(variables)).items():
    key = official_key(collection, tuple(path))
    value = convert.flax_to_torch(np.asarray(value), path[-1])
    if path[0].startswith('nl') and path[-1] == 'kernel':
      value = value[:, :, None, None, None]
    out['module.' + key] = value
  scale = variables['params']['bnneck']['scale']
  out['module.' + _BNNECK_BIAS] = np.zeros(np.shape(scale), np.float32)
  return out


# ------------------------------------------------------------------------------------------------
# Official NVAN / STE-NVAN.


def strip_data_parallel(state: Mapping[str, Any], source: str) -> State:
  """Drops the `module.` prefix that nn.DataParallel puts on every key (required here)."""
  bad = [k for k in state if not k.startswith(convert.DATA_PARALLEL)]
  if bad:
    raise ConversionError(f'{source}: key {bad[0]!r} lacks the "module." prefix of an '
                          'nn.DataParallel state dict (the official train_NL.py saves one)')
  return squeeze_conv3d(convert.strip_data_parallel(state))


def infer_official(state: Mapping[str, np.ndarray], name: str, source: str) -> dict:
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
  return dict(name=name, stage_sizes=tuple(stages),
              resnet_width=int(state[_BACKBONE + 'conv1.weight'].shape[0]),
              non_layers=tuple(non_layers), stem_relu=False, last_stride=1)


def _template_input(model_cfg: Mapping[str, Any]) -> tuple[int, ...]:
  # Parameter shapes do not depend on the input size: the smallest input every variant accepts
  # (layer3 height a multiple of the stripe count; T a multiple of 4 for STE-NVAN).
  stripes = int(model_cfg.get('stripes') or 16)
  return (1, 4, 16 * stripes, 16, 3)


def _build(model_cfg: Mapping[str, Any], num_classes: int):
  from grl_jax.models import get  # pylint: disable=g-import-not-at-top
  return get(model_cfg['name']).build(model_cfg, num_classes)


def convert_official(state: Mapping[str, np.ndarray], model_cfg: Mapping[str, Any],
                     source: str) -> tuple[dict, list[str]]:
  """Official state dict (prefix stripped, Conv3d squeezed) -> (variables, ignored keys)."""
  if 'classifier.weight' not in state:
    raise ConversionError(f"{source}: missing key 'classifier.weight'")
  num_classes = int(state['classifier.weight'].shape[0])
  model = _build(model_cfg, num_classes)
  x = jnp.zeros(_template_input(model_cfg), jnp.float32)
  # train=True: the classifier exists only in the training graph.
  template = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=True))
  sources = {_PART: dict(state)}
  variables, used = convert.fill(template, lambda c, p: f'{_PART}:{official_key(c, p)}',
                                 sources, source)
  if _BNNECK_BIAS in state and np.any(np.asarray(state[_BNNECK_BIAS]) != 0):
    raise ConversionError(f'{source}: {_BNNECK_BIAS!r} is non-zero (max |b| = '
                          f'{np.abs(state[_BNNECK_BIAS]).max():.3g}); the official BNNeck '
                          'freezes it at 0 and this model has no BNNeck bias')
  ignore = lambda part, key: key.endswith('num_batches_tracked') or key == _BNNECK_BIAS  # noqa
  return variables, convert.check_unused(sources, used, ignore, source)


def official_variables(state: Mapping[str, Any], name: str, stripes: int = 16,
                       source: str = 'checkpoint') -> tuple[dict, dict, int]:
  """One call for scripts and tests: DataParallel state dict -> (variables, model cfg, #ids)."""
  plain = strip_data_parallel(state, source)
  model_cfg = dict(_recipe_model(name), **infer_official(plain, name, source))
  model_cfg['stripes'] = int(stripes)
  variables, _ = convert_official(plain, model_cfg, source)
  return variables, model_cfg, int(plain['classifier.weight'].shape[0])


def _recipe_model(name: str) -> dict:
  try:
    from configs.models import nvan as recipe  # pylint: disable=g-import-not-at-top
    return dict(recipe.recipe(name).model)
  except ImportError:
    return {'name': name}


# ------------------------------------------------------------------------------------------------
# ImageNet initialisation.


def _imagenet_input(model_cfg: Mapping[str, Any]) -> tuple[int, ...]:
  if model_cfg['name'] == 'iaunet':
    return (1, 1, 64, 32, 3)
  return _template_input(model_cfg)


def imagenet_variables(state: Mapping[str, np.ndarray], model_cfg: Mapping[str, Any],
                       seed: int = 0, source: str = 'torchvision-resnet50'
                       ) -> tuple[dict, list[str]]:
  """torchvision ResNet trunk + freshly initialised blocks and BN head -> (variables, ignored).

  The classifier is not part of the output (its width depends on the training set).
  """
  model = _build(model_cfg, 1)
  x = jnp.zeros(_imagenet_input(model_cfg), jnp.float32)
  # Eval-mode init has no classifier (its width is the training set's identity count, and the
  # trainer's warm start would reject a mismatch). Eager: compiling the whole init is slower
  # than running it once on this small input.
  fresh = jax.device_get(model.init(jax.random.PRNGKey(seed), x, train=False))

  def key_fn(collection, path):
    if path[0] in ('conv1', 'bn1') or path[0].startswith('layer'):
      return 'resnet:' + convert.resnet_torch_key(collection, path)
    return None
  sources = {'resnet': dict(state)}
  variables, used = convert.fill(fresh, key_fn, sources, source)
  ignore = lambda part, key: key.endswith('num_batches_tracked') or key.startswith('fc.')  # noqa
  return variables, convert.check_unused(sources, used, ignore, source)


# ------------------------------------------------------------------------------------------------
# Registration.


def _official_format(name: str) -> convert.Format:
  fmt = f'{name.replace("_", "-")}-official'
  return convert.Format(
      load=lambda args: {_PART: strip_data_parallel(convert.load_state_dict(args.input),
                                                    args.input)},
      infer=lambda sources: infer_official(sources[_PART], name, fmt),
      convert=lambda sources, model_cfg, seed: convert_official(sources[_PART], model_cfg, fmt),
      help=f'jackie840129/STE-NVAN {name} DataParallel state dict -> {name}')


def _imagenet_format(name: str) -> convert.Format:
  fmt = f'torchvision-resnet50-{name.replace("_", "-")}'
  return convert.Format(
      load=lambda args: {'resnet': convert.load_state_dict(args.input)},
      infer=lambda sources: {'name': name, **convert.infer_torchvision(sources['resnet'])},
      convert=lambda sources, model_cfg, seed: imagenet_variables(
          sources['resnet'], model_cfg, seed, source=fmt),
      help=f'ImageNet ResNet (torchvision keys) -> trunk of a fresh {name}')


for _name in ('nvan', 'ste_nvan'):
  convert.register_format(f'{_name.replace("_", "-")}-official', _official_format(_name))
for _name in ('nvan', 'ste_nvan', 'iaunet'):
  convert.register_format(f'torchvision-resnet50-{_name.replace("_", "-")}',
                          _imagenet_format(_name))
