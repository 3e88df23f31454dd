"""Training augmentation: parameters drawn on the host (numpy), applied in the graph or in numpy.

`sample_augmentation` draws a clip's flip, pad-crop offset and erasing boxes from its own keyed
generator (`sampling.sample_rng(seed, step, position, 2)`); `flip_crop` applies the first two
inside tf.data and `erase_inplace` pastes the boxes on the delivered numpy batch (torchreid/CAS
order: flip, pad + crop, erasing).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from data_pipeline.pipeline.options import DataOptions

_ERASE_ATTEMPTS = 100  # Zhong et al.'s RandomErasing resamples up to 100 times
_ERASE_AREA = (0.02, 0.2)
_ERASE_ASPECT = 0.3


def sample_augmentation(rng: np.random.Generator, opts: DataOptions) -> dict[str, np.ndarray]:
  """Draws the augmentation of one training clip.

  Returns:
    flip: int32 scalar, 1 = mirror the whole clip (p=0.5 when `opts.flip`).
    crop: int32[2], (dy, dx) offset of the H x W window in the clip zero-padded by
      `opts.pad_crop` on each side (clip-consistent; (pad, pad) = no shift).
    erase: int32[T, 8], per frame (apply, y0, x0, h, w, r, g, b). Random erasing
      (Zhong et al.): with p = erasing_prob, area fraction U(0.02, 0.2), aspect
      r = U(0.3, 1/0.3), h = round(sqrt(area * r)), w = round(sqrt(area / r)), redrawn until
      h < H and w < W, corner uniform among the positions where the box fits, filled with one
      random RGB colour. The box is pasted at the sampled corner (GRL pasted it at (w, h), bug
      B6). 'frame' mode draws every frame independently, 'clip' mode once for the clip.
  """
  t, hh, ww = opts.seq_len, opts.height, opts.width
  flip = int(opts.flip and rng.random() < 0.5)
  pad = opts.pad_crop
  crop = rng.integers(0, 2 * pad + 1, size=2) if pad else np.zeros(2, np.int64)
  erase = np.zeros((t, 8), np.int32)
  if opts.erasing_prob > 0:
    m = t if opts.erasing_mode == 'frame' else 1
    apply = rng.random(m) < opts.erasing_prob
    area = rng.uniform(*_ERASE_AREA, size=(m, _ERASE_ATTEMPTS)) * hh * ww
    aspect = rng.uniform(_ERASE_ASPECT, 1 / _ERASE_ASPECT, size=(m, _ERASE_ATTEMPTS))
    h = np.round(np.sqrt(area * aspect)).astype(np.int64)
    w = np.round(np.sqrt(area / aspect)).astype(np.int64)
    fits = (h < hh) & (w < ww) & (h > 0) & (w > 0)
    first = np.argmax(fits, axis=1)
    h, w = h[np.arange(m), first], w[np.arange(m), first]
    apply &= fits.any(axis=1)
    y0 = rng.integers(0, hh - h + 1)
    x0 = rng.integers(0, ww - w + 1)
    colour = rng.integers(0, 256, size=(m, 3))
    rows = np.concatenate([apply[:, None], y0[:, None], x0[:, None], h[:, None], w[:, None],
                           colour], axis=1)
    erase[:] = np.broadcast_to(rows, (t, 8)) if m == 1 else rows
  return {'flip': np.int32(flip), 'crop': crop.astype(np.int32), 'erase': erase}


def no_augmentation(opts: DataOptions) -> dict[str, np.ndarray]:
  """The parameters of an unaugmented clip (evaluation): no flip, centred crop, no erasing."""
  return {'flip': np.int32(0), 'crop': np.full(2, opts.pad_crop, np.int32),
          'erase': np.zeros((opts.seq_len, 8), np.int32)}


def flip_crop(frames: tf.Tensor, flip: tf.Tensor, crop: tf.Tensor, pad: int) -> tf.Tensor:
  """Clip-consistent horizontal flip, then zero-pad by `pad` and crop H x W at `crop`
  (torchreid/CAS transform order: flip, pad + crop, erasing). uint8[T, H, W, 3]."""
  t, h, w = frames.shape[0], frames.shape[1], frames.shape[2]

  def mirrored():  # a 3-D reverse is ~3x cheaper than reversing axis 2 of the 4-D tensor
    return tf.reshape(tf.reverse(tf.reshape(frames, [t * h, w, 3]), axis=[1]), [t, h, w, 3])

  frames = tf.cond(flip > 0, mirrored, lambda: frames)
  if pad:
    padded = tf.pad(frames, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    frames = tf.slice(padded, tf.stack([0, crop[0], crop[1], 0]), [t, h, w, 3])
  return frames


def erase_inplace(frames: np.ndarray, erase: np.ndarray) -> np.ndarray:
  """Random erasing with host-drawn boxes, in place on uint8[..., T, H, W, 3].

  `erase` is int[..., T, 8] rows (apply, y0, x0, h, w, r, g, b) from `sample_augmentation`.
  Done in numpy on the delivered batch: a slice assignment touches only the erased pixels,
  whereas a masked select in the tf.data graph costs a full pass over every frame (~5 ms per
  8-frame clip on this CPU, measured) and halved the pipeline's throughput.
  """
  hh, ww, c = frames.shape[-3:]
  rows = np.reshape(frames, (-1, hh, ww * c), copy=False)  # a view: an image row = a run of bytes
  flat_e = erase.reshape(-1, 8)
  for i in np.flatnonzero(flat_e[:, 0]):
    _, y0, x0, h, w, r, g, b = (int(v) for v in flat_e[i])
    # One pre-tiled row broadcast over the box's rows: numpy copies runs of w*3 bytes instead
    # of looping over 3-byte pixels (2.5x faster).
    rows[i, y0:y0 + h, c * x0:c * (x0 + w)] = np.tile(np.array((r, g, b), frames.dtype), w)
  return frames
