"""Feature extraction from a saved model, for any registered model family.

    from grl_jax import inference
    extractor = inference.load('workdir/mars_grl')          # or a grl_jax.convert output dir
    f = extractor.clip_features(clips_uint8)                # [B, T, H, W, 3] -> f32[B, D]
    g = extractor.tracklet_features(frames_uint8)           # [n, H, W, 3]    -> f32[D]
    score = f @ g  if extractor.descriptor_distance == 'dot'

The model is rebuilt from the checkpoint's meta config (`meta['config']['model']`, through the
registry) and only its eval-mode `outputs['descriptor']` is used. Frames are RGB at the
resolution the model was trained with (`config.data.height` x `config.data.width`); they are
not resized here.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from grl_jax.errors import CheckpointError
from grl_jax.trainer.step import normalize_frames as normalize


class Extractor:
  """Eval-mode descriptors of clips and tracklets.

  Attributes:
    model: the Linen module; variables: its {'params', 'batch_stats'}; config: the meta config
    (plain dict); descriptor_distance: 'dot' | 'euclidean' | 'cosine' (from the registry);
    seq_len, test_sampling: the clip length and test sampling of `tracklet_features`;
    batch_size: clips per forward pass in `tracklet_features`.
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
      self.batch_size = int(batch_size or self.config['eval']['batch_size'])
    except KeyError as e:
      raise CheckpointError(f'the checkpoint config has no field {e}: it was not written by '
                            'grl_jax (train or convert)') from e
    # One jitted function; jax.jit keeps one executable per input shape/dtype (and flag).
    self._forward = jax.jit(self._descriptor, static_argnames=('normalized',))

  def _descriptor(self, variables, clips, normalized: bool):
    x = clips.astype(jnp.float32) if normalized else normalize(clips)
    out = self.model.apply(variables, x, train=False)
    return out['descriptor'].astype(jnp.float32)

  def clip_features(self, clips, normalized: bool = False) -> np.ndarray:
    """Descriptors of clips.

    Args:
      clips: [B, T, H, W, 3] RGB; uint8 / 0-255 values when `normalized=False` (ImageNet
        mean/std applied on the device), already-normalised float32 when True.
      normalized: see above.
    Returns:
      float32[B, D] (GRL: the 6,144-d concat descriptor).
    """
    clips = np.asarray(clips)
    if clips.ndim != 5 or clips.shape[-1] != 3:
      raise ValueError(f'clips must be [B, T, H, W, 3], got shape {clips.shape}')
    if normalized and clips.dtype == np.uint8:
      raise ValueError('normalized=True expects ImageNet-normalised float clips, got uint8')
    return np.asarray(self._forward(self.variables, clips, normalized=normalized))

  def tracklet_features(self, frames, normalized: bool = False) -> np.ndarray:
    """One descriptor for a whole tracklet, with the configured test sampling.

    `test_sampling='rrs_test'` (or 'evenly') forwards one clip; 'dense' forwards every
    consecutive clip (`data_pipeline.sampling.dense`) and averages their descriptors without
    re-normalising, as the official GRL evaluation does.

    Args:
      frames: [n, H, W, 3] RGB frames of the tracklet in temporal order (uint8 unless
        `normalized`).
    Returns:
      float32[D].
    """
    from data_pipeline import sampling  # pylint: disable=g-import-not-at-top
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
      raise ValueError(f'frames must be [n >= 1, H, W, 3], got shape {frames.shape}')
    index = sampling.test_clips(self.test_sampling, len(frames), self.seq_len)
    feats = [self.clip_features(frames[index[s:s + self.batch_size]], normalized=normalized)
             for s in range(0, len(index), self.batch_size)]
    return np.concatenate(feats).mean(axis=0)


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
