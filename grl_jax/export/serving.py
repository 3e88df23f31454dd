"""The function every export format serves: uint8 clips -> the extractor's descriptors.

`load(workdir, step)` restores a checkpoint through `grl_jax.inference.load` (a training
workdir, its `checkpoints/`, or a `grl_jax.convert` output) and wraps its eval-mode forward:

    fn(clips uint8[B, T, H, W, 3] RGB 0-255) -> float32[B, D]

with T = `config.data.seq_len`, H x W = `config.data.height` x `config.data.width` of the
checkpoint's config, ImageNet mean/std normalisation inside, the variables closed over (so
every format bakes them in as constants), and D the model's descriptor size (full-size GRL:
6,144; NVAN / STE-NVAN / IAUnet: 2,048). It is the very
function `Extractor.clip_features` jits (grl_jax/inference.py), so an artifact returns what
`clip_features` returns.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from grl_jax import schema
from grl_jax.errors import ConfigError, ExportError


@dataclasses.dataclass(frozen=True)
class Serving:
  """A checkpoint's serving function and what a consumer needs to know about it.

  Attributes:
    fn: uint8[B, T, H, W, 3] -> float32[B, D] (jit-traceable, variables closed over).
    extractor: the `grl_jax.inference.Extractor` it comes from (the reference in checks).
    seq_len, height, width: T, H, W of the input clips.
    descriptor_dim: D.
    model: `config.model.name`; step: the checkpoint step; descriptor_distance: 'dot' |
      'cosine' | 'euclidean' (how to compare two descriptors, from the model registry).
  """
  fn: Callable[[Any], Any]
  extractor: Any
  seq_len: int
  height: int
  width: int
  descriptor_dim: int
  model: str
  step: int | None
  descriptor_distance: str

  def input_spec(self, batch: int, dynamic_batch: bool = False) -> jax.ShapeDtypeStruct:
    """The clips' abstract value: batch fixed to `batch`, or the symbolic dimension 'b'."""
    b = jax.export.symbolic_shape('b')[0] if dynamic_batch else int(batch)
    return jax.ShapeDtypeStruct((b, self.seq_len, self.height, self.width, 3), jnp.uint8)

  def sample_clips(self, batch: int, seed: int = 0) -> np.ndarray:
    """Random uint8[batch, T, H, W, 3] clips (the input of the artifact checks)."""
    shape = (batch, self.seq_len, self.height, self.width, 3)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)

  def reference(self, clips: np.ndarray) -> np.ndarray:
    """`Extractor.clip_features(clips)`: what every artifact must reproduce."""
    return self.extractor.clip_features(clips)


def load(workdir: str, step: int | None = None, dtype: str | None = None) -> Serving:
  """The Serving of a checkpoint (raises CheckpointError when there is none).

  `dtype` ('float32' | 'bfloat16', schema.DTYPES) replaces the checkpoint's compute dtype
  `config.model.dtype`; the variables are float32 either way, so e.g. a model trained in
  bfloat16 serves in float32 (its reference is then the float32 extractor).
  """
  from grl_jax import inference  # pylint: disable=g-import-not-at-top
  extractor = inference.load(workdir, step)
  if dtype is not None and dtype != compute_dtype(extractor):
    from grl_jax import models  # pylint: disable=g-import-not-at-top
    schema.check_choice(dtype, schema.DTYPES, '--dtype')
    config = dict(extractor.config)
    config['model'] = {**config['model'], 'dtype': dtype}
    model = models.get(config['model']['name']).build(config['model'],
                                                      int(extractor.meta.get('num_classes') or 1))
    extractor = inference.Extractor(model, extractor.variables, config,
                                    extractor.descriptor_distance, extractor.meta)
  data = extractor.config.get('data') or {}
  try:
    t, h, w = (int(data[k]) for k in ('seq_len', 'height', 'width'))
  except KeyError as e:
    raise ConfigError(f'{workdir}: the checkpoint config has no data.{e.args[0]}: the clip '
                      'shape of the export comes from config.data.{seq_len,height,width}') from e
  variables = extractor.variables

  # The jitted body of Extractor.clip_features itself: one definition of "the descriptor"
  # (normalisation, eval-mode apply, float32 cast), so the artifact cannot drift from it.
  descriptor = extractor.descriptor

  def fn(clips):
    return descriptor(variables, clips, normalized=False)

  out = jax.eval_shape(fn, jax.ShapeDtypeStruct((1, t, h, w, 3), jnp.uint8))
  return Serving(fn=fn, extractor=extractor, seq_len=t, height=h, width=w,
                 descriptor_dim=int(out.shape[-1]), model=str(extractor.config['model']['name']),
                 step=extractor.meta.get('step'),
                 descriptor_distance=extractor.descriptor_distance)


def compute_dtype(extractor) -> str:
  """The extractor's `config.model.dtype` name ('float32' when the config has none)."""
  return str((extractor.config.get('model') or {}).get('dtype') or 'float32')


# Import name -> pip requirement, for the one-line "missing package" errors. The versions are
# the pins of requirements.txt.
PIP = {'jax2onnx': 'jax2onnx==0.13.0', 'onnx': 'onnx==1.23.2',
       'onnxruntime': 'onnxruntime==1.32.0', 'tensorflow': 'tensorflow-cpu==2.21.0'}


def require(module: str, why: str):
  """Imports `module`, or raises ExportError naming it and the pip command that installs it."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    pip = PIP.get(module, module)
    raise ExportError(f'{why} needs the Python package {module!r}, which is not installed '
                      f'({e}); install it with: pip install {pip}') from e


def agreement(got: np.ndarray, want: np.ndarray, tolerance: float) -> float:
  """max |got - want| / (1 + max |want|), after a shape check (ExportError on mismatch)."""
  got, want = np.asarray(got), np.asarray(want)
  if got.shape != want.shape or got.dtype != np.float32:
    raise ExportError(f'the exported artifact returned {got.dtype}{list(got.shape)}, expected '
                      f'float32{list(want.shape)}')
  error = float(np.max(np.abs(got - want)) / (1.0 + np.max(np.abs(want))))
  if not error <= tolerance:  # also catches NaN
    raise ExportError(f'the exported artifact disagrees with the JAX extractor: relative max '
                      f'difference {error:.3g} > {tolerance:g}')
  return error
