"""Feature extraction from a saved model, for any registered model family.

    from grl_jax import inference
    extractor = inference.load('workdir/mars_grl')          # or a grl_jax.convert output dir
    f = extractor.clip_features(clips_uint8)                # [B, T, H, W, 3] -> f32[B, D]
    g = extractor.tracklet_features(frames_uint8)           # [n, H, W, 3]    -> f32[D]
    g = extractor.tracklet_features_from_folder('crops/person7')   # image files -> f32[D]
    g = extractor.from_images(['a/1.jpg', 'a/2.png'])              # in the order given
    f = extractor.clip_features(clips_64x32, resize=True)   # any H x W, resized as evaluation
    score = f @ g  if extractor.descriptor_distance == 'dot'

The model is rebuilt from the checkpoint's meta config (`meta['config']['model']`, through the
registry) and only its eval-mode `outputs['descriptor']` is used. Arrays are RGB, channels
last, at the resolution the model was trained with (`extractor.height` x `extractor.width`,
i.e. `config.data.height` x `config.data.width`); uint8 (or 0-255 values) unless
`normalized=True` (ImageNet mean/std already applied). Anything else is refused with one line
(`InputError`, a ValueError) saying what was passed and what to do: another H x W (pass
`resize=True` to resize with the evaluation pipeline's antialiased bilinear resize), a missing
batch dimension, channels first ([B, T, 3, H, W]), 0-1 floats, normalised values without
`normalized=True` or 0-255 values with it. Image files are decoded and resized exactly as the
evaluation pipeline does (grl_jax/folders.py `read_frames`).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from grl_jax.errors import CheckpointError, InputError
from grl_jax.trainer.step import normalize_frames as normalize

# ImageNet-normalised pixels lie in [(0 - 0.485) / 0.229, (1 - 0.406) / 0.225] = [-2.12, 2.64].
_NORMALIZED_RANGE = (-2.2, 2.7)


def _layout_hint(shape: tuple, kind: str) -> str:
  """What an array of `shape` most likely is, when it is not `kind` ('clips' | 'frames')."""
  want = 5 if kind == 'clips' else 4
  if len(shape) == want and shape[-1] != 3 and want >= 4 and shape[want - 3] == 3:
    order = '(0, 1, 3, 4, 2)' if kind == 'clips' else '(0, 2, 3, 1)'
    return f' (channels first?); transpose it to channels last with .transpose{order}'
  if kind == 'clips' and len(shape) == 4 and shape[-1] == 3:
    return ' (one clip without the batch dimension?); pass clips[None]'
  if kind == 'frames' and len(shape) == 3 and shape[-1] == 3:
    return ' (one frame?); pass frames[None]'
  if kind == 'frames' and len(shape) == 5:
    return ' (a batch of clips?); use clip_features, or one tracklet\'s frames'
  return ''


def _check_values(x: np.ndarray, normalized: bool, kind: str) -> None:
  """dtype and value range of uint8 / 0-255 pixels, or of ImageNet-normalised floats."""
  if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer)
                                 or np.issubdtype(x.dtype, np.floating)):
    raise InputError(f'{kind} have dtype {x.dtype}; expected uint8 RGB (or float32 with '
                     'normalized=True)')
  lo, hi = (float(v) for v in (x.min(), x.max())) if x.size else (0.0, 0.0)
  if normalized:
    if not np.issubdtype(x.dtype, np.floating):
      raise InputError(f'normalized=True expects ImageNet-normalised float {kind}, got '
                       f'{x.dtype}; pass uint8 0-255 {kind} with normalized=False')
    if lo < _NORMALIZED_RANGE[0] - 0.5 or hi > _NORMALIZED_RANGE[1] + 0.5:
      raise InputError(f'normalized=True expects ImageNet-normalised {kind} (values about '
                       f'{_NORMALIZED_RANGE[0]} to {_NORMALIZED_RANGE[1]}), got values '
                       f'{lo:.3g} to {hi:.3g}; for 0-255 pixels use normalized=False')
    return
  if lo < 0 or hi > 255:
    hint = (' (already ImageNet-normalised? then pass normalized=True)' if lo < 0 and hi < 4
            else '')
    raise InputError(f'{kind} hold values {lo:.3g} to {hi:.3g}; expected 0-255 RGB (uint8)'
                     + hint)
  if np.issubdtype(x.dtype, np.floating) and 0 < hi <= 1.0:
    raise InputError(f'{kind} are {x.dtype} in [0, 1]; expected 0-255 RGB: pass '
                     f'(x * 255).round().astype(np.uint8)')


def _resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
  """[..., h, w, 3] -> [..., height, width, 3] with the evaluation pipeline's resize
  (data_pipeline/pipeline/decode.py: antialiased bilinear; uint8 rounded and clipped)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from data_pipeline.pipeline import tf_device  # pylint: disable=g-import-not-at-top
  tf_device.hide_accelerators_from_tf()
  lead, (h, w) = x.shape[:-3], x.shape[-3:-1]
  flat = x.reshape((-1, h, w, 3))
  out = tf.image.resize(flat, [height, width], method='bilinear', antialias=True).numpy()
  if x.dtype == np.uint8:
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
  return out.reshape(lead + (height, width, 3)).astype(x.dtype, copy=False)


