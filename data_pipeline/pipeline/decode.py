"""Frames from files, in the tf.data graph and eagerly: validity check, decode, resize.

tf.cond costs tens of microseconds per call inside a tf.data function (an `If` op running a
function), about as much as a JPEG decode of a few rows, so the per-frame path is written with
plain ops wherever possible (measured on 256x128 synthetic MARS frames: read + decode
~215 us/frame; the first version of this file, with 4 conds per frame and a 4-D reverse,
spent 3x that per clip). A clip's frames are checked by one set of string ops over string[T]
and share one resize branch (`decode_clip`): 0.15 ms less per 8-frame clip than a check and a
cond per frame (benchmarks/RESULTS.md, "Input per core").
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from data_pipeline.pipeline.augment import flip_crop
from data_pipeline.pipeline.options import DataOptions

_SOI = b'\xff\xd8\xff'
_EOI = b'\xff\xd9'
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_PNG_END = b'IEND\xaeB`\x82'  # IEND chunk type + its (constant) CRC: the last 8 bytes


def looks_valid(data: tf.Tensor) -> tf.Tensor:
  """Whether each element of `data` (string, any shape) looks like a complete JPEG, PNG or
  BMP: JPEG start (SOI) and end (EOI) markers, PNG signature and IEND chunk, or 'BM' and a
  header file size no larger than the data. Catches truncated copies, empty and non-image files
  without decoding. (A JPEG with bytes after its EOI marker counts as bad.) bool, `data`'s
  shape: a clip's T frames are checked by one set of ops, not T."""
  n = tf.strings.length(data)

  def tail(k):  # the last k bytes (all of a shorter string)
    return tf.strings.substr(data, tf.maximum(n - k, 0), tf.fill(tf.shape(n), k))

  jpeg = tf.logical_and(tf.equal(tf.strings.substr(data, 0, 3), _SOI), tf.equal(tail(2), _EOI))
  png = tf.logical_and(tf.equal(tf.strings.substr(data, 0, 8), _PNG_SIGNATURE),
                       tf.equal(tail(8), _PNG_END))
  # BMP: bytes 2..5 hold the file size (uint32, little-endian); zero padding keeps substr in
  # range for data shorter than the header.
  size = tf.io.decode_raw(tf.strings.substr(tf.strings.join([data, b'\0' * 6]), 2, 4), tf.uint8)
  size = tf.reduce_sum(tf.cast(size, tf.int64) * tf.constant([1, 1 << 8, 1 << 16, 1 << 24],
                                                             tf.int64), axis=-1)
  bmp = tf.logical_and(tf.equal(tf.strings.substr(data, 0, 2), b'BM'),
                       tf.logical_and(n >= 26, size <= tf.cast(n, tf.int64)))
  return tf.logical_or(tf.logical_or(jpeg, png), bmp)


_BLACK_JPEG_CACHE: dict = {}


def black_jpeg(height: int, width: int) -> bytes:
  """A valid JPEG of a black H x W image: decoded instead of a frame that failed the check."""
  key = (height, width)
  if key not in _BLACK_JPEG_CACHE:
    _BLACK_JPEG_CACHE[key] = tf.io.encode_jpeg(
        tf.zeros([height, width, 3], tf.uint8), quality=75).numpy()
  return _BLACK_JPEG_CACHE[key]


def _resize(img: tf.Tensor, height: int, width: int) -> tf.Tensor:
  """uint8[h, w, 3] -> uint8[H, W, 3], bilinear and antialiased, like PIL's."""
  out = tf.image.resize(img, [height, width], method='bilinear', antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)


def resize_if_needed(img: tf.Tensor, height: int, width: int) -> tf.Tensor:
  """uint8[h, w, 3] -> uint8[H, W, 3]; resized (`_resize`) only when needed."""
  shape = tf.shape(img)
  same = tf.logical_and(tf.equal(shape[0], height), tf.equal(shape[1], width))
  return tf.reshape(tf.cond(same, lambda: img, lambda: _resize(img, height, width)),
                    [height, width, 3])


def decode_clip(data: tf.Tensor, fallback: bytes, height: int,
                width: int) -> tuple[tf.Tensor, tf.Tensor]:
  """string[T] encoded frames -> (uint8[T, H, W, 3], ok: bool[T]). A frame that fails
  `looks_valid` comes out black with ok=False. One check and one resize branch serve the whole
  clip (all frames at H x W, the usual case, are stacked as they are)."""
  t = data.shape[0]
  ok = looks_valid(data)
  data = tf.where(ok, data, fallback)  # a string select instead of a cond around each decode
  imgs = [tf.io.decode_image(data[i], channels=3, expand_animations=False) for i in range(t)]
  sizes = tf.stack([tf.shape(img)[:2] for img in imgs])
  same = tf.reduce_all(tf.equal(sizes, tf.constant([height, width])))

  def as_they_are():
    return tf.stack([tf.reshape(img, [height, width, 3]) for img in imgs])

  def resized():
    return tf.stack([resize_if_needed(img, height, width) for img in imgs])

  frames = tf.cond(same, as_they_are, resized)
  return tf.ensure_shape(frames, [t, height, width, 3]), ok


def make_clip_fn(opts: DataOptions, packed: bool = False) -> Callable[[dict], dict]:
  """Maps a clip element {paths: string[T], data: string[T], flip, crop, ...} to one with frames:
  uint8[T, H, W, 3] (loaded, resized, flipped, cropped; erasing comes later, on the host) and
  ok: bool[T] (False where a frame failed the check and came out black). `packed`: decode the
  bytes in `data` (read from a pack by the host plan) instead of reading `paths`."""
  t, h, w = opts.seq_len, opts.height, opts.width
  fallback = black_jpeg(h, w)

  def clip_fn(el):
    data = el['data'] if packed else tf.stack([tf.io.read_file(el['paths'][i])
                                               for i in range(t)])
    frames, ok = decode_clip(tf.ensure_shape(data, [t]), fallback, h, w)
    out = dict(el)
    out['frames'] = flip_crop(frames, el['flip'], el['crop'], opts.pad_crop)
    out['ok'] = ok
    return out

  return clip_fn


def load_frame_eager(path: str, height: int, width: int,
                     read: Optional[Callable[[str], bytes]] = None
                     ) -> tuple[Optional[np.ndarray], str]:
  """(uint8[H, W, 3] or None, reason): the slow, exception-safe loader of the repair path.
  An empty path (a tracklet with no valid frame left) gives a black frame. `read`: path ->
  bytes for frames held in a pack (data_pipeline/pack/reader.py); default: the file."""
  if not path:
    return np.zeros((height, width, 3), np.uint8), ''
  try:
    data = tf.io.read_file(path) if read is None else tf.constant(read(path))
    if not bool(looks_valid(data)):
      return None, 'truncated or not a JPEG/PNG/BMP'
    img = tf.io.decode_image(data, channels=3, expand_animations=False)
    return resize_if_needed(img, height, width).numpy(), ''
  except tf.errors.OpError as e:
    return None, f'{type(e).__name__}: {e.message.splitlines()[0][:200]}'
  except Exception as e:  # pylint: disable=broad-except  (a pack's read: a broken shard)
    return None, f'{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""}'
