"""tf.data input pipelines: training batches and evaluation clips as host-local numpy dicts.

Design (environment.md §6: uint8 output, normalisation on the accelerator):

* All randomness is drawn on the host in numpy, keyed by (seed, step, position in the global
  batch): the batch sampler picks tracklets (`samplers.py`), `sampling.py` picks frames and
  `sample_augmentation` draws flip / pad-crop / erasing parameters. The rest only applies
  them, so a stream is identical on resume (`start_step`) and for any process count.
* `tf.data.Dataset.range(steps)` -> host plan of one step (numpy_function: frame paths and
  augmentation parameters of this process's rows) -> unbatch into clips -> parallel map
  (read, check, decode, resize if needed, flip, pad + crop) -> batch -> prefetch -> numpy,
  then random erasing on the host (numpy slice assignment: only the erased pixels are touched;
  the same operation in the graph cost a full pass over every frame).
* Bad frames never crash a run (unless `strict`): a missing local file is caught by the host
  plan (os.path.exists); a truncated, empty or non-image file by a cheap in-graph check (JPEG
  SOI/EOI markers, PNG signature/IEND) that swaps in a black JPEG before decoding and flags the
  frame, which the host then reloads; anything that still makes TF raise (a file whose markers
  look right but whose body is broken, a missing gs:// file) by redoing that step eagerly and
  restarting the tf.data stream after it. A bad file is logged once per process (WARNING,
  with its path), remembered, and each use is replaced by the nearest valid frame of the same
  tracklet (i+1, i-1, i+2, i-2, ...): the same choice on every path, so the stream stays
  deterministic given the files on disk. `iterator.bad_frames` counts replaced frames,
  `iterator.stats.files` lists the bad files, `STATS` has process-wide totals. With
  `strict=True` a `BadFrameError` naming the file is raised instead.
"""
from __future__ import annotations

import dataclasses
import math
import os
import threading
from typing import Any, Callable, Iterator, Mapping, Optional

from absl import logging
import numpy as np
import tensorflow as tf

from data_pipeline import sampling
from data_pipeline import samplers
from data_pipeline.index import TrackletIndex

# The accelerator belongs to JAX; TF only reads files on the CPU.
try:
  tf.config.set_visible_devices([], 'GPU')
except (RuntimeError, ValueError):  # already initialised, or no GPU support in this build
  pass

_ERASE_ATTEMPTS = 100  # Zhong et al.'s RandomErasing resamples up to 100 times
_ERASE_AREA = (0.02, 0.2)
_ERASE_ASPECT = 0.3


class BadFrameError(IOError):
  """A frame is missing or cannot be decoded and `data.strict` is set."""


# ------------------------------------------------------------------------------------------
# Configuration.


@dataclasses.dataclass(frozen=True)
class DataOptions:
  """The `config.data` fields the pipeline reads (see the team brief's config schema)."""
  height: int
  width: int
  seq_len: int
  train_sampling: str = 'rrs'
  sample_stride: int = 1
  test_sampling: str = 'rrs_test'
  batch_sampler: str = 'pair'
  p: Optional[int] = None
  k: Optional[int] = None
  pk_mode: str = 'replace'
  flip: bool = True
  erasing_prob: float = 0.0
  erasing_mode: str = 'frame'
  pad_crop: int = 0
  strict: bool = False
  prefetch: int = 2  # batches prefetched; 0 = none, -1 = tf.data.AUTOTUNE
  threads: int = 0  # tf.data private thread pool size; 0 = TF's shared pool (one per core)


