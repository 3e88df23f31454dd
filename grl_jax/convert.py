"""Weight import: PyTorch state dicts -> a variables-only orbax checkpoint (`grl_jax.checkpoint`).

    python -m grl_jax.convert --format=FORMAT --input=PATH --output=DIR [--siamese=FILE]
        [--config=configs/mars.py:model=grl] [--config.model.dtype=bfloat16 ...] [--step=0]

The output directory is a checkpoint that `grl_jax.inference.load(DIR)` and the trainer
(`config.init.checkpoint=DIR`) read; its meta JSON holds the whole config (model section included)
so the model can be rebuilt. Without `--config` the GRL MARS recipe (`configs/mars.py`) is used;
the architecture fields (stage sizes, width, hidden sizes, accumulation variant) are always read
from the source's keys and shapes, then `--config.a.b=value` overrides are applied.

Formats (`FORMATS`, a registry: `register_format` adds more, e.g. the NVAN family's):

* `torchvision-resnet50`: an ImageNet ResNet state dict with torchvision key names
  (`conv1.weight`, `layer1.0.downsample.0.weight`, ..., `fc.*`), as `.pth` (read with
  `torch.load(..., weights_only=True)`; torch is imported only then) or `.npz` with the same key
  names (no torch needed). It becomes the `backbone` of a freshly initialised GRL (seed
  `--seed`); every other GRL parameter keeps its own initialiser. `fc.*` and
  `num_batches_tracked` are reported as ignored.
* `grl-official`: the checkpoints of flysnowtiger/GRL's `mars_train.py`: the CNN (saved from
  `nn.DataParallel`, keys `module.backbone.base.*`, `module.backbone.glo_fc.*`, ...,
  `module.temporal_learning_block.*`, `module.corr_bn.*`, `module.uncorr_bn.*`; the first
  commit's SE variant with `temporal_reciprocal_learning.*` is recognised too) and the Siamese
  aggregator (`featQ`, `featK`, `classifierBN`, `classifierlinear`; the unused `featV*` are
  ignored). `--input` is the logs folder holding `cnnmodel_best.pth.tar` and
  `siamesemodel_best.pth.tar` (else `cnn_checkpoint.pth.tar` / `siamese_checkpoint.pth.tar`), or
  the CNN file with `--siamese=FILE`. Files may be `.npz` too.

Layouts: Conv2d OIHW -> HWIO, Linear (out, in) -> (in, out), BN weight/bias -> params
scale/bias, running_mean/var -> batch_stats mean/var. Every source key is used or reported as
ignored; a missing, mis-shaped or unexpected key is a `ConversionError` naming it (and the
expected shape).

`export_state_dict(variables)` is the inverse for GRL (official key names; CNN keys with the
`module.` prefix, Siamese keys without; `split_official` separates them).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import re
import sys
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

PyTree = Any
State = dict[str, np.ndarray]


class ConversionError(ValueError):
  """A source key is missing, mis-shaped or unexpected (the message names it)."""


# ----------------------------------------------------------------------------------------------
# Layouts and leaf names
_LEAVES = {('params', 'kernel'): 'weight', ('params', 'bias'): 'bias',
           ('params', 'scale'): 'weight', ('batch_stats', 'mean'): 'running_mean',
           ('batch_stats', 'var'): 'running_var'}
_BLOCK = re.compile(r'^layer(\d+)_(\d+)$')
_BLOCK_SUB = {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}


def torch_to_flax(value: np.ndarray, leaf: str) -> np.ndarray:
  """PyTorch tensor layout -> Flax (conv OIHW -> HWIO, linear (out, in) -> (in, out))."""
  value = np.asarray(value)
  if leaf == 'kernel':
    if value.ndim == 4:
      return value.transpose(2, 3, 1, 0)
    if value.ndim == 2:
      return value.T
  return value


def flax_to_torch(value: np.ndarray, leaf: str) -> np.ndarray:
  value = np.asarray(value)
  if leaf == 'kernel':
    if value.ndim == 4:
      return value.transpose(3, 2, 0, 1)
    if value.ndim == 2:
      return value.T
  return value


def torch_shape(shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
  """The PyTorch shape of a Flax variable of `shape`."""
  return flax_to_torch(np.empty(shape, np.uint8), leaf).shape


def leaf_name(collection: str, leaf: str) -> str:
  name = _LEAVES.get((collection, leaf))
  if name is None:
    raise ConversionError(f'no PyTorch name for variable leaf {collection}/{leaf}')
  return name


def resnet_torch_key(collection: str, path: tuple[str, ...]) -> str:
  """torchvision key of a variable of `grl_jax.models.resnet` (path relative to the ResNet).

  ('layer1_0', 'downsample_conv', 'kernel') -> 'layer1.0.downsample.0.weight';
  ('bn1', 'mean') in batch_stats -> 'bn1.running_mean'.
  """
  *modules, leaf = path
  out = []
  for m in modules:
    block = _BLOCK.match(m)
    out.append(f'layer{block.group(1)}.{block.group(2)}' if block else _BLOCK_SUB.get(m, m))
  return '.'.join(out + [leaf_name(collection, leaf)])


def flatten(variables: PyTree) -> dict[tuple[str, ...], Any]:
  """{(collection, *path): leaf} of a {'params': ..., 'batch_stats': ...} tree."""
  return traverse_util.flatten_dict(dict(variables))


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
  return traverse_util.unflatten_dict(dict(flat))


def fill(template: PyTree, key_fn: Callable[[str, tuple[str, ...]], str | None],
         sources: Mapping[str, State], source_name: str,
         aliases: Callable[[str], list[str]] = lambda k: [k],
         keep_missing: bool = False) -> tuple[dict, set[tuple[str, str]]]:
  """Fills every template leaf from `sources`.

  Args:
    template: variables (arrays or ShapeDtypeStructs) of the target model.
    key_fn: (collection, path) -> 'part:key' (part = a key of `sources`), or None for a leaf
      that keeps the template's value.
    sources: part -> state dict.
    aliases: alternative spellings of a key (tried in order).
    keep_missing: keep the template value when no source key exists (else an error).
  Returns:
    (variables as numpy, the set of (part, key) used).
  """
  out, used = {}, set()
  for (collection, *path), leaf in flatten(template).items():
    path = tuple(path)
    target = key_fn(collection, path)
    if target is None:
      out[(collection, *path)] = np.asarray(leaf)
      continue
    part, key = target.split(':', 1)
    state = sources.get(part, {})
    found = next((k for k in aliases(key) if k in state), None)
    expected = torch_shape(tuple(leaf.shape), path[-1])
    if found is None:
      if keep_missing:
        out[(collection, *path)] = np.asarray(leaf)
        continue
      raise ConversionError(
          f'{source_name}: missing key {key!r} in the {part} state dict (expected shape '
          f'{expected}, for {collection}/{"/".join(path)})')
    value = np.asarray(state[found])
    if tuple(value.shape) != tuple(expected):
      raise ConversionError(
          f'{source_name}: key {found!r} has shape {tuple(value.shape)}, expected {expected} '
          f'(for {collection}/{"/".join(path)}; wrong architecture fields?)')
    out[(collection, *path)] = torch_to_flax(value, path[-1]).astype(np.dtype(leaf.dtype))
    used.add((part, found))
  return unflatten(out), used


def check_unused(sources: Mapping[str, State], used: set[tuple[str, str]],
                 ignore: Callable[[str, str], bool], source_name: str) -> list[str]:
  """Returns the ignored keys ('part:key'); an unused key that is not ignorable is an error."""
  ignored, unexpected = [], []
  for part, state in sources.items():
    for key in state:
      if (part, key) in used:
        continue
      (ignored if ignore(part, key) else unexpected).append(f'{part}:{key}')
  if unexpected:
    raise ConversionError(f'{source_name}: {len(unexpected)} unexpected keys (not used by the '
                          f'model), e.g. {unexpected[:8]}; wrong format or architecture?')
  return sorted(ignored)


# ----------------------------------------------------------------------------------------------
# Reading state dicts
def load_state_dict(path: str) -> State:
  """A state dict from `.npz` or a torch file (`{'state_dict': ...}` wrappers unwrapped)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no such file: {path}')
  if path.endswith('.npz'):
    with np.load(path, allow_pickle=False) as z:
      return {k: np.asarray(z[k]) for k in z.files}
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'reading {path} needs PyTorch (pip install torch==2.13.0 gives the CPU '
                      'wheel); or save the state dict as .npz with the same keys') from e
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception:  # pylint: disable=broad-except
    # The official training script stores numpy scalars (best_top1) next to the weights.
    allowed = [getattr(np.dtypes, n) for n in ('Float64DType', 'Float32DType', 'Int64DType')
               if hasattr(np, 'dtypes') and hasattr(np.dtypes, n)]
    core = getattr(np, '_core', None) or getattr(np, 'core')
    allowed += [core.multiarray.scalar, np.dtype]
    with torch.serialization.safe_globals(allowed):
      obj = torch.load(path, map_location='cpu', weights_only=True)
  if isinstance(obj, dict) and 'state_dict' in obj:
    obj = obj['state_dict']
  if not isinstance(obj, Mapping):
    raise ConversionError(f'{path}: expected a state dict (or a dict with "state_dict"), got '
                          f'{type(obj).__name__}')
  return {k: v.detach().cpu().numpy() for k, v in obj.items() if hasattr(v, 'detach')}


