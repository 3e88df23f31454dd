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
from grl_jax import io
from grl_jax import reporting
from grl_jax import schema
from grl_jax import sharding
from grl_jax import validation
from grl_jax.errors import DatasetError
from grl_jax.evaluators import features
from grl_jax.evaluators import ranked_list
from grl_jax.evaluators import reid
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
  """Evaluates the latest (or `step`) checkpoint of `workdir`; prints and returns the results
  and writes `<workdir>/eval_step<N>.json` (+ the ranked-list picture)."""
  data = _start(config, workdir, 'eval', data)
  setup, variables, meta = _restore(config, workdir, step, data)
  t = time.time()
  results, qf, gf = reid.run(setup, variables, data)
  s = int(meta.get('step', -1))
  scalars = reid.scalar_results(results)
  table = reid.format_results(results, f'{config.model.name} on {config.data.dataset}, '
                              f'checkpoint step {s}, {config.data.test_sampling} clips')
  reporter = reporting.Reporter(workdir, total_steps=s, is_main=jax.process_index() == 0,
                                tensorboard=False)
  reporter.eval_results(s, scalars, table)
  reporter.close()
  say(f'[eval] {time.time() - t:.1f}s')
  if jax.process_index() == 0:
    ckpt_lib.dump_json(io.join(workdir, f'eval_step{s}.json'),
                       dict(scalars, cmc=np.asarray(results['cmc']).tolist(),
                            protocol=data.dataset.protocol,
                            test_sampling=config.data.test_sampling))
    png = ranked_list.write(setup, data, qf, gf, workdir, s)
    if png:
      say(f'[eval] ranked list written to {png}')
  return scalars


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