def data_options(data_cfg: Any) -> DataOptions:
  """Reads and validates `config.data` (a ConfigDict, a mapping or a DataOptions)."""
  if isinstance(data_cfg, DataOptions):
    return data_cfg
  get = data_cfg.get if hasattr(data_cfg, 'get') else lambda k, d=None: getattr(data_cfg, k, d)
  defaults = DataOptions(height=1, width=1, seq_len=1)
  values = {}
  for f in dataclasses.fields(DataOptions):
    v = get(f.name, None)
    if v is None:
      if f.name in ('height', 'width', 'seq_len'):
        raise ValueError(f'config.data.{f.name} is missing; expected a positive int')
      v = getattr(defaults, f.name)
    values[f.name] = v

  def positive_int(name, minimum=1):
    v = values[name]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
      raise ValueError(f'config.data.{name}={v!r}: expected an int >= {minimum}')
    values[name] = int(v)

  def choice(name, allowed):
    if values[name] not in allowed:
      raise ValueError(f'config.data.{name}={values[name]!r}: expected one of {allowed}')

  for name in ('height', 'width', 'seq_len', 'sample_stride'):
    positive_int(name)
  for name in ('pad_crop', 'threads'):
    positive_int(name, 0)
  positive_int('prefetch', -1)
  for name in ('p', 'k'):  # 0 or None: derived from the batch size
    if values[name] in (0, None):
      values[name] = None
    else:
      positive_int(name)
  choice('train_sampling', sampling.TRAIN_MODES)
  choice('test_sampling', sampling.TEST_MODES)
  choice('batch_sampler', samplers.SAMPLERS)
  choice('pk_mode', samplers.PK_MODES)
  choice('erasing_mode', ('frame', 'clip'))
  for name in ('flip', 'strict'):
    if not isinstance(values[name], (bool, np.bool_)):
      raise ValueError(f'config.data.{name}={values[name]!r}: expected a bool')
    values[name] = bool(values[name])
  prob = values['erasing_prob']
  if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0 <= prob <= 1:
    raise ValueError(f'config.data.erasing_prob={prob!r}: expected a float in [0, 1]')
  values['erasing_prob'] = float(prob)
  return DataOptions(**values)


# ------------------------------------------------------------------------------------------
# Augmentation parameters (host, numpy).


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


def _no_augmentation(opts: DataOptions) -> dict[str, np.ndarray]:
  return {'flip': np.int32(0), 'crop': np.full(2, opts.pad_crop, np.int32),
          'erase': np.zeros((opts.seq_len, 8), np.int32)}


# ------------------------------------------------------------------------------------------
# Bad-frame bookkeeping (host).


@dataclasses.dataclass
class BadFrameStats:
  """What a pipeline replaced: `files` (bad paths seen) and `replaced` (delivered frames that
  were substitutes for bad ones; a bad frame sampled 3 times counts 3)."""
  replaced: int = 0
  files: set = dataclasses.field(default_factory=set)
  lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

  def add_file(self, path: str) -> bool:
    """Records a bad file; True the first time it is seen."""
    with self.lock:
      new = path not in self.files
      self.files.add(path)
    return new

  def add_replaced(self, n: int):
    with self.lock:
      self.replaced += int(n)


STATS = BadFrameStats()  # process-wide totals over every iterator


def _is_local(path: str) -> bool:
  return '://' not in path


def _candidates(i: int, n: int) -> Iterator[int]:
  """i, i+1, i-1, i+2, i-2, ... restricted to [0, n): nearest frames first."""
  yield i
  for d in range(1, n):
    for j in (i + d, i - d):
      if 0 <= j < n:
        yield j


# ------------------------------------------------------------------------------------------
# Graph side: one clip from paths + parameters.
#
# tf.cond costs tens of microseconds per call inside a tf.data function (an `If` op running a
# function), about as much as a JPEG decode of a few rows, so the per-frame path is written with
# plain ops wherever possible (measured on 256x128 synthetic MARS frames: read + decode
# ~215 us/frame; the first version of this file, with 4 conds per frame and a 4-D reverse,
# spent 3x that per clip).

_SOI = b'\xff\xd8\xff'
_EOI = b'\xff\xd9'
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_PNG_END = b'IEND\xaeB`\x82'  # IEND chunk type + its (constant) CRC: the last 8 bytes


def _looks_valid(data: tf.Tensor) -> tf.Tensor:
  """Whether `data` (scalar string) looks like a complete JPEG or PNG: JPEG start (SOI) and
  end (EOI) markers, or PNG signature and IEND chunk. Catches truncated copies, empty and
  non-image files without decoding. (A JPEG with bytes after its EOI marker counts as bad.)"""
  n = tf.strings.length(data)
  jpeg = tf.logical_and(tf.equal(tf.strings.substr(data, 0, 3), _SOI),
                        tf.equal(tf.strings.substr(data, tf.maximum(n - 2, 0), 2), _EOI))
  png = tf.logical_and(tf.equal(tf.strings.substr(data, 0, 8), _PNG_SIGNATURE),
                       tf.equal(tf.strings.substr(data, tf.maximum(n - 8, 0), 8), _PNG_END))
  return tf.logical_or(jpeg, png)