# ----------------------------------------------------------------------------------------------
# GRL <-> official flysnowtiger/GRL names
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
DATA_PARALLEL = 'module.'


def _official_backbone_key(torchvision_key: str) -> str:
  # Official Backbone.base = Sequential(conv1, bn1, ReLU, maxpool, layer1, .., layer4).
  head, rest = torchvision_key.split('.', 1)
  if head in ('conv1', 'bn1'):
    return f'backbone.base.{0 if head == "conv1" else 1}.{rest}'
  return f'backbone.base.{3 + int(head[len("layer"):])}.{rest}'


def grl_official_key(collection: str, path: tuple[str, ...], naming: str = 'head') -> str:
  """'cnn:<key>' or 'siamese:<key>' (CNN keys without 'module.') of a GRL variable."""
  top, *rest = path
  leaf = leaf_name(collection, rest[-1])
  if top == 'backbone':
    return 'cnn:' + _official_backbone_key(resnet_torch_key(collection, tuple(rest)))
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


def strip_data_parallel(state: Mapping[str, np.ndarray]) -> State:
  return {k[len(DATA_PARALLEL):] if k.startswith(DATA_PARALLEL) else k: v
          for k, v in state.items()}


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
  for (collection, *path), value in flatten(jax.device_get(variables)).items():
    part, key = grl_official_key(collection, tuple(path), naming).split(':', 1)
    out[(DATA_PARALLEL if part == 'cnn' else '') + key] = flax_to_torch(value, path[-1])
  return out


