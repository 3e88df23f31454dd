"""Evaluation and feature extraction of a saved checkpoint (`--mode=eval|extract`).

Only the variables are restored (no optimiser); the model is rebuilt from the config and the
identity count stored in the checkpoint's meta, so evaluation needs no training tracklets.
"""
from __future__ import annotations

import time
from typing import Optional

import jax
import numpy as np

from grl_jax import checkpoint as ckpt_lib
from grl_jax import evaluators
from grl_jax import io
from grl_jax import reporting
from grl_jax import schema
from grl_jax import sharding
from grl_jax import validation
from grl_jax.errors import DatasetError
from grl_jax.evaluators import features
from grl_jax.trainer import data as data_lib
from grl_jax.trainer import setup as setup_lib
from grl_jax.trainer.loop import say


def _restore(config, workdir: str, step: Optional[int], data):
  variables, meta = ckpt_lib.restore_variables(workdir, step)
  num_classes = int(meta.get('num_classes', data.dataset.num_train_ids))
  setup = setup_lib.build(config, num_classes=num_classes,
                          steps_per_epoch=max(data.steps_per_epoch, 1), train=False)
  rep = sharding.replicated(setup.mesh)
  variables = jax.tree.map(lambda x: jax.device_put(x, rep), variables)
  if not variables.get('batch_stats'):
    variables.pop('batch_stats', None)
  return setup, variables, meta


def _start(config, workdir: str, mode: str, data):
  validation.validate(config, device_count=jax.device_count(),
                      process_count=jax.process_count(), mode=mode)
  return data or data_lib.make_data(config, workdir, mode)


def evaluate(config, workdir: str, *, step: Optional[int] = None, data=None) -> dict:
  """Evaluates the latest (or `step`) checkpoint of `workdir` with every evaluator of
  `config.evals`; prints the tables, writes `<workdir>/eval_step<N>.json` (evaluator name ->
  its scalars, CMC, protocol, ...) and the pictures, and returns the metrics
  ('<evaluator>/<metric>' -> float)."""
  data = _start(config, workdir, 'eval', data)
  setup, variables, meta = _restore(config, workdir, step, data)
  t = time.time()
  s = int(meta.get('step', -1))
  outcome = evaluators.build(config, setup, data, workdir).run(
      variables, s, final=True, title=f'{config.model.name} on {config.data.dataset}, '
      f'checkpoint step {s}')
  reporter = reporting.Reporter(workdir, total_steps=s, is_main=jax.process_index() == 0,
                                tensorboard=False)
  reporter.eval_results(s, outcome.metrics, '\n'.join(outcome.tables))
  reporter.close()
  for name, path in outcome.artifacts.items():
    say(f'[eval] {name} written to {path}')
  say(f'[eval] {time.time() - t:.1f}s')
  if jax.process_index() == 0:
    ckpt_lib.dump_json(io.join(workdir, f'eval_step{s}.json'), outcome.details)
  return outcome.metrics


def extract(config, workdir: str, *, split: str = 'query', step: Optional[int] = None,
            output: Optional[str] = None, data=None) -> str:
  """Writes per-tracklet descriptors of `split` to an .npz; returns its path.

  The file holds features float32[N, D], pids, camids, tracklet (row in the split's
  TrackletIndex), first_frame (path of each tracklet's first frame), step, split.
  """
  schema.check_choice(split, schema.SPLITS, '--split')
  data = _start(config, workdir, 'extract', data)
  setup, variables, meta = _restore(config, workdir, step, data)
  index = getattr(data.dataset, split)
  if len(index) == 0:
    raise DatasetError(f'--split={split}: dataset {config.data.dataset!r} at '
                       f'{config.data.root!r} has no {split} tracklets')
  t = time.time()
  feats = features.tracklet_features(setup, variables, index, data.eval_batches(index))
  s = int(meta.get('step', -1))
  output = output or io.join(workdir, f'features_{split}_step{s}.npz')
  if jax.process_index() == 0:
    io.save_npz(output, features=feats, pids=index.pids, camids=index.camids,
                tracklet=np.arange(len(index), dtype=np.int32),
                first_frame=np.asarray([str(index.frame_paths[i]) for i in index.starts]),
                step=np.int64(s), split=split)
  say(f'[extract] {len(index)} {split} tracklets x {feats.shape[1]} dims in '
      f'{time.time() - t:.1f}s -> {output}')
  return output


# ------------------------------------------------------------------------------------------
# Extraction from folders of images or a custom CSV (`--mode=extract --input=...`); no dataset.