_BLACK_JPEG_CACHE: dict = {}


def _black_jpeg(height: int, width: int) -> bytes:
  """A valid JPEG of a black H x W image: decoded instead of a frame that failed the check."""
  key = (height, width)
  if key not in _BLACK_JPEG_CACHE:
    _BLACK_JPEG_CACHE[key] = tf.io.encode_jpeg(
        tf.zeros([height, width, 3], tf.uint8), quality=75).numpy()
  return _BLACK_JPEG_CACHE[key]


def _resize_if_needed(img: tf.Tensor, height: int, width: int) -> tf.Tensor:
  """uint8[h, w, 3] -> uint8[H, W, 3]; bilinear (antialiased, like PIL's) only when needed."""
  shape = tf.shape(img)
  same = tf.logical_and(tf.equal(shape[0], height), tf.equal(shape[1], width))

  def resize():
    out = tf.image.resize(img, [height, width], method='bilinear', antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)

  return tf.reshape(tf.cond(same, lambda: img, resize), [height, width, 3])


def _load_frame(path: tf.Tensor, fallback: bytes, height: int,
                width: int) -> tuple[tf.Tensor, tf.Tensor]:
  """(uint8[H, W, 3], ok): a frame that fails `_looks_valid` comes out black with ok=False."""
  data = tf.io.read_file(path)
  ok = _looks_valid(data)
  data = tf.where(ok, data, fallback)  # a string select instead of a cond around the decode
  img = tf.io.decode_image(data, channels=3, expand_animations=False)
  return _resize_if_needed(img, height, width), ok


def _flip_crop(frames: tf.Tensor, flip: tf.Tensor, crop: tf.Tensor, pad: int) -> tf.Tensor:
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
  flat_f = frames.reshape((-1,) + frames.shape[-3:])
  flat_e = erase.reshape(-1, 8)
  for i in np.flatnonzero(flat_e[:, 0]):
    _, y0, x0, h, w, r, g, b = (int(v) for v in flat_e[i])
    flat_f[i, y0:y0 + h, x0:x0 + w] = (r, g, b)
  return frames


def _make_clip_fn(opts: DataOptions) -> Callable[[dict], dict]:
  """Maps a clip element {paths: string[T], flip, crop, ...} to one with frames:
  uint8[T, H, W, 3] (loaded, resized, flipped, cropped; erasing comes later, on the host) and
  ok: bool[T] (False where a frame failed the check and came out black)."""
  t, h, w = opts.seq_len, opts.height, opts.width
  fallback = _black_jpeg(h, w)

  def clip_fn(el):
    loaded = [_load_frame(el['paths'][i], fallback, h, w) for i in range(t)]
    frames = tf.stack([f for f, _ in loaded])
    out = dict(el)
    out['frames'] = _flip_crop(frames, el['flip'], el['crop'], opts.pad_crop)
    out['ok'] = tf.stack([o for _, o in loaded])
    return out

  return clip_fn


def _load_frame_eager(path: str, height: int, width: int) -> tuple[Optional[np.ndarray], str]:
  """(uint8[H, W, 3] or None, reason): the slow, exception-safe loader of the repair path.
  An empty path (a tracklet with no valid frame left) gives a black frame."""
  if not path:
    return np.zeros((height, width, 3), np.uint8), ''
  try:
    data = tf.io.read_file(path)
    if not bool(_looks_valid(data)):
      return None, 'truncated or not a JPEG/PNG'
    img = tf.io.decode_image(data, channels=3, expand_animations=False)
    return _resize_if_needed(img, height, width).numpy(), ''
  except tf.errors.OpError as e:
    return None, f'{type(e).__name__}: {e.message.splitlines()[0][:200]}'


# ------------------------------------------------------------------------------------------
# The stream: host plans -> tf.data -> numpy batches, with bad-frame recovery.


