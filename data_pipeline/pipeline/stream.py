"""The stream: host plans -> tf.data -> numpy batches, with bad-frame recovery.

`tf.data.Dataset.range(steps)` -> host plan of one step (numpy_function over `batch_plan`:
frame paths and augmentation parameters of this process's rows) -> unbatch into clips ->
parallel map (read, check, decode, resize if needed, flip, pad + crop) -> batch -> prefetch ->
numpy, then random erasing on the host. A step that makes TF raise is redone eagerly and the
tf.data stream restarted after it. With `frames=` (a pack's PackedFrames,
data_pipeline/pack/reader.py) the host plan reads each frame's bytes by record and the graph
decodes them instead of reading files; everything else, randomness included, is the same.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional

from absl import logging
import numpy as np
import tensorflow as tf

from data_pipeline import sampling
from data_pipeline import samplers
from data_pipeline.index import TrackletIndex
from data_pipeline.pipeline.augment import (erase_inplace, flip_crop, no_augmentation,
                                            sample_augmentation)
from data_pipeline.pipeline.decode import load_frame_eager, make_clip_fn
from data_pipeline.pipeline.options import DataOptions, data_options
from data_pipeline.pipeline.plan import DATA_KEY, GRAPH_KEYS, batch_plan
from data_pipeline.pipeline.recovery import STATS, BadFrameStats, Resolver
from data_pipeline.pipeline.tf_device import hide_accelerators_from_tf
from grl_jax.errors import ConfigError

_PLAN_DTYPES = (tf.string, tf.int32, tf.int32, tf.int32, tf.int32, tf.int32, tf.int32,
                tf.int32, tf.int32, tf.string)  # GRAPH_KEYS


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
               resolver: Resolver, out_keys: tuple[str, ...]):
    hide_accelerators_from_tf()  # before this iterator's first TF op
    self._plan_step = plan_step
    self._index = index
    self._opts = opts
    self._b = local_batch
    self._step = int(start_step)
    self._stop = stop_step
    self._resolver = resolver
    self._out_keys = out_keys
    self._clip_fn = make_clip_fn(opts, packed=resolver.read is not None)
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
    if DATA_KEY not in plan:  # loose files: the graph reads `paths`
      plan[DATA_KEY] = np.full(plan['paths'].shape, b'', object)
    return [plan[k] for k in GRAPH_KEYS]

  def _build(self, start: int):
    stop = self._stop if self._stop is not None else np.iinfo(np.int64).max
    if start >= stop:
      return iter(())
    t, b = self._opts.seq_len, self._b
    shapes = {'paths': [b, t], 'idx0': [b, t], 'replaced': [b, t], 'tracklet': [b], 'pid': [b],
              'camid': [b], 'flip': [b], 'crop': [b, 2], 'erase': [b, t, 8], DATA_KEY: [b, t]}

    def plan(step):
      values = tf.numpy_function(self._numpy_plan, [step], _PLAN_DTYPES, stateful=True)
      return {k: tf.ensure_shape(v, shapes[k]) for k, v in zip(GRAPH_KEYS, values)}

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
          img, reason = load_frame_eager(path, self._opts.height, self._opts.width,
                                         self._resolver.read)
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
    frames = flip_crop(tf.constant(np.stack(imgs)), tf.constant(batch['flip'][j]),
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
# Public API: the training and evaluation streams.


def _check_process(process_index: int, process_count: int) -> None:
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index}: expected 0 <= it < {process_count}')


def train_iterator(index: TrackletIndex, data_cfg: Any, *, global_batch_size: int, seed: int,
                   start_step: int = 0, process_index: int = 0, process_count: int = 1,
                   num_steps: Optional[int] = None, frames: Any = None) -> BatchIterator:
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
    frames: the pack holding the index's frames (data_pipeline/pack/reader.py PackedFrames,
      for an index from its `load_dataset`); None: the frame paths are files.

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
  _check_process(process_index, process_count)
  resolver = Resolver(index, opts, BadFrameStats(), frames)
  t = opts.seq_len

  def plan_step(step: int) -> dict:
    rows = sampler.local_batch(step, process_index, process_count)
    # Keyed by the position in the global batch, so a clip is the same on any process.
    positions = range(process_index * b, process_index * b + len(rows))
    frames = [sampling.train_indices(opts.train_sampling, int(index.lengths[row]), t,
                                     sampling.sample_rng(seed, step, pos, 1), opts.sample_stride)
              for row, pos in zip(rows, positions)]
    augs = [sample_augmentation(sampling.sample_rng(seed, step, pos, 2), opts)
            for pos in positions]
    return batch_plan(index, resolver, tracklets=rows, load_rows=rows, frames=np.stack(frames),
                      augs=augs)

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
                  process_index: int = 0, process_count: int = 1,
                  frames: Any = None) -> BatchIterator:
  """Every test clip of the split, without augmentation.

  The clips of `eval_clips` are cut into global batches of `batch_size` (the last one padded);
  process p yields rows [p*b, (p+1)*b) of each, b = batch_size / process_count, so every
  process yields `num_eval_batches` batches and concatenating the processes' batches in
  process order gives the global clip order. `frames`: as in `train_iterator`.

  Returns:
    An iterator of dicts {frames: uint8[b, T, H, W, 3], tracklet: int32[b]}; padding rows have
    tracklet = -1 and black frames.
  """
  opts = data_options(data_cfg)
  if batch_size < 1 or batch_size % process_count:
    raise ConfigError(f'config.eval.batch_size={batch_size}: expected a positive multiple of '
                      f'the process count ({process_count})')
  _check_process(process_index, process_count)
  owner, clip_frames = eval_clips(index, opts)
  total = len(owner)
  b = batch_size // process_count
  opts = dataclasses.replace(opts, pad_crop=0)  # no augmentation at test time
  resolver = Resolver(index, opts, BadFrameStats(), frames)
  none = no_augmentation(opts)

  def plan_step(step: int) -> dict:
    clips = np.arange(b) + step * batch_size + process_index * b
    # A padding clip (past the last one) loads the last real clip again and is delivered as
    # tracklet = -1 with black frames.
    last = np.minimum(clips, total - 1)
    return batch_plan(index, resolver, tracklets=np.where(clips < total, owner[last], -1),
                      load_rows=owner[last], frames=clip_frames[last], augs=[none] * b)

  return BatchIterator(plan_step, index=index, opts=opts, local_batch=b, start_step=0,
                       stop_step=math.ceil(total / batch_size), resolver=resolver,
                       out_keys=('frames', 'tracklet'))
