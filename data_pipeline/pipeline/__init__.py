"""tf.data input pipelines: training batches and evaluation clips as host-local numpy dicts.

Design (uint8 output; normalisation happens on the accelerator, inside the jitted step):

* All randomness is drawn on the host in numpy, keyed by (seed, step, position in the global
  batch): the batch sampler picks tracklets (`data_pipeline/samplers.py`),
  `data_pipeline/sampling.py` picks frames and `augment.sample_augmentation` draws flip /
  pad-crop / erasing parameters. The rest only applies them, so a stream is identical on
  resume (`start_step`) and for any process count.
* `plan.batch_plan` turns one step's rows, frames and augmentation into the host plan, for
  training and evaluation alike; `stream.BatchIterator` runs it through tf.data
  (`decode.make_clip_fn`: read, check, decode, resize if needed, flip, pad + crop) and applies
  random erasing on the host (numpy slice assignment: only the erased pixels are touched; the
  same operation in the graph cost a full pass over every frame).
* Bad frames never crash a run (unless `strict`): a missing local file is caught by the host
  plan (os.path.exists); a truncated, empty or non-image file by a cheap in-graph check (JPEG
  SOI/EOI markers, PNG signature/IEND) that swaps in a black JPEG before decoding and flags the
  frame, which the host then reloads; anything that still makes TF raise (a file whose markers
  look right but whose body is broken, a missing gs:// file) by redoing that step eagerly and
  restarting the tf.data stream after it (`recovery.py`). `iterator.bad_frames` counts
  replaced frames, `iterator.stats.files` lists the bad files, `STATS` has process-wide
  totals. With `strict=True` a `BadFrameError` naming the file is raised instead.
* TF is kept off the accelerator (`tf_device.py`) when the first iterator is created, not on
  import.

Modules: options (DataOptions, data_options), augment, decode, recovery, plan, stream
(BatchIterator, train_iterator, eval_iterator, eval_clips, num_eval_clips, num_eval_batches),
tf_device.
"""
from __future__ import annotations

from data_pipeline.pipeline.augment import erase_inplace
from data_pipeline.pipeline.augment import sample_augmentation
from data_pipeline.pipeline.options import DataOptions
from data_pipeline.pipeline.options import data_options
from data_pipeline.pipeline.recovery import STATS
from data_pipeline.pipeline.recovery import BadFrameStats
from data_pipeline.pipeline.stream import BatchIterator
from data_pipeline.pipeline.stream import eval_clips
from data_pipeline.pipeline.stream import eval_iterator
from data_pipeline.pipeline.stream import num_eval_batches
from data_pipeline.pipeline.stream import num_eval_clips
from data_pipeline.pipeline.stream import train_iterator
from data_pipeline.pipeline.tf_device import hide_accelerators_from_tf
from grl_jax.errors import BadFrameError

__all__ = [
    'BadFrameError', 'BadFrameStats', 'BatchIterator', 'DataOptions', 'STATS', 'data_options',
    'erase_inplace', 'eval_clips', 'eval_iterator', 'hide_accelerators_from_tf',
    'num_eval_batches', 'num_eval_clips', 'sample_augmentation', 'train_iterator',
]