def _to_numpy(batch: Mapping[str, tf.Tensor]) -> dict[str, np.ndarray]:
  """Eager tensors -> numpy. The frames are taken without a copy (12 MB per batch): the
  batch's buffer is fresh and owned by nobody else, and erasing writes into it."""
  out = {}
  for k, v in batch.items():
    if k == 'frames' and hasattr(v, '_numpy'):
      arr = v._numpy()  # pylint: disable=protected-access
      out[k] = arr if arr.flags.writeable else np.array(arr)
    else:
      out[k] = v.numpy()
  return out

_PLAN_KEYS = ('paths', 'idx0', 'replaced', 'tracklet', 'pid', 'camid', 'flip', 'crop', 'erase')
_PLAN_DTYPES = (tf.string, tf.int32, tf.int32, tf.int32, tf.int32, tf.int32, tf.int32,
                tf.int32, tf.int32)


class _Resolver:
  """Maps (tracklet row, sampled frame index) to the path actually loaded, on the host."""

  def __init__(self, index: TrackletIndex, opts: DataOptions, stats: BadFrameStats):
    self.index, self.opts, self.stats = index, opts, stats
    self.bad: set = set()  # paths this iterator knows to be bad

  def _known_bad(self, path: str) -> bool:
    """Bad for this iterator, or found bad by an earlier one in this process (which saves
    the new iterator a tf.data restart; the replacement chosen is the same either way)."""
    if path in self.bad:
      return True
    if path in STATS.files:
      if self.opts.strict:
        raise BadFrameError(f'bad frame {path} (found earlier; config.data.strict=True)')
      self.bad.add(path)
      self.stats.add_file(path)
      return True
    return False

  def mark_bad(self, path: str, reason: str):
    if self.opts.strict:
      raise BadFrameError(f'bad frame {path}: {reason} (config.data.strict=True)')
    self.bad.add(path)
    self.stats.add_file(path)
    if STATS.add_file(path):  # log each file once per process
      logging.warning('data_pipeline: bad frame %s (%s); replacing it by the nearest valid '
                      'frame of its tracklet', path, reason)

  def host_resolve(self, row: int, i: int) -> tuple[str, bool]:
    """(path, replaced): the first candidate not known bad and, if local, existing."""
    start, n = int(self.index.starts[row]), int(self.index.lengths[row])
    for j in _candidates(int(i), n):
      path = str(self.index.frame_paths[start + j])
      if self._known_bad(path):
        continue
      if _is_local(path) and not os.path.exists(path):
        self.mark_bad(path, 'missing file')
        continue
      return path, j != i
    # Every frame is bad: feed the sampled one anyway; the repair path turns it black.
    return str(self.index.frame_paths[start + int(i)]), True

  def full_resolve(self, row: int, i: int) -> tuple[bool, np.ndarray]:
    """(replaced, uint8[H, W, 3]): like host_resolve, but each candidate is loaded with the
    exception-safe eager loader (the slow path; a black frame if none is valid)."""
    start, n = int(self.index.starts[row]), int(self.index.lengths[row])
    for j in _candidates(int(i), n):
      path = str(self.index.frame_paths[start + j])
      if self._known_bad(path):
        continue
      img, reason = _load_frame_eager(path, self.opts.height, self.opts.width)
      if img is not None:
        return j != i, img
      self.mark_bad(path, reason)
    logging.error('data_pipeline: every frame of tracklet %d is bad; using black frames', row)
    return True, _load_frame_eager('', self.opts.height, self.opts.width)[0]