def split_official(state: Mapping[str, np.ndarray]) -> tuple[State, State]:
  """A merged dict from `export_state_dict` -> (CNN state dict, Siamese state dict)."""
  cnn = {k: v for k, v in state.items() if k.startswith(DATA_PARALLEL)}
  siamese = {k: v for k, v in state.items() if not k.startswith(DATA_PARALLEL)}
  return cnn, siamese


def _ignore_official(part: str, key: str) -> bool:
  if key.endswith('num_batches_tracked'):
    return True
  # W_v / BN_v of the Siamese aggregator are built but never used (grl.md B7).
  return part == 'siamese' and key.startswith(('featV.', 'featV_bn.'))


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
  stages = []
  for s in range(1, 5):
    n = 0
    while f'backbone.base.{3 + s}.{n}.conv1.weight' in cnn:
      n += 1
    stages.append(n)
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


def grl_official_variables(cnn: Mapping[str, np.ndarray], siamese: Mapping[str, np.ndarray],
                           model_cfg: Mapping[str, Any]) -> tuple[dict, list[str]]:
  """Official CNN + Siamese state dicts -> (GRL variables as numpy, ignored keys)."""
  sources = {'cnn': dict(cnn), 'siamese': dict(siamese)}
  # Keys are looked up (and reported) as spelled in the file, with or without `module.`.
  prefix = DATA_PARALLEL if any(k.startswith(DATA_PARALLEL) for k in cnn) else ''

  def key_fn(collection, path):
    part, key = grl_official_key(collection, path).split(':', 1)
    return f'{part}:{prefix if part == "cnn" else ""}{key}'

  template = grl_template(model_cfg)
  variables, used = fill(template, key_fn, sources, 'grl-official',
                         aliases=_first_commit_alias)
  ignored = check_unused(sources, used, _ignore_official, 'grl-official')
  return variables, ignored


def grl_template(model_cfg: Mapping[str, Any], init_seed: int | None = None,
                 input_hw: tuple[int, int] = (64, 32)) -> PyTree:
  """GRL variables for `model_cfg`: shapes only, or initialised values when `init_seed` is set."""
  from grl_jax.models import grl  # pylint: disable=g-import-not-at-top
  model = grl.build(model_cfg)
  x = jnp.zeros((2, 2, *input_hw, 3), jnp.float32)
  init = lambda: model.init(jax.random.key(init_seed or 0), x, train=False)  # noqa: E731
  if init_seed is None:
    return jax.eval_shape(init)
  return jax.device_get(jax.jit(init)())


