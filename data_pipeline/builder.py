"""What the trainer and the evaluators get from the data side: the splits, the epoch length
and the batch iterators of this process, assembled from `config.data` in one place.

    dataset reader (+ synthetic generation when config.data.synthetic.enabled)
      -> Dataset(train, query, gallery)                 data_pipeline/datasets/
      -> optional subset of the query identities        config.eval.subset_ids
      -> train / eval iterators (tf.data, host-local)   data_pipeline/pipeline/

With `config.data.packed` (a directory written by `python -m data_pipeline.pack`, local or
gs://) the splits come from the pack's metadata and the iterators read its records
(data_pipeline/pack/); root and synthetic generation are not used. The samplers see the same
index, so the batches are the loose run's, byte for byte.

Evaluation and extraction (`mode != 'train'`) never touch the training split beyond reading
the index: no batch sampler is built, so a dataset without training tracklets evaluates.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from typing import Callable, Iterator, Optional

from absl import logging
import numpy as np

from data_pipeline.index import Dataset, TrackletIndex
from grl_jax import io


@dataclasses.dataclass
class Data:
  """What the trainer needs from the input side (tests substitute in-memory versions).

  Attributes:
    dataset: the splits (TrackletIndex each).
    steps_per_epoch: optimiser steps per training epoch (0 when built for evaluation only).
    train_batches: start_step -> iterator of this process's batches {frames uint8[b,T,H,W,3],
      pid, camid, tracklet int32[b]} for steps start_step, start_step + 1, ...
    eval_batches: (index, test_sampling=None) -> iterator of this process's eval batches
      {frames, tracklet} (tracklet -1 = padding), covering every clip of every tracklet of
      the index under `test_sampling` (default: config.data.test_sampling).
    global_batch_size: clips per training step over all processes (what train_batches
      slices).
  """
  dataset: Dataset
  steps_per_epoch: int
  train_batches: Callable[[int], Iterator[dict]]
  eval_batches: Callable[..., Iterator[dict]]
  global_batch_size: int


def data_root(config, workdir: str) -> str:
  """config.data.root, or <workdir>/data for an unset root with synthetic data."""
  root = str(config.data.root)
  if not root and config.data.synthetic.enabled:
    root = io.join(workdir, 'data')
  return root


def subset_ids(dataset: Dataset, n: int) -> Dataset:
  """Query and galleries restricted to the first `n` query identities (junk and distractor
  tracklets are dropped): a small but valid retrieval problem for quick runs."""
  test, query_rows, galleries = dataset.test_split()
  keep = np.unique(test.pids[query_rows])[:n]
  mine = lambda rows: rows[np.isin(test.pids[rows], keep)]  # noqa: E731
  galleries = {p: mine(rows) for p, rows in galleries.items()}
  query_rows = mine(query_rows)
  return dataclasses.replace(dataset, query=test.subset(query_rows),
                             gallery=test.subset(galleries[dataset.protocol]),
                             meta=dict(dataset.meta, subset_ids=int(n)), test=test,
                             query_rows=query_rows, gallery_rows=galleries)


def load_dataset(config, workdir: str, *, is_main: bool = True,
                 barrier: Optional[Callable[[str], None]] = None) -> Dataset:
  """Reads the splits of `config.data` (generating the synthetic dataset first if asked;
  process 0 writes it, `barrier(name)` makes the others wait for it)."""
  from data_pipeline import datasets  # pylint: disable=g-import-not-at-top
  d = config.data
  if str(d.get('packed', '')):
    from data_pipeline import pack  # pylint: disable=g-import-not-at-top
    dataset = pack.load_dataset(str(d.packed), dataset=d.dataset, split_id=int(d.split_id),
                                protocol=d.protocol)
    if int(config.eval.subset_ids) > 0:
      dataset = subset_ids(dataset, int(config.eval.subset_ids))
    return dataset
  root = data_root(config, workdir)
  if d.synthetic.enabled:
    from data_pipeline import synthetic  # pylint: disable=g-import-not-at-top
    if is_main:
      kwargs = {k: v for k, v in d.synthetic.items() if k != 'enabled'}
      t = time.time()
      summary = synthetic.ensure(root, **kwargs)
      logging.info('synthetic dataset at %s (%.1fs): %s', root, time.time() - t, summary)
    if barrier is not None:
      barrier('synthetic_data')
  dataset = datasets.load(d.dataset, root, protocol=d.protocol, split_id=int(d.split_id))
  if int(config.eval.subset_ids) > 0:
    dataset = subset_ids(dataset, int(config.eval.subset_ids))
  return dataset


def build(config, workdir: str, *, global_batch_size: int, num_steps: Callable[[int], int],
          process_index: int = 0, process_count: int = 1, mode: str = 'train',
          barrier: Optional[Callable[[str], None]] = None) -> Data:
  """The real input side of `config` for this process.

  Args:
    config: the run's config (reads config.data, config.seed, config.train.steps_per_epoch,
      config.eval.batch_size / subset_ids).
    workdir: the run directory (holds the synthetic dataset when config.data.root is '').
    global_batch_size: clips per training step over all processes.
    num_steps: steps_per_epoch -> total training steps (grl_jax/schema.py total_steps).
    process_index, process_count: this process's slice of every global batch.
    mode: 'train' builds the batch sampler (epoch length); other modes only evaluate.
    barrier: multi-process synchronisation after the synthetic dataset is written.
  """
  from data_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  from data_pipeline import samplers  # pylint: disable=g-import-not-at-top
  # Before anything initialises TensorFlow (the TensorBoard writer comes later): the
  # accelerator belongs to JAX.
  pipeline.hide_accelerators_from_tf()
  d = config.data
  dataset = load_dataset(config, workdir, is_main=process_index == 0, barrier=barrier)
  frames = None
  if str(d.get('packed', '')):
    from data_pipeline import pack  # pylint: disable=g-import-not-at-top
    frames = pack.PackedFrames(str(d.packed))  # shards opened when a record is first read
  spe = 0
  if int(config.train.steps_per_epoch) > 0:
    spe = int(config.train.steps_per_epoch)
  elif mode == 'train':
    opts = pipeline.data_options(d)
    spe = samplers.make_batch_sampler(opts.batch_sampler, dataset.train,
                                      global_batch_size=global_batch_size,
                                      seed=int(config.seed), p=opts.p, k=opts.k,
                                      pk_mode=opts.pk_mode).steps_per_epoch
  total = num_steps(spe)

  def train_batches(start_step: int):
    # A finite stream: nothing is prefetched past the last step.
    return pipeline.train_iterator(dataset.train, d, global_batch_size=global_batch_size,
                                   seed=int(config.seed), start_step=start_step,
                                   process_index=process_index, process_count=process_count,
                                   num_steps=max(total - start_step, 0), frames=frames)

  def eval_batches(index: TrackletIndex, test_sampling: Optional[str] = None):
    cfg = d
    if test_sampling and test_sampling != d.test_sampling:
      cfg = copy.deepcopy(d)
      cfg.test_sampling = test_sampling
    return pipeline.eval_iterator(index, cfg, batch_size=int(config.eval.batch_size),
                                  process_index=process_index, process_count=process_count,
                                  frames=frames)

  return Data(dataset, spe, train_batches, eval_batches, global_batch_size)