class BatchIterator:
  """Iterator of host-local numpy batches for steps [start_step, stop_step).

  Attributes:
    step: the step of the next batch.
    bad_frames: frames delivered so far that replace bad ones.
    stats: this iterator's BadFrameStats.
    sampler, steps_per_epoch: the batch sampler (training only; None for evaluation).
  """

  sampler = None
  steps_per_epoch = None

  def __init__(self, plan_step: Callable[[int], dict], *, index: TrackletIndex,
               opts: DataOptions, local_batch: int, start_step: int, stop_step: Optional[int],
               resolver: _Resolver, out_keys: tuple[str, ...]):
    self._plan_step = plan_step
    self._index = index
    self._opts = opts
    self._b = local_batch
    self._step = int(start_step)
    self._stop = stop_step
    self._resolver = resolver
    self._out_keys = out_keys
    self._clip_fn = _make_clip_fn(opts)
    self.stats = resolver.stats
    self._it = self._build(self._step)

  @property
  def bad_frames(self) -> int:
    """Frames delivered so far that were replacements of bad frames."""
    return self.stats.replaced

  @property
  def step(self) -> int:
    """The step the next batch belongs to."""
    return self._step

  def _numpy_plan(self, step):
    plan = self._plan_step(int(step))
    return [plan[k] for k in _PLAN_KEYS]

  def _build(self, start: int):
    stop = self._stop if self._stop is not None else np.iinfo(np.int64).max
    if start >= stop:
      return iter(())
    t, b = self._opts.seq_len, self._b
    shapes = {'paths': [b, t], 'idx0': [b, t], 'replaced': [b, t], 'tracklet': [b], 'pid': [b],
              'camid': [b], 'flip': [b], 'crop': [b, 2], 'erase': [b, t, 8]}

    def plan(step):
      values = tf.numpy_function(self._numpy_plan, [step], _PLAN_DTYPES, stateful=True)
      return {k: tf.ensure_shape(v, shapes[k]) for k, v in zip(_PLAN_KEYS, values)}

    ds = tf.data.Dataset.range(start, stop).map(plan)
    ds = ds.unbatch().map(self._clip_fn, num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True)
    ds = ds.batch(b, drop_remainder=True)
    prefetch = self._opts.prefetch
    if prefetch:
      ds = ds.prefetch(tf.data.AUTOTUNE if prefetch < 0 else prefetch)
    options = tf.data.Options()
    options.deterministic = True
    options.threading.max_intra_op_parallelism = 1
    if self._opts.threads:
      options.threading.private_threadpool_size = self._opts.threads
    return iter(ds.with_options(options))

  def __iter__(self):
    return self

  def close(self):
    """Stops the stream now and releases its tf.data iterator (and its prefetch threads).

    A tf.data iterator that is still prefetching when the interpreter exits can deadlock the
    shutdown, so a caller that stops early (preemption, NaN, an error) should close it.
    """
    self._stop = self._step
    self._it = iter(())

  def __enter__(self) -> 'BatchIterator':
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __next__(self) -> dict[str, np.ndarray]:
    if self._stop is not None and self._step >= self._stop:
      raise StopIteration
    try:
      batch = _to_numpy(next(self._it))
    except tf.errors.OpError as e:
      # An element of this step made TF raise (or the host plan raised). Redo the step
      # eagerly, finding the culprit, then restart the stream after it.
      logging.warning('data_pipeline: step %d failed in tf.data (%s); reloading it eagerly',
                      self._step, e.message.splitlines()[0][:300])
      batch = self._eager_step(self._step)
      self._step += 1
      self._it = self._build(self._step)
      return self._finish(batch)
    self._repair(batch)
    self._step += 1
    return self._finish(batch)

  def _finish(self, batch: dict) -> dict[str, np.ndarray]:
    pad = batch['tracklet'] < 0
    n = int(((batch['replaced'].astype(bool) | ~batch['ok']) & ~pad[:, None]).sum())
    if n:
      self.stats.add_replaced(n)
      STATS.add_replaced(n)
    if pad.any():
      batch['frames'][pad] = 0
    erase_inplace(batch['frames'], batch['erase'])
    return {k: batch[k] for k in self._out_keys}

  def _reload_clip(self, batch: dict, j: int, full: bool):
    """Reloads clip j of `batch` eagerly, resolving its bad frames (all of its frames are
    checked when `full`, else those the graph flagged), and re-applies flip and crop."""
    row = int(batch['tracklet'][j])
    if row < 0:  # padding row: zeroed in _finish
      batch['ok'][j] = True
      return
    imgs, replaced = [], []
    for t, i in enumerate(batch['idx0'][j]):
      img = None
      if not full:
        path = batch['paths'][j, t]
        path = path.decode() if isinstance(path, bytes) else str(path)
        if batch['ok'][j, t]:
          img, reason = _load_frame_eager(path, self._opts.height, self._opts.width)
        else:
          reason = 'failed the JPEG/PNG completeness check'
        if img is None:
          self._resolver.mark_bad(path, reason)
        else:
          replaced.append(bool(batch['replaced'][j, t]))
      if img is None:
        rep, img = self._resolver.full_resolve(row, int(i))
        replaced.append(rep)
      imgs.append(img)
    frames = _flip_crop(tf.constant(np.stack(imgs)), tf.constant(batch['flip'][j]),
                        tf.constant(batch['crop'][j]), self._opts.pad_crop)
    batch['frames'][j] = frames.numpy()
    batch['replaced'][j] = np.array(replaced, np.int32)
    batch['ok'][j] = True

  def _repair(self, batch: dict):
    if batch['ok'].all():
      return
    for j in np.flatnonzero(~batch['ok'].all(axis=1)):
      self._reload_clip(batch, int(j), full=False)

  def _eager_step(self, step: int) -> dict:
    plan = self._plan_step(step)  # raises directly (e.g. BadFrameError) if the plan did
    b, t = self._b, self._opts.seq_len
    batch = {k: np.array(v) for k, v in plan.items()}
    batch['frames'] = np.zeros((b, t, self._opts.height, self._opts.width, 3), np.uint8)
    batch['ok'] = np.ones((b, t), bool)
    for j in range(b):
      self._reload_clip(batch, j, full=True)
    return batch