# ----------------------------------------------------------------------------------------------
# torchvision ResNet -> the backbone of a fresh GRL
def infer_torchvision(state: State) -> dict:
  if 'conv1.weight' not in state:
    raise ConversionError("torchvision-resnet50: missing key 'conv1.weight' (is this a "
                          'torchvision ResNet state dict?)')
  stages = []
  for s in range(1, 5):
    n = 0
    while f'layer{s}.{n}.conv1.weight' in state:
      n += 1
    stages.append(n)
  return dict(stage_sizes=tuple(stages), resnet_width=int(state['conv1.weight'].shape[0]))


def _ignore_torchvision(part: str, key: str) -> bool:
  del part
  return key.endswith('num_batches_tracked') or key.startswith('fc.')


def torchvision_into(template: PyTree, state: Mapping[str, np.ndarray], prefix: str = 'backbone',
                     source_name: str = 'torchvision-resnet50') -> tuple[dict, list[str]]:
  """Replaces the ResNet under top-level `prefix` of `template` (initialised values) by `state`.

  Returns (variables as numpy, ignored keys). Other variables keep the template's values.
  """
  def key_fn(collection, path):
    if path[0] != prefix:
      return None
    return 'resnet:' + resnet_torch_key(collection, path[1:])
  sources = {'resnet': dict(state)}
  variables, used = fill(template, key_fn, sources, source_name)
  return variables, check_unused(sources, used, _ignore_torchvision, source_name)


# ----------------------------------------------------------------------------------------------
# The format registry and the command line
@dataclasses.dataclass(frozen=True)
class Format:
  """A source format.

  load: parsed args -> named state dicts (e.g. {'cnn': ..., 'siamese': ...}).
  infer: those -> config.model fields implied by the weights (name and architecture).
  convert: (state dicts, model config dict, seed) -> (variables, ignored keys).
  """
  load: Callable[[argparse.Namespace], dict[str, State]]
  infer: Callable[[dict[str, State]], dict]
  convert: Callable[[dict[str, State], dict, int], tuple[dict, list[str]]]
  help: str = ''


FORMATS: dict[str, Format] = {}


def register_format(name: str, fmt: Format):
  FORMATS[name] = fmt


_OFFICIAL_FILES = (('cnnmodel_best.pth.tar', 'siamesemodel_best.pth.tar'),
                   ('cnn_checkpoint.pth.tar', 'siamese_checkpoint.pth.tar'))


def _load_grl_official(args) -> dict[str, State]:
  cnn_path, siamese_path = args.input, args.siamese
  if os.path.isdir(args.input):
    for cnn_name, siamese_name in _OFFICIAL_FILES:
      if os.path.isfile(os.path.join(args.input, cnn_name)):
        cnn_path = os.path.join(args.input, cnn_name)
        siamese_path = siamese_path or os.path.join(args.input, siamese_name)
        break
    else:
      raise FileNotFoundError(f'--input={args.input}: none of {[c for c, _ in _OFFICIAL_FILES]}'
                              ' found (the official mars_train.py logs folder)')
  if not siamese_path:
    raise ValueError('grl-official: --input is a file, so --siamese=FILE (the Siamese '
                     'checkpoint, e.g. siamesemodel_best.pth.tar) is required')
  return {'cnn': load_state_dict(cnn_path), 'siamese': load_state_dict(siamese_path)}


def _infer_grl_official(sources):
  return {'name': 'grl', **infer_grl_official(strip_data_parallel(sources['cnn']),
                                              sources['siamese'])}


def _convert_grl_official(sources, model_cfg, seed):
  del seed
  return grl_official_variables(sources['cnn'], sources['siamese'], model_cfg)


def _convert_torchvision(sources, model_cfg, seed):
  if model_cfg.get('name', 'grl') != 'grl':
    raise ConversionError(f"torchvision-resnet50 initialises the GRL model here; got "
                          f"config.model.name={model_cfg.get('name')!r}")
  return torchvision_into(grl_template(model_cfg, init_seed=seed), sources['resnet'])


register_format('torchvision-resnet50', Format(
    load=lambda args: {'resnet': load_state_dict(args.input)},
    infer=lambda sources: {'name': 'grl', **infer_torchvision(sources['resnet'])},
    convert=_convert_torchvision,
    help='ImageNet ResNet (.pth or .npz, torchvision keys) -> backbone of a fresh GRL'))
register_format('grl-official', Format(
    load=_load_grl_official, infer=_infer_grl_official, convert=_convert_grl_official,
    help='flysnowtiger/GRL CNN + Siamese checkpoints -> GRL'))


def _load_plugins():
  # Other model families register their formats when their converter module is imported.
  import importlib  # pylint: disable=g-import-not-at-top
  for name in ('grl_jax.convert_nvan',):
    try:
      importlib.import_module(name)
    except ModuleNotFoundError as e:
      if e.name != name:
        raise


