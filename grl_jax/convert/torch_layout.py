"""PyTorch state dicts <-> Flax variable trees: layouts, leaf names, reading, filling.

Layouts: Conv2d OIHW -> HWIO, Linear (out, in) -> (in, out); BN weight/bias -> params
scale/bias, running_mean/var -> batch_stats mean/var. The ResNet key mapping follows the
parameter tree of `grl_jax/models/resnet.py` (torchvision names with `layer{s}.{j}` ->
`layer{s}_{j}` and `downsample.{0,1}` -> `downsample_{conv,bn}`).

`fill` builds a variable tree from state dicts (every template leaf found and shape-checked)
and `check_unused` makes sure every source key was used or is knowingly ignored: a missing,
mis-shaped or unexpected key is a `ConversionError` naming it and the expected shape.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Mapping

import numpy as np
from flax import traverse_util

from grl_jax.errors import ConversionError

PyTree = Any
State = dict[str, np.ndarray]

DATA_PARALLEL = 'module.'   # the prefix nn.DataParallel puts on every key

_LEAVES = {('params', 'kernel'): 'weight', ('params', 'bias'): 'bias',
           ('params', 'scale'): 'weight', ('batch_stats', 'mean'): 'running_mean',
           ('batch_stats', 'var'): 'running_var'}
_BLOCK = re.compile(r'^layer(\d+)_(\d+)$')
_BLOCK_SUB = {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}


def stage_sizes(state, block_key) -> tuple[int, ...]:
  """Bottlenecks per ResNet stage, counted from the keys: `block_key(s, j)` is the key of the
  first conv of block j of stage s (1..4)."""
  sizes = []
  for s in range(1, 5):
    j = 0
    while block_key(s, j) in state:
      j += 1
    sizes.append(j)
  return tuple(sizes)


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
  """Flax layout -> PyTorch (conv HWIO -> OIHW, dense (in, out) -> (out, in))."""
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
  """('params', 'scale') -> 'weight', ('batch_stats', 'var') -> 'running_var', ..."""
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


def is_resnet_module(name: str) -> bool:
  """Whether a top-level module name belongs to the ResNet trunk (conv1, bn1, layer{s}_{j})."""
  return name in ('conv1', 'bn1') or _BLOCK.match(name) is not None


def flatten(variables: PyTree) -> dict[tuple[str, ...], Any]:
  """{(collection, *path): leaf} of a {'params': ..., 'batch_stats': ...} tree."""
  return traverse_util.flatten_dict(dict(variables))


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
  """Inverse of `flatten`."""
  return traverse_util.unflatten_dict(dict(flat))


def strip_data_parallel(state: Mapping[str, np.ndarray]) -> State:
  """Drops the `module.` prefix of nn.DataParallel keys (keys without it are kept as they are)."""
  return {k[len(DATA_PARALLEL):] if k.startswith(DATA_PARALLEL) else k: v
          for k, v in state.items()}


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
    source_name: names the source in error messages (the format name).
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


def load_state_dict(path: str) -> State:
  """A state dict from `.npz` or a torch file (`{'state_dict': ...}` wrappers unwrapped).

  Nothing is unpickled beyond what `torch.load(weights_only=True)` accepts (tensors plus the
  numpy scalars the official training scripts store next to them); `.npz` files are read with
  `allow_pickle=False`. torch is imported only for non-`.npz` files.
  """
  if not os.path.isfile(path):
    raise ConversionError(f'no such file: {path}')
  if path.endswith('.npz'):
    return _load_npz(path)
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConversionError(f'reading {path} needs PyTorch (pip install torch==2.13.0 gives the '
                          'CPU wheel); or save the state dict as .npz with the same keys') from e
  obj = _torch_load(torch, path)
  if isinstance(obj, dict) and 'state_dict' in obj:
    obj = obj['state_dict']
  if not isinstance(obj, Mapping):
    raise ConversionError(f'{path}: expected a state dict (or a dict with "state_dict"), got '
                          f'{type(obj).__name__}')
  return {k: v.detach().cpu().numpy() for k, v in obj.items() if hasattr(v, 'detach')}


def _load_npz(path: str) -> State:
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: np.asarray(z[k]) for k in z.files}
  except Exception as e:  # pylint: disable=broad-except
    # BadZipFile, object arrays refused without pickles, truncated members, ...
    raise ConversionError(f'{path}: not a readable .npz of plain arrays '
                          f'({type(e).__name__}: {_first_line(e)})') from e


def _torch_load(torch: Any, path: str) -> Any:
  try:
    return torch.load(path, map_location='cpu', weights_only=True)
  except Exception:  # pylint: disable=broad-except
    pass
  # The official training script stores numpy scalars (best_top1) next to the weights.
  allowed = [getattr(np.dtypes, n) for n in ('Float64DType', 'Float32DType', 'Int64DType')
             if hasattr(np, 'dtypes') and hasattr(np.dtypes, n)]
  core = getattr(np, '_core', None) or getattr(np, 'core')
  allowed += [core.multiarray.scalar, np.dtype]
  try:
    with torch.serialization.safe_globals(allowed):
      return torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(f'{path}: refused: not loadable with weights_only=True (not a torch '
                          f'checkpoint, or it pickles more than tensors; '
                          f'{type(e).__name__}: {_first_line(e)})') from e


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else ''