# ------------------------------------------------------------------------------------------
# Public API.


def train_iterator(index: TrackletIndex, data_cfg: Any, *, global_batch_size: int, seed: int,
                   start_step: int = 0, process_index: int = 0, process_count: int = 1,
                   num_steps: Optional[int] = None) -> BatchIterator:
  """Training batches of this process for steps start_step, start_step + 1, ...

  Args:
    index: the training split (pids relabelled 0..num_ids-1).
    data_cfg: `config.data` (see `DataOptions`).
    global_batch_size: B over all processes; this process yields b = B / process_count rows,
      a contiguous slice of whole pairs (`pair`) or identities (`pk`).
    seed: run seed; batches, frames and augmentation are pure functions of (seed, step, row).
    start_step: first step (resume).
    process_index, process_count: this process and the number of processes.
    num_steps: stop after this many batches (None: endless).

  Returns:
    An iterator of dicts {frames: uint8[b, T, H, W, 3], pid: int32[b], camid: int32[b],
    tracklet: int32[b]}, with attributes `sampler`, `steps_per_epoch`, `step` (next step),
    `bad_frames` (replaced frames delivered) and `stats` (a BadFrameStats).
  """
  opts = data_options(data_cfg)
  sampler = samplers.make_batch_sampler(
      opts.batch_sampler, index, global_batch_size=global_batch_size, seed=seed, p=opts.p,
      k=opts.k, pk_mode=opts.pk_mode)
  b = sampler.check_processes(process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index}: expected 0 <= it < {process_count}')
  resolver = _Resolver(index, opts, BadFrameStats())
  t = opts.seq_len

  def plan_step(step: int) -> dict:
    rows = sampler.local_batch(step, process_index, process_count)
    out = {k: [] for k in _PLAN_KEYS}
    for j, row in enumerate(rows):
      pos = process_index * b + j
      n = int(index.lengths[row])
      idx = sampling.train_indices(opts.train_sampling, n, t,
                                   sampling.sample_rng(seed, step, pos, 1), opts.sample_stride)
      resolved = [resolver.host_resolve(int(row), int(i)) for i in idx]
      aug = sample_augmentation(sampling.sample_rng(seed, step, pos, 2), opts)
      out['paths'].append([p.encode() for p, _ in resolved])
      out['replaced'].append([r for _, r in resolved])
      out['idx0'].append(idx)
      for k in ('flip', 'crop', 'erase'):
        out[k].append(aug[k])
    out['tracklet'] = rows
    out['pid'] = index.pids[rows]
    out['camid'] = index.camids[rows]
    res = {k: np.asarray(v, np.int32) for k, v in out.items() if k != 'paths'}
    res['paths'] = np.array(out['paths'], dtype=object).reshape(b, t)
    return res

  stream = BatchIterator(
      plan_step, index=index, opts=opts, local_batch=b, start_step=start_step,
      stop_step=None if num_steps is None else start_step + num_steps, resolver=resolver,
      out_keys=('frames', 'pid', 'camid', 'tracklet'))
  stream.sampler = sampler
  stream.steps_per_epoch = sampler.steps_per_epoch
  return stream


