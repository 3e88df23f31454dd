"""flysnowtiger/GRL checkpoints (`mars_train.py`) <-> GRL variables (`grl_jax/models/grl.py`).

Sources: the CNN, saved from `nn.DataParallel` (keys `module.backbone.base.*`,
`module.backbone.glo_fc.*`, `module.backbone.corr_atte.*`, `module.temporal_learning_block.*`,
`module.corr_bn.*`, `module.uncorr_bn.*`; the first commit's SE variant with
`temporal_reciprocal_learning.*` is recognised too) and the Siamese aggregator (`featQ`,
`featK`, `classifierBN`, `classifierlinear`; the unused `featV*` are ignored). `--input` is the
logs folder holding `cnnmodel_best.pth.tar` and `siamesemodel_best.pth.tar` (else
`cnn_checkpoint.pth.tar` / `siamese_checkpoint.pth.tar`), or the CNN file with
`--siamese=FILE`. Files may be `.npz` too.

The architecture fields (stage sizes, width, hidden sizes at the reference width, accumulation
variant, TRL reduction) are read from the keys and shapes (`infer_grl_official`).
`export_state_dict` is the inverse mapping (official key names; CNN keys with the `module.`
prefix, Siamese keys without; `split_official` separates them).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np

from grl_jax.convert import template as template_lib
from grl_jax.convert import torch_layout as tl
from grl_jax.errors import ConversionError

PyTree = Any
State = tl.State

_GCE = {'glo_fc': 'glo_fc.0', 'glo_bn': 'glo_fc.1', 'corr_conv1': 'corr_atte.0',
        'corr_bn1': 'corr_atte.1', 'corr_conv2': 'corr_atte.2', 'corr_bn2': 'corr_atte.3',
        'corr_conv3': 'corr_atte.5', 'corr_bn3': 'corr_atte.6'}
_TRL_NAMES = {  # naming -> (TRL attribute, forward channel-attention attribute)
    'head': ('temporal_learning_block', 'channel_atte_foreward_corr'),
    'first_commit': ('temporal_reciprocal_learning', 'channel_atte_forward_corr'),
}
_TRL_DIR = {'trl_forward': 'forward', 'trl_backward': 'backward'}
_SIAMESE = {'query': 'featQ', 'query_bn': 'featQ_bn', 'key': 'featK', 'key_bn': 'featK_bn',
            'verifier_bn': 'classifierBN', 'verifier': 'classifierlinear'}
_OFFICIAL_FILES = (('cnnmodel_best.pth.tar', 'siamesemodel_best.pth.tar'),
                   ('cnn_checkpoint.pth.tar', 'siamese_checkpoint.pth.tar'))


# ----------------------------------------------------------------------------------------------
# Key mapping
def _official_backbone_key(torchvision_key: str) -> str:
  # Official Backbone.base = Sequential(conv1, bn1, ReLU, maxpool, layer1, .., layer4).
  head, rest = torchvision_key.split('.', 1)
  if head in ('conv1', 'bn1'):
    return f'backbone.base.{0 if head == "conv1" else 1}.{rest}'
  return f'backbone.base.{3 + int(head[len("layer"):])}.{rest}'


def grl_official_key(collection: str, path: tuple[str, ...], naming: str = 'head') -> str:
  """'cnn:<key>' or 'siamese:<key>' (CNN keys without 'module.') of a GRL variable."""
  top, *rest = path
  leaf = tl.leaf_name(collection, rest[-1])
  if top == 'backbone':
    return 'cnn:' + _official_backbone_key(tl.resnet_torch_key(collection, tuple(rest)))
  if top == 'gce':
    return f'cnn:backbone.{_GCE[rest[0]]}.{leaf}'
  if top in _TRL_DIR:
    d = _TRL_DIR[top]
    block, atte_fwd = _TRL_NAMES[naming]
    atte = atte_fwd if d == 'forward' else 'channel_atte_backward_corr'
    sub = rest[0]
    if sub in ('phi1', 'phi2'):
      name = f'{d}_f{sub[-1]}.0'
    elif sub in ('attention_fc1', 'attention_fc2'):
      name = f'{atte}.{0 if sub.endswith("1") else 2}'
    elif sub == 'accumulate':
      inner = {'se_fc1': 'se.fc.0', 'se_fc2': 'se.fc.2'}.get(rest[1], rest[1])
      name = f'uncorr_memo_{d}.{inner}'
    else:
      raise ConversionError(f'no official key for {collection}/{"/".join(path)}')
    return f'cnn:{block}.{name}.{leaf}'
  if top in ('corr_bn', 'uncorr_bn'):
    return f'cnn:{top}.{leaf}'
  if top == 'siamese':
    return f'siamese:{_SIAMESE[rest[0]]}.{leaf}'
  raise ConversionError(f'no official key for {collection}/{"/".join(path)}')


def _first_commit_alias(key: str) -> list[str]:
  head_block, head_atte = _TRL_NAMES['head']
  old_block, old_atte = _TRL_NAMES['first_commit']
  return [key, key.replace(head_block, old_block).replace(head_atte, old_atte)]


def _has_se(variables: PyTree) -> bool:
  return 'se_fc1' in variables['params'].get('trl_forward', {}).get('accumulate', {})


def export_state_dict(variables: PyTree, naming: str | None = None) -> State:
  """GRL variables -> official state dicts merged into one dict.

  CNN keys carry the `module.` prefix of the official (DataParallel) checkpoint; Siamese keys
  have none. `naming` 'head' or 'first_commit' (default: 'first_commit' for the SE variant,
  which only the first commit had).
  """
  naming = naming or ('first_commit' if _has_se(variables) else 'head')
  out = {}
  for (collection, *path), value in tl.flatten(jax.device_get(variables)).items():
    part, key = grl_official_key(collection, tuple(path), naming).split(':', 1)
    out[(tl.DATA_PARALLEL if part == 'cnn' else '') + key] = tl.flax_to_torch(value, path[-1])
  return out


def split_official(state: Mapping[str, np.ndarray]) -> tuple[State, State]:
  """A merged dict from `export_state_dict` -> (CNN state dict, Siamese state dict)."""
  cnn = {k: v for k, v in state.items() if k.startswith(tl.DATA_PARALLEL)}
  siamese = {k: v for k, v in state.items() if not k.startswith(tl.DATA_PARALLEL)}
  return cnn, siamese


def _ignore_official(part: str, key: str) -> bool:
  if key.endswith('num_batches_tracked'):
    return True
  # W_v / BN_v of the Siamese aggregator are built but never used by the official code.
  return part == 'siamese' and key.startswith(('featV.', 'featV_bn.'))


# ----------------------------------------------------------------------------------------------
# Architecture from the keys
def infer_grl_official(cnn: State, siamese: State) -> dict:
  """Architecture fields of config.model from official GRL state dicts (DataParallel-stripped).

  Hidden sizes are returned at the reference width 64 (see grl.py's scaling rule).
  """
  def need(state, key, part):
    if key not in state:
      raise ConversionError(f'grl-official: missing key {key!r} in the {part} state dict '
                            '(is this a flysnowtiger/GRL checkpoint?)')
    return np.asarray(state[key]).shape
  width = need(cnn, 'backbone.base.0.weight', 'cnn')[0]
  # The official trunk is an nn.Sequential: stage s is its child 3 + s.
  stages = tl.stage_sizes(cnn, lambda s, j: f'backbone.base.{3 + s}.{j}.conv1.weight')
  d = 32 * width
  trl = next((b for b, _ in _TRL_NAMES.values() if f'{b}.forward_f1.0.weight' in cnn), None)
  if trl is None:
    raise ConversionError('grl-official: no temporal_learning_block.* (HEAD) or '
                          'temporal_reciprocal_learning.* (first commit) keys in the cnn '
                          'state dict')
  atte = next(k for k in cnn if k.startswith(f'{trl}.channel_atte_backward_corr.0.weight'))
  return dict(
      stage_sizes=tuple(stages),
      resnet_width=int(width),
      accumulation='se' if any('.se.fc.' in k for k in cnn) else 'plain',
      gce_hidden=_unscale(need(cnn, 'backbone.glo_fc.0.weight', 'cnn')[0], width),
      corr_hidden=_unscale(need(cnn, 'backbone.corr_atte.2.weight', 'cnn')[0], width),
      attention_dim=_unscale(need(siamese, 'featQ.weight', 'siamese')[0], width),
      trl_reduction=int(d // np.asarray(cnn[atte]).shape[0]),
  )


def _unscale(actual: int, width: int) -> int:
  from grl_jax.models import grl  # pylint: disable=g-import-not-at-top
  value = round(actual * grl.REFERENCE_WIDTH / width)
  if grl.scaled(value, width) != actual:
    raise ConversionError(f'hidden size {actual} at width {width} is not expressible as '
                          f'reference size * width / {grl.REFERENCE_WIDTH}')
  return int(value)


# ----------------------------------------------------------------------------------------------
# Conversion
def grl_official_variables(cnn: Mapping[str, np.ndarray], siamese: Mapping[str, np.ndarray],
                           model_cfg: Mapping[str, Any],
                           clip_shape: tuple[int, ...] = template_lib.DEFAULT_CLIP
                           ) -> tuple[dict, list[str]]:
  """Official CNN + Siamese state dicts -> (GRL variables as numpy, ignored keys)."""
  sources = {'cnn': dict(cnn), 'siamese': dict(siamese)}
  # Keys are looked up (and reported) as spelled in the file, with or without `module.`.
  prefix = tl.DATA_PARALLEL if any(k.startswith(tl.DATA_PARALLEL) for k in cnn) else ''

  def key_fn(collection, path):
    part, key = grl_official_key(collection, path).split(':', 1)
    return f'{part}:{prefix if part == "cnn" else ""}{key}'

  template = template_lib.model_variables(model_cfg, clip_shape=clip_shape)
  variables, used = tl.fill(template, key_fn, sources, 'grl-official',
                            aliases=_first_commit_alias)
  ignored = tl.check_unused(sources, used, _ignore_official, 'grl-official')
  return variables, ignored


def read(input_path: str, siamese: str | None = None) -> dict[str, State]:
  """{'cnn': ..., 'siamese': ...} from a logs folder, or a CNN file plus `siamese`."""
  cnn_path, siamese_path = input_path, siamese
  if os.path.isdir(input_path):
    for cnn_name, siamese_name in _OFFICIAL_FILES:
      if os.path.isfile(os.path.join(input_path, cnn_name)):
        cnn_path = os.path.join(input_path, cnn_name)
        siamese_path = siamese_path or os.path.join(input_path, siamese_name)
        break
    else:
      raise ConversionError(f'--input={input_path}: none of '
                            f'{[c for c, _ in _OFFICIAL_FILES]} found (the official '
                            'mars_train.py logs folder)')
  if not siamese_path:
    raise ConversionError('grl-official: --input is a file, so --siamese=FILE (the Siamese '
                          'checkpoint, e.g. siamesemodel_best.pth.tar) is required')
  return {'cnn': tl.load_state_dict(cnn_path), 'siamese': tl.load_state_dict(siamese_path)}


def infer(sources: Mapping[str, State], source: str = 'grl-official') -> dict:
  """Architecture fields of config.model implied by `read`'s state dicts."""
  del source  # the messages name grl-official, the only format of this family
  return infer_grl_official(tl.strip_data_parallel(sources['cnn']), sources['siamese'])


def variables(sources: Mapping[str, State], model_cfg: Mapping[str, Any], *, seed: int = 0,
              clip_shape: tuple[int, ...] = template_lib.DEFAULT_CLIP,
              source: str = 'grl-official') -> tuple[dict, list[str]]:
  """`read`'s state dicts -> (GRL variables, ignored keys); every variable comes from them."""
  del seed, source
  return grl_official_variables(sources['cnn'], sources['siamese'], model_cfg, clip_shape)