def restore_for_inference(config, workdir: str, step: Optional[int] = None):
  """(setup, variables, meta) of a checkpoint for evaluation-mode forward passes only: no
  dataset is read (the classifier is sized from the meta's identity count)."""
  meta = ckpt_lib.read_meta(workdir, step)
  setup = setup_lib.build(config, num_classes=max(int(meta.get('num_classes') or 1), 1),
                          steps_per_epoch=1, train=False)
  variables, meta = ckpt_lib.restore_variables(workdir, step,
                                               sharding=sharding.replicated(setup.mesh))
  if not variables.get('batch_stats'):
    variables.pop('batch_stats', None)
  return setup, variables, meta


def check_writable(output: str, flag: str = '--output') -> str:
  """Creates the parent folder of `output` and probes it, before any compute."""
  import os  # pylint: disable=g-import-not-at-top
  from grl_jax.errors import WorkdirError  # pylint: disable=g-import-not-at-top
  output = io.normalize(output)
  if io.isdir(output):
    raise WorkdirError(f'{flag}={output!r} is a folder; expected a file path')
  probe = f'{output}.write_test.{os.getpid()}'
  try:
    io.write_bytes(probe, b'')
    io.remove(probe)
  except OSError as e:
    reason = e.strerror or str(e)
    parent = os.path.dirname(output)
    while parent and not io.exists(parent) and parent != os.path.dirname(parent):
      parent = os.path.dirname(parent)
    if parent and io.exists(parent) and not io.isdir(parent):
      reason = f'{parent!r} is a file, not a folder'
    raise WorkdirError(f'{flag}={output!r} is not writable ({reason}); choose another '
                       'path') from e
  return output


def folder_features(config, setup, variables, tracklets) -> np.ndarray:
  """float32[N, D] descriptors of `tracklets` ([(name, frame paths)], grl_jax/folders.py)
  through the evaluation pipeline and step: the test sampling, resize and averaging of
  `--mode=eval`, so a tracklet gets the feature `extract` gives it inside a dataset. A frame
  that is not a complete image is an error naming the file (strict loading)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from data_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  from data_pipeline.index import TrackletIndex  # pylint: disable=g-import-not-at-top
  from grl_jax.errors import BadFrameError  # pylint: disable=g-import-not-at-top
  n = len(tracklets)
  index = TrackletIndex.from_lists([list(p) for _, p in tracklets], np.full(n, -1),
                                   np.zeros(n))
  opts = dataclasses.replace(pipeline.data_options(config.data), strict=True)
  batches = pipeline.eval_iterator(index, opts, batch_size=int(config.eval.batch_size),
                                   process_index=jax.process_index(),
                                   process_count=jax.process_count())
  try:
    return features.tracklet_features(setup, variables, index, batches)
  except BadFrameError as e:
    message = str(e).replace(' (config.data.strict=True)', '')
    raise BadFrameError(f'{message}; expected a complete JPEG/PNG/BMP image') from e
  finally:
    batches.close()


def extract_folders(config, workdir: str, *, input: str,  # pylint: disable=redefined-builtin
                    step: Optional[int] = None, output: Optional[str] = None) -> str:
  """Writes descriptors of every tracklet of `input` (a folder of tracklet folders, or a
  custom-format CSV: grl_jax/folders.py) to an .npz; returns its path.

  The file holds features float32[N, D], names str[N] (tracklet folder relative to `input`,
  or the CSV's tracklet names), num_frames int32[N], root (the input, normalised), step,
  descriptor_distance ('euclidean' | 'cosine' | 'dot'); for a CSV also pids, camids int32[N]
  and splits str[N].
  """
  from grl_jax import folders  # pylint: disable=g-import-not-at-top
  validation.validate(config, device_count=jax.device_count(),
                      process_count=jax.process_count(), mode='extract', check_data=False)
  tracklets, labels = folders.list_tracklets_with_labels(input)
  meta = ckpt_lib.read_meta(workdir, step)
  s = int(meta.get('step', -1))
  output = check_writable(output or io.join(workdir, f'features_folders_step{s}.npz'))
  setup, variables, _ = restore_for_inference(config, workdir, step)
  t = time.time()
  feats = folder_features(config, setup, variables, tracklets)
  if jax.process_index() == 0:
    io.save_npz(output, features=feats, names=np.asarray([n for n, _ in tracklets]),
                num_frames=np.asarray([len(p) for _, p in tracklets], np.int32),
                root=io.normalize(str(input)), step=np.int64(s),
                descriptor_distance=setup.spec.descriptor_distance, **labels)
  say(f'[extract] {len(tracklets)} tracklets ({sum(len(p) for _, p in tracklets)} frames) x '
      f'{feats.shape[1]} dims in {time.time() - t:.1f}s -> {output}')
  return output