def eval_clips(index: TrackletIndex, data_cfg: Any) -> tuple[np.ndarray, np.ndarray]:
  """Every test clip of the split: (tracklet int32[C], frame indices int32[C, T]), tracklet
  after tracklet, clips in temporal order, from `test_clips(data.test_sampling, ...)`."""
  opts = data_options(data_cfg)
  clips = [sampling.test_clips(opts.test_sampling, int(n), opts.seq_len) for n in index.lengths]
  owner = np.repeat(np.arange(len(clips), dtype=np.int32), [len(c) for c in clips])
  frames = (np.concatenate(clips).astype(np.int32) if clips
            else np.zeros((0, opts.seq_len), np.int32))
  return owner, frames


def num_eval_clips(index: TrackletIndex, data_cfg: Any) -> int:
  """Number of (unpadded) test clips of the split under `data.test_sampling`."""
  opts = data_options(data_cfg)
  return int(sum(sampling.num_test_clips(opts.test_sampling, int(n), opts.seq_len)
                 for n in index.lengths))


def num_eval_batches(index: TrackletIndex, data_cfg: Any, batch_size: int) -> int:
  """Batches every process yields in `eval_iterator` (the same on all processes)."""
  return math.ceil(num_eval_clips(index, data_cfg) / batch_size)


def eval_iterator(index: TrackletIndex, data_cfg: Any, *, batch_size: int,
                  process_index: int = 0, process_count: int = 1) -> BatchIterator:
  """Every test clip of the split, without augmentation.

  The clips of `eval_clips` are cut into global batches of `batch_size` (the last one padded);
  process p yields rows [p*b, (p+1)*b) of each, b = batch_size / process_count, so every
  process yields `num_eval_batches` batches and concatenating the processes' batches in
  process order gives the global clip order.

  Returns:
    An iterator of dicts {frames: uint8[b, T, H, W, 3], tracklet: int32[b]}; padding rows have
    tracklet = -1 and black frames.
  """
  opts = data_options(data_cfg)
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(f'eval batch_size={batch_size} must be a positive multiple of '
                     f'process_count={process_count}')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index}: expected 0 <= it < {process_count}')
  owner, clip_frames = eval_clips(index, opts)
  total = len(owner)
  b, t = batch_size // process_count, opts.seq_len
  opts = dataclasses.replace(opts, pad_crop=0)  # no augmentation at test time
  resolver = _Resolver(index, opts, BadFrameStats())
  none = _no_augmentation(opts)

  def plan_step(step: int) -> dict:
    first = step * batch_size + process_index * b
    out = {k: [] for k in _PLAN_KEYS}
    for c in range(first, first + b):
      # A padding row loads the last real clip again (the graph has no branch for "no
      # file"); it is marked tracklet = -1 and zeroed before delivery.
      row = int(owner[min(c, total - 1)])
      idx = clip_frames[min(c, total - 1)]
      resolved = [resolver.host_resolve(row, int(i)) for i in idx]
      if c >= total:
        row = -1
      out['paths'].append([p.encode() for p, _ in resolved])
      out['replaced'].append([r for _, r in resolved])
      out['idx0'].append(idx)
      out['tracklet'].append(row)
      out['pid'].append(index.pids[row] if row >= 0 else -1)
      out['camid'].append(index.camids[row] if row >= 0 else -1)
      for k in ('flip', 'crop', 'erase'):
        out[k].append(none[k])
    res = {k: np.asarray(v, np.int32) for k, v in out.items() if k != 'paths'}
    res['paths'] = np.array(out['paths'], dtype=object).reshape(b, t)
    return res

  return BatchIterator(plan_step, index=index, opts=opts, local_batch=b, start_step=0,
                       stop_step=math.ceil(total / batch_size), resolver=resolver,
                       out_keys=('frames', 'tracklet'))