def default_config(model_name: str = 'grl'):
  """The model's MARS recipe (configs/mars.py), or a minimal config when configs/ is absent."""
  try:
    from configs import mars  # pylint: disable=g-import-not-at-top
    config = mars.get_config(f'model={model_name}')
    config.unlock()
    return config
  except ImportError:
    import ml_collections  # pylint: disable=g-import-not-at-top
    return ml_collections.ConfigDict({
        'model': {'name': model_name},
        'data': {'height': 256, 'width': 128, 'seq_len': 8, 'test_sampling': 'rrs_test'}})


def load_config(spec: str | None, model_name: str = 'grl'):
  """`path/to/file.py[:arg]` -> its `get_config(arg)` (unlocked); None -> `default_config()`."""
  if not spec:
    return default_config(model_name)
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('_convert_config', path)
  if module_spec is None or not os.path.isfile(path):
    raise FileNotFoundError(f'--config={spec}: no config file {path}')
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  if hasattr(config, 'unlock'):
    config.unlock()
  return config


def parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config, overrides: list[str]):
  """`--config.a.b=value` strings -> config[a][b] = literal(value)."""
  for item in overrides:
    if not item.startswith('--config.') or '=' not in item:
      raise ValueError(f'unrecognised argument {item!r} (overrides look like '
                       '--config.model.dtype=bfloat16)')
    path, value = item[len('--config.'):].split('=', 1)
    *parents, field = path.split('.')
    node = config
    for p in parents:
      node = node[p]
    set_field(node, field, parse_value(value))


def set_field(node, field: str, value: Any):
  if hasattr(node, 'ignore_type'):
    with node.ignore_type():
      node[field] = value
  else:
    node[field] = value


def convert(fmt: str, args: argparse.Namespace, overrides: list[str] = ()
            ) -> tuple[dict, Any, dict]:
  """Runs format `fmt`: returns (variables, config with the inferred model fields, meta).

  The config is `args.config` (a config file) or the inferred model's MARS recipe.
  """
  if fmt not in FORMATS:
    raise ValueError(f'--format={fmt!r}; known: {sorted(FORMATS)}')
  f = FORMATS[fmt]
  sources = f.load(args)
  inferred = f.infer(sources)
  config = load_config(getattr(args, 'config', None), inferred.get('name', 'grl'))
  for k, v in inferred.items():
    set_field(config.model, k, list(v) if isinstance(v, tuple) else v)
  apply_overrides(config, list(overrides))
  model_cfg = config.model.to_dict() if hasattr(config.model, 'to_dict') else dict(config.model)
  variables, ignored = f.convert(sources, model_cfg, int(getattr(args, 'seed', 0)))
  num = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(variables.get('params', {})))
  meta = {'source': {'format': fmt, 'input': os.path.abspath(args.input),
                     'siamese': getattr(args, 'siamese', None), 'ignored_keys': ignored},
          'num_params': num}
  return variables, config, meta


def main(argv: list[str] | None = None) -> str:
  _load_plugins()
  parser = argparse.ArgumentParser(prog='python -m grl_jax.convert', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--format', required=True, choices=sorted(FORMATS))
  parser.add_argument('--input', required=True, help='source file or folder')
  parser.add_argument('--output', required=True, help='checkpoint directory to write')
  parser.add_argument('--siamese', default=None, help='grl-official: the Siamese checkpoint')
  parser.add_argument('--config', default=None, help='config file[:arg] stored in the meta')
  parser.add_argument('--step', type=int, default=0)
  parser.add_argument('--seed', type=int, default=0, help='init seed of non-converted params')
  args, overrides = parser.parse_known_args(argv)
  variables, config, meta = convert(args.format, args, overrides)
  from grl_jax import checkpoint  # pylint: disable=g-import-not-at-top
  path = checkpoint.write_variables(args.output, variables, config, step=args.step,
                                    extra_meta=meta)
  ignored = meta['source']['ignored_keys']
  print(f'[convert] {args.format}: {meta["num_params"]:,} parameters -> {path}')
  print(f'[convert] model: {dict(config.model)}')
  print(f'[convert] {len(ignored)} source keys ignored'
        + (f' (e.g. {ignored[:4]})' if ignored else ''))
  return path


if __name__ == '__main__':
  # Run the imported module's main: plugins register into `grl_jax.convert.FORMATS`, which is
  # not this `__main__` copy of the module.
  from grl_jax import convert as _convert  # pylint: disable=g-import-not-at-top
  _convert.main(sys.argv[1:])