class Extractor:
  """Eval-mode descriptors of clips and tracklets.

  Attributes:
    model: the Linen module; variables: its {'params', 'batch_stats'}; config: the meta config
    (plain dict); descriptor_distance: 'dot' | 'euclidean' | 'cosine' (from the registry);
    seq_len, test_sampling: the clip length and test sampling of `tracklet_features`;
    batch_size: clips per forward pass in `tracklet_features`; height, width: the input size
    the model was trained with (every array must have it, or be passed with resize=True).
  """

  def __init__(self, model, variables: Mapping[str, Any], config: Mapping[str, Any],
               descriptor_distance: str = 'dot', meta: Mapping[str, Any] | None = None,
               batch_size: int | None = None):
    self.model = model
    self.variables = dict(variables)
    if not self.variables.get('batch_stats'):
      self.variables.pop('batch_stats', None)
    self.config = dict(config)
    self.meta = dict(meta or {})
    self.descriptor_distance = descriptor_distance
    try:
      self.seq_len = int(self.config['data']['seq_len'])
      self.test_sampling = str(self.config['data']['test_sampling'])
      self.height = int(self.config['data']['height'])
      self.width = int(self.config['data']['width'])
      self.batch_size = int(batch_size or self.config['eval']['batch_size'])
    except KeyError as e:
      raise CheckpointError(f'the checkpoint config has no field {e}: it was not written by '
                            'grl_jax (train or convert)') from e
    # One jitted function; jax.jit keeps one executable per input shape/dtype (and flag).
    self._forward = jax.jit(self.descriptor, static_argnames=('normalized',))

  def descriptor(self, variables, clips, normalized: bool):
    """The traced function behind `clip_features` (and the export, grl_jax/export/): clips
    [B, T, H, W, 3] (uint8 or normalised float) -> float32[B, D]."""
    x = clips.astype(jnp.float32) if normalized else normalize(clips)
    out = self.model.apply(variables, x, train=False)
    return out['descriptor'].astype(jnp.float32)

  def check_input(self, x, kind: str = 'clips', normalized: bool = False,
                  resize: bool = False) -> np.ndarray:
    """`x` as a numpy array the model accepts, or an InputError saying what is wrong.

    Args:
      x: clips [B, T, H, W, 3] (`kind='clips'`) or one tracklet's frames [n, H, W, 3]
        (`kind='frames'`), RGB, channels last; uint8 / 0-255 unless `normalized`.
      normalized: ImageNet-normalised floats.
      resize: resize another H x W to (height, width) instead of refusing it.
    """
    x = np.asarray(x)
    want = 5 if kind == 'clips' else 4
    layout = '[B, T, H, W, 3]' if kind == 'clips' else '[n >= 1, H, W, 3]'
    if x.ndim != want or x.shape[-1] != 3 or not x.shape[0]:
      raise InputError(f'{kind} must be {layout} RGB, channels last, got shape {x.shape}'
                       + _layout_hint(x.shape, kind))
    _check_values(x, normalized, kind)
    if x.shape[-3:-1] != (self.height, self.width):
      h, w = x.shape[-3:-1]
      if not resize:
        raise InputError(f'{kind} are {h} x {w} (H x W) but the model takes {self.height} x '
                         f'{self.width} (config.data.height x width); pass resize=True, or '
                         'load files with grl_jax.folders.read_frames')
      x = _resize(x, self.height, self.width)
    return x

  def clip_features(self, clips, normalized: bool = False, resize: bool = False) -> np.ndarray:
    """Descriptors of clips.

    Args:
      clips: [B, T, H, W, 3] RGB; uint8 / 0-255 values when `normalized=False` (ImageNet
        mean/std applied on the device), already-normalised float32 when True.
      normalized: see above.
      resize: resize clips of another H x W (see `check_input`).
    Returns:
      float32[B, D] (GRL: the 6,144-d concat descriptor).
    """
    clips = self.check_input(clips, 'clips', normalized, resize)
    return np.asarray(self._forward(self.variables, clips, normalized=normalized))

  def tracklet_features(self, frames, normalized: bool = False,
                        resize: bool = False) -> np.ndarray:
    """One descriptor for a whole tracklet, with the configured test sampling.

    `test_sampling='rrs_test'` (or 'evenly') forwards one clip; 'dense' forwards every
    consecutive clip (`data_pipeline.sampling.dense`) and averages their descriptors without
    re-normalising, as the official GRL evaluation does.

    Args:
      frames: [n, H, W, 3] RGB frames of the tracklet in temporal order (uint8 unless
        `normalized`).
      resize: resize frames of another H x W (see `check_input`).
    Returns:
      float32[D].
    """
    from data_pipeline import sampling  # pylint: disable=g-import-not-at-top
    frames = self.check_input(frames, 'frames', normalized, resize)
    index = sampling.test_clips(self.test_sampling, len(frames), self.seq_len)
    feats = [self.clip_features(frames[index[s:s + self.batch_size]], normalized=normalized)
             for s in range(0, len(index), self.batch_size)]
    return np.concatenate(feats).mean(axis=0)

  def from_images(self, paths) -> np.ndarray:
    """float32[D]: `tracklet_features` of image files (in the order given), decoded and resized
    as the evaluation pipeline does (grl_jax/folders.py `read_frames`)."""
    from grl_jax import folders  # pylint: disable=g-import-not-at-top
    if isinstance(paths, (str, bytes)):
      raise InputError(f'from_images expects a list of image paths, got the string {paths!r}; '
                       'for a folder use tracklet_features_from_folder')
    return self.tracklet_features(folders.read_frames(list(paths), self.height, self.width))

  def tracklet_features_from_folder(self, path: str) -> np.ndarray:
    """float32[D]: `tracklet_features` of the image files directly in folder `path`, in
    natural name order (grl_jax/folders.py)."""
    from grl_jax import folders  # pylint: disable=g-import-not-at-top
    return self.tracklet_features(folders.read_frames(str(path), self.height, self.width))


def load(checkpoint_dir: str, step: int | None = None, batch_size: int | None = None
         ) -> Extractor:
  """Extractor of a checkpoint (a training workdir, its `checkpoints/`, or a convert output)."""
  from grl_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from grl_jax import models  # pylint: disable=g-import-not-at-top
  variables, meta = checkpoint.restore_variables(checkpoint_dir, step)
  config = dict(meta.get('config') or {})
  model_cfg = config.get('model')
  if not model_cfg or 'name' not in model_cfg:
    raise CheckpointError(f'{checkpoint_dir}: the checkpoint meta has no config.model.name; it '
                          'was not written by grl_jax (train or convert)')
  spec = models.get(model_cfg['name'])
  num_classes = int(meta.get('num_classes') or 1)  # only sizes train-time classifiers
  model = spec.build(_as_config(model_cfg), num_classes)
  return Extractor(model, variables, config, spec.descriptor_distance, meta, batch_size)


def _as_config(model_cfg: Mapping[str, Any]):
  # Model factories read fields with `.get`; a ConfigDict also gives attribute access.
  try:
    import ml_collections  # pylint: disable=g-import-not-at-top
    return ml_collections.ConfigDict(dict(model_cfg))
  except ImportError:
    return dict(model_cfg)
