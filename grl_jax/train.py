"""Training, evaluation and feature extraction: the loop around one jit-compiled step.

    train_and_evaluate(config, workdir)   train (resuming if the workdir holds a checkpoint),
                                          evaluate every `eval_every_epochs` and at the end
    evaluate(config, workdir, step=None)  restore variables (no optimiser) and print CMC / mAP
    extract(config, workdir, split, ...)  per-tracklet descriptors of a split -> .npz

The trainer knows no model internals: it builds the model and its objective from the registry
(`grl_jax.models.get(config.model.name)`), feeds `frames` normalised on the device, hands the
model outputs to `objective.loss`, and reads `outputs['descriptor']` for evaluation.

One step (`make_train_step`), for a batch sharded over the mesh's 'data' axis:

    x = (frames_uint8 - 255 * mean) / (255 * std)                    ImageNet, RGB
    outputs, batch_stats' = model.apply({params, batch_stats}, x, train=True)
    loss, metrics = objective.loss(outputs, batch, objective_state)
    params' = params + optax update of d loss / d params             (grl_jax.optim)
    objective_state' = objective.update_state(stop_gradient(outputs), batch, objective_state)

It is compiled once with the state replicated and donated; BatchNorm statistics and gradients
are reduced over the whole global batch by XLA (SyncBN).

Faults: a non-finite loss stops the run (`NonFiniteLossError` naming the first bad step) without
saving the bad state, so the last checkpoint on disk stays the last good one; SIGTERM / SIGINT
set a flag that the loop checks after every step: it saves a checkpoint and returns.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import signal
import socket
import threading
import time
from typing import Any, Callable, Iterator, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import base as config_base
from data_pipeline.index import Dataset, TrackletIndex
from grl_jax import checkpoint as ckpt_lib
from grl_jax import models
from grl_jax import optim
from grl_jax import reporting
from grl_jax import sharding
from grl_jax.state import TrainState

PyTree = Any
MEAN_RGB = np.array([0.485, 0.456, 0.406], np.float32) * 255.0
STD_RGB = np.array([0.229, 0.224, 0.225], np.float32) * 255.0
SPLITS = ('query', 'gallery', 'train')


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


class WorkdirError(OSError):
  """The workdir cannot be created or written."""


# ------------------------------------------------------------------------------------------------
# Workdir and data


def prepare_workdir(workdir: str) -> str:
  """Creates `workdir` and checks it is writable (before anything expensive happens)."""
  if not workdir:
    raise WorkdirError('--workdir is empty; give a directory for checkpoints and logs')
  if '://' in workdir:
    return workdir
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_test.{socket.gethostname()}.{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(f'workdir {workdir!r} is not writable ({e.strerror or e}); choose '
                       'another --workdir') from e
  return workdir


def data_root(config, workdir: str) -> str:
  """config.data.root, or <workdir>/data for an unset root with synthetic data."""
  root = str(config.data.root)
  if not root and config.data.synthetic.enabled:
    root = os.path.join(workdir, 'data')
  return root


@dataclasses.dataclass
class Data:
  """What the trainer needs from the input side (tests substitute in-memory versions).

  Attributes:
    dataset: the splits (TrackletIndex each).
    steps_per_epoch: optimiser steps per training epoch.
    train_batches: start_step -> iterator of this process's batches {frames uint8[b,T,H,W,3],
      pid, camid, tracklet int32[b]} for steps start_step, start_step + 1, ...
    eval_batches: split index -> iterator of this process's eval batches {frames, tracklet}
      (tracklet -1 = padding), covering every clip of every tracklet.
  """
  dataset: Dataset
  steps_per_epoch: int
  train_batches: Callable[[int], Iterator[dict]]
  eval_batches: Callable[[TrackletIndex], Iterator[dict]]


def subset_ids(dataset: Dataset, n: int) -> Dataset:
  """Query and gallery restricted to the first `n` query identities (junk and distractor
  tracklets are dropped): a small but valid retrieval problem for quick runs."""
  keep = np.unique(dataset.query.pids)[:n]
  q = np.flatnonzero(np.isin(dataset.query.pids, keep))
  g = np.flatnonzero(np.isin(dataset.gallery.pids, keep))
  return dataclasses.replace(dataset, query=dataset.query.subset(q),
                             gallery=dataset.gallery.subset(g),
                             meta=dict(dataset.meta, subset_ids=int(n)))


def make_data(config, workdir: str) -> Data:
  """The real input side: dataset reader (+ synthetic generation) and the tf.data pipelines."""
  from data_pipeline import datasets  # pylint: disable=g-import-not-at-top
  from data_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  from data_pipeline import samplers  # pylint: disable=g-import-not-at-top
  d = config.data
  root = data_root(config, workdir)
  if d.synthetic.enabled:
    from data_pipeline import synthetic  # pylint: disable=g-import-not-at-top
    if jax.process_index() == 0:
      kwargs = {k: v for k, v in d.synthetic.items() if k != 'enabled'}
      t = time.time()
      summary = synthetic.ensure(root, **kwargs)
      logging.info('synthetic dataset at %s (%.1fs): %s', root, time.time() - t, summary)
    _sync('synthetic_data')
  dataset = datasets.load(d.dataset, root, protocol=d.protocol, split_id=int(d.split_id))
  if int(config.eval.subset_ids) > 0:
    dataset = subset_ids(dataset, int(config.eval.subset_ids))
  n_dev = config_base.mesh_devices(config, jax.device_count())
  batch = config_base.global_batch_size(config, n_dev)
  if int(config.train.steps_per_epoch) > 0:
    spe = int(config.train.steps_per_epoch)
  else:
    opts = pipeline.data_options(d)
    spe = samplers.make_batch_sampler(opts.batch_sampler, dataset.train,
                                      global_batch_size=batch, seed=int(config.seed),
                                      p=opts.p, k=opts.k, pk_mode=opts.pk_mode).steps_per_epoch
  pi, pc = jax.process_index(), jax.process_count()

  num_steps = total_steps(config, spe)

  def train_batches(start_step: int):
    # A finite stream: nothing is prefetched past the last step.
    return pipeline.train_iterator(dataset.train, d, global_batch_size=batch,
                                   seed=int(config.seed), start_step=start_step,
                                   process_index=pi, process_count=pc,
                                   num_steps=max(num_steps - start_step, 0))

  def eval_batches(index: TrackletIndex):
    return pipeline.eval_iterator(index, d, batch_size=int(config.eval.batch_size),
                                  process_index=pi, process_count=pc)

  return Data(dataset, spe, train_batches, eval_batches)


def total_steps(config, steps_per_epoch: int) -> int:
  """config.train.num_steps, or optim.epochs x steps_per_epoch when it is -1."""
  if int(config.train.num_steps) > 0:
    return int(config.train.num_steps)
  return int(config.optim.epochs) * steps_per_epoch


def _sync(name: str):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


# ------------------------------------------------------------------------------------------------
# Step functions


def normalize_frames(frames: jax.Array) -> jax.Array:
  """uint8[B, T, H, W, 3] RGB -> float32, ImageNet mean/std normalised (on the device)."""
  x = frames.astype(jnp.float32)
  return (x - jnp.asarray(MEAN_RGB)) / jnp.asarray(STD_RGB)


def make_train_step(model, objective, tx) -> Callable[[TrainState, dict], tuple]:
  """The pure (unjitted) step: (state, global batch) -> (state', metrics of scalars)."""

  def step_fn(state: TrainState, batch: dict):
    rng = jax.random.fold_in(state.rng, state.step)
    frames = normalize_frames(batch['frames'])

    def loss_fn(params):
      variables = {'params': params}
      if state.batch_stats:
        variables['batch_stats'] = state.batch_stats
      outputs, updates = model.apply(variables, frames, train=True, mutable=['batch_stats'],
                                     rngs={'dropout': rng})
      loss, metrics = objective.loss(outputs, batch, state.objective_state)
      return loss, (outputs, updates, metrics)

    (loss, (outputs, updates, metrics)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = jax.tree.map(lambda p, u: (p + u).astype(p.dtype), state.params, param_updates)
    objective_state = objective.update_state(jax.lax.stop_gradient(outputs), batch,
                                             state.objective_state)
    metrics = dict(metrics)
    metrics['loss'] = loss
    metrics['grad_norm'] = optim_global_norm(grads)
    new_state = state.replace(step=state.step + 1, params=params,
                              batch_stats=updates.get('batch_stats', state.batch_stats),
                              opt_state=opt_state, objective_state=objective_state)
    return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

  return step_fn


def optim_global_norm(tree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def make_eval_step(model) -> Callable:
  """(variables, frames uint8, tracklet) -> (descriptor float32[B, D], tracklet) (eval mode)."""

  def eval_fn(variables, frames, tracklet):
    outputs = model.apply(variables, normalize_frames(frames), train=False)
    if 'descriptor' not in outputs:
      raise KeyError(f'{type(model).__name__} returned no "descriptor" in eval mode '
                     f'(outputs: {sorted(outputs)}); see grl_jax/models/__init__.py')
    return outputs['descriptor'].astype(jnp.float32), tracklet

  return eval_fn


# ------------------------------------------------------------------------------------------------
# Setup: model, objective, optimiser, mesh, sharded state


@dataclasses.dataclass
class Setup:
  config: ml_collections.ConfigDict
  mesh: Any
  spec: models.ModelSpec
  model: Any
  objective: Any
  tx: Any
  lr_schedule: Callable
  num_classes: int
  steps_per_epoch: int
  num_steps: int
  global_batch_size: int
  state_sharding: Any
  abstract_state: Any
  train_step: Any   # jitted
  eval_step: Any    # jitted

  def init_state(self, seed: int) -> TrainState:
    return _jit_init(self)(root_key(self.config, seed))


def root_key(config, seed: int) -> jax.Array:
  """The run's typed PRNG key; `config.rng_impl` picks the generator (see configs/base.py)."""
  return jax.random.key(int(seed), impl=str(config.get('rng_impl', 'threefry2x32')))


def _init_fn(model, objective, tx, config):
  d = config.data

  def init(rng):
    k_params, k_dropout, k_state = jax.random.split(rng, 3)
    # A pair of clips: the smallest batch a pair-structured model (GRL) accepts in train mode,
    # which creates every parameter (verifier included).
    dummy = jnp.zeros((2, int(d.seq_len), int(d.height), int(d.width), 3), jnp.float32)
    variables = model.init({'params': k_params, 'dropout': k_dropout}, dummy, train=True)
    params = variables['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get('batch_stats', {}),
                      opt_state=tx.init(params) if tx is not None else {},
                      objective_state=objective.init_state() if objective is not None else {},
                      rng=k_state)
  return init


def _jit_init(s: Setup):
  return jax.jit(_init_fn(s.model, s.objective, s.tx, s.config), out_shardings=s.state_sharding)


def build(config, *, num_classes: int, steps_per_epoch: int, train: bool = True) -> Setup:
  """Model, objective, optimiser and the jitted step functions over the config's mesh."""
  n_dev = config_base.mesh_devices(config, jax.device_count())
  mesh = sharding.make_mesh(int(config.mesh.data))
  spec = models.get(config.model.name)
  model = spec.build(config.model, num_classes)
  objective = spec.objective(config.loss, num_classes) if train else None
  batch = config_base.global_batch_size(config, n_dev)
  num_steps = total_steps(config, steps_per_epoch)

  # Parameter paths (for the lr groups) from shapes only: no compute.
  key = root_key(config, 0)
  abstract_params = jax.eval_shape(_init_fn(model, None, None, config), key).params
  tx, schedule = (optim.make_optimizer(config.optim, abstract_params, steps_per_epoch)
                  if train else (None, None))
  abstract_state = jax.eval_shape(_init_fn(model, objective, tx, config), key)
  state_sharding = sharding.replicate_tree(abstract_state, mesh)
  data_sh = sharding.data_sharding(mesh)
  rep = sharding.replicated(mesh)
  train_step = None
  if train:
    train_step = jax.jit(make_train_step(model, objective, tx),
                         in_shardings=(state_sharding, data_sh),
                         out_shardings=(state_sharding, rep), donate_argnums=(0,))
  eval_step = jax.jit(make_eval_step(model), in_shardings=(rep, data_sh, data_sh),
                      out_shardings=(rep, rep))
  return Setup(config=config, mesh=mesh, spec=spec, model=model, objective=objective, tx=tx,
               lr_schedule=schedule, num_classes=num_classes, steps_per_epoch=steps_per_epoch,
               num_steps=num_steps, global_batch_size=batch, state_sharding=state_sharding,
               abstract_state=abstract_state, train_step=train_step, eval_step=eval_step)


def warm_start(state: TrainState, config, mesh) -> TrainState:
  """Copies variables of `config.init.checkpoint` (e.g. converted ImageNet ResNet-50 weights)
  into the matching paths of the fresh state (under `config.init.prefix`)."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  step = None if int(config.init.step) < 0 else int(config.init.step)
  loaded, meta = ckpt_lib.restore_variables(config.init.checkpoint, step,
                                            sharding=sharding.replicated(mesh))
  prefix = tuple(p for p in str(config.init.prefix).split('/') if p)
  copied, mismatched = 0, []
  new = {}
  for coll in ('params', 'batch_stats'):
    target = traverse_util.flatten_dict(getattr(state, coll) or {})
    source = traverse_util.flatten_dict(loaded.get(coll) or {})
    for path, value in source.items():
      key = prefix + tuple(path)
      if key not in target:
        continue
      if tuple(target[key].shape) != tuple(value.shape):
        mismatched.append(f'{"/".join(key)} {tuple(value.shape)} vs {tuple(target[key].shape)}')
        continue
      target[key] = value.astype(target[key].dtype)
      copied += 1
    new[coll] = traverse_util.unflatten_dict(target) if target else {}
  if mismatched:
    raise config_base.ConfigError(
        f'config.init.checkpoint={config.init.checkpoint!r}: shapes differ for '
        f'{len(mismatched)} tensors, e.g. {mismatched[:3]}')
  if copied == 0:
    raise config_base.ConfigError(
        f'config.init.checkpoint={config.init.checkpoint!r}: no tensor path matches the model '
        f'(prefix {config.init.prefix!r}); check config.init.prefix')
  total = len(jax.tree.leaves(state.params)) + len(jax.tree.leaves(state.batch_stats))
  logging.info('warm start: %d of %d tensors from %s (source step %s)', copied, total,
               config.init.checkpoint, meta.get('step'))
  print(f'[init] warm start: {copied}/{total} tensors from {config.init.checkpoint}',
        flush=True)
  rep = sharding.replicated(mesh)
  put = lambda t: jax.tree.map(lambda x: jax.device_put(x, rep), t)  # noqa: E731
  return state.replace(params=put(new['params']), batch_stats=put(new['batch_stats']))


# ------------------------------------------------------------------------------------------------
# Evaluation


def tracklet_features(setup: Setup, variables, index: TrackletIndex,
                      batches: Iterator[dict]) -> np.ndarray:
  """float32[N, D]: descriptors of all clips of each tracklet, averaged (official dense
  protocol; a single clip per tracklet with rrs_test)."""
  sums, counts = None, np.zeros(len(index), np.int64)
  for batch in batches:
    g = sharding.to_global({'frames': batch['frames'], 'tracklet': batch['tracklet']},
                           setup.mesh)
    desc, rows = setup.eval_step(variables, g['frames'], g['tracklet'])
    desc, rows = np.asarray(desc), np.asarray(rows)
    if sums is None:
      sums = np.zeros((len(index), desc.shape[1]), np.float64)
    valid = rows >= 0
    np.add.at(sums, rows[valid], desc[valid])
    np.add.at(counts, rows[valid], 1)
  if sums is None or (counts == 0).any():
    missing = int((counts == 0).sum()) if sums is not None else len(index)
    raise RuntimeError(f'evaluation: {missing} of {len(index)} tracklets got no clip')
  return (sums / counts[:, None]).astype(np.float32)


def split_features(setup: Setup, variables, data: Data) -> tuple[np.ndarray, np.ndarray]:
  """(query features, gallery features); gallery tracklets identical to a query tracklet (the
  queries-in-gallery protocols) reuse the query's feature instead of being recomputed."""
  ds = data.dataset
  qf = tracklet_features(setup, variables, ds.query, data.eval_batches(ds.query))
  qkey = {(ds.query.frame_paths[s], int(n)): i
          for i, (s, n) in enumerate(zip(ds.query.starts, ds.query.lengths))}
  same = np.array([qkey.get((ds.gallery.frame_paths[s], int(n)), -1)
                   for s, n in zip(ds.gallery.starts, ds.gallery.lengths)], np.int64)
  rest = np.flatnonzero(same < 0)
  gf = np.zeros((len(ds.gallery), qf.shape[1]), np.float32)
  gf[same >= 0] = qf[same[same >= 0]]
  if len(rest):
    sub = ds.gallery.subset(rest)
    gf[rest] = tracklet_features(setup, variables, sub, data.eval_batches(sub))
  return qf, gf


def run_evaluation(setup: Setup, variables, data: Data) -> tuple[dict, np.ndarray, np.ndarray]:
  """CMC / mAP / mINP of `variables` under config.data.protocol; also returns the features."""
  from grl_jax import evaluation  # pylint: disable=g-import-not-at-top
  ds = data.dataset
  qf, gf = split_features(setup, variables, data)
  results = evaluation.evaluate_features(
      qf, gf, ds.query.pids, ds.gallery.pids, ds.query.camids, ds.gallery.camids,
      metric=setup.spec.descriptor_distance, protocol=setup.config.data.protocol,
      max_rank=int(setup.config.eval.max_rank))
  return results, qf, gf


def format_results(results: dict, title: str) -> str:
  from grl_jax import evaluation  # pylint: disable=g-import-not-at-top
  return evaluation.format_results(results, title=title)


def scalar_results(results: dict) -> dict:
  """The scalar metrics (rank-k as percentages are left to the table)."""
  return {k: float(v) for k, v in results.items()
          if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)}


def write_ranked_list(setup: Setup, data: Data, qf, gf, workdir: str, step: int) -> Optional[str]:
  """The ranked-list PNG (grl_jax.visualize) of a few queries; returns its path."""
  if not setup.config.eval.ranked_list or jax.process_index() != 0:
    return None
  from grl_jax import evaluation  # pylint: disable=g-import-not-at-top
  from grl_jax import visualize  # pylint: disable=g-import-not-at-top
  ds = data.dataset
  n = min(int(setup.config.eval.ranked_list_queries), len(ds.query))
  # Spread the shown queries over the query set (deterministic).
  rows = np.unique(np.linspace(0, len(ds.query) - 1, n).round().astype(np.int64))
  dist = np.asarray(evaluation.pairwise_distance(qf[rows], gf, setup.spec.descriptor_distance))
  path = os.path.join(workdir, f'ranked_list_step{step}.png')
  visualize.ranked_list_picture_from_distances(
      dist, ds.query.subset(rows), ds.gallery, range(len(rows)), path, top_k=10,
      protocol=setup.config.data.protocol)
  return path


# ------------------------------------------------------------------------------------------------
# Preemption


class _StopFlag:
  """SIGTERM / SIGINT -> flag checked by the loop after each step (handlers restored on exit)."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C aborts without waiting for the checkpoint
    self.signum = signum
    print(f'[train] received {signal.Signals(signum).name}: saving a checkpoint after this '
          'step', flush=True)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False

  def is_set(self) -> bool:
    local = self.signum is not None
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return bool(np.any(multihost_utils.process_allgather(np.array(local))))
    return local


# ------------------------------------------------------------------------------------------------
# Training


def _eval_steps(config, steps_per_epoch: int, num_steps: int) -> set[int]:
  every = int(config.train.eval_every_epochs)
  steps = {num_steps}
  if every > 0:
    steps |= set(range(every * steps_per_epoch, num_steps + 1, every * steps_per_epoch))
  return steps


def _meta(config, setup: Setup, step: int, extra: Optional[dict] = None) -> dict:
  return {'config': ckpt_lib.config_to_dict(config), 'step': int(step),
          'epoch': step / setup.steps_per_epoch, 'num_classes': setup.num_classes,
          'model': config.model.name, 'descriptor_distance': setup.spec.descriptor_distance,
          'process_count': jax.process_count(), 'device_count': jax.device_count(),
          **(extra or {})}


def _start_up(config, workdir: str, mode: str):
  workdir = prepare_workdir(workdir)
  config_base.validate(config, device_count=jax.device_count(),
                       process_count=jax.process_count(), mode=mode)
  return workdir


def _print(msg: str):
  if jax.process_index() == 0:
    print(msg, flush=True)


def train_and_evaluate(config, workdir: str, *, data: Optional[Data] = None) -> dict:
  """Trains `config` in `workdir` (resuming from its latest checkpoint), evaluating on schedule.

  Returns:
    {'step': last step, 'final': final eval results (or None if stopped early), 'best_step',
     'initial': step-0 results if eval_at_start, 'stopped': signal name or None}.
  """
  t_wall = time.time()
  workdir = _start_up(config, workdir, 'train')
  data = data or make_data(config, workdir)
  num_classes = data.dataset.num_train_ids
  setup = build(config, num_classes=num_classes, steps_per_epoch=data.steps_per_epoch)
  is_main = jax.process_index() == 0
  if is_main:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      json.dump(ckpt_lib.config_to_dict(config), f, indent=1)

  ckpt = ckpt_lib.Checkpointer(workdir, keep=int(config.train.keep_checkpoints),
                               best_metric=str(config.eval.best_metric),
                               async_save=bool(config.train.async_checkpoints))
  reporter = None
  batches = None
  try:
    start = ckpt.latest_step()
    if start is not None and not ckpt.has_train_state(start):
      raise config_base.ConfigError(
          f'{ckpt.directory}/{start} holds variables only (a converted checkpoint?); training '
          'resumes only from training checkpoints. Use config.init.checkpoint for warm starts.')
    t0 = time.time()
    if start is None:
      state = setup.init_state(int(config.seed))
      if config.init.checkpoint:
        state = warm_start(state, config, setup.mesh)
      start = 0
      _print(f'[init] initialised {config.model.name} in {time.time() - t0:.1f}s')
    else:
      abstract = ckpt_lib.abstract_tree(setup.abstract_state, sharding.replicated(setup.mesh))
      state, _ = ckpt.restore(abstract, start)
      _print(f'[init] resumed from {ckpt.directory}/{start} in {time.time() - t0:.1f}s')
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    _print(f'[init] {config.model.name}: {n_params:,} parameters; {num_classes} training ids; '
           f'{len(data.dataset.query)} queries, {len(data.dataset.gallery)} gallery tracklets; '
           f'mesh {dict(setup.mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} '
           f'device(s), {jax.process_count()} process(es); batch {setup.global_batch_size}; '
           f'{setup.steps_per_epoch} steps/epoch, {setup.num_steps} steps')
    _print(f'[init] lr groups: {optim.describe_groups(state.params, config.optim)}')

    reporter = reporting.Reporter(workdir, total_steps=setup.num_steps, is_main=is_main)
    eval_steps = _eval_steps(config, setup.steps_per_epoch, setup.num_steps)
    out = {'step': start, 'final': None, 'initial': None, 'best_step': None, 'stopped': None}

    def do_eval(st: TrainState, step: int, title: str):
      t = time.time()
      results, qf, gf = run_evaluation(setup, st.variables, data)
      reporter.eval_results(step, scalar_results(results),
                            format_results(results, f'{title} step {step} '
                                           f'(epoch {step / setup.steps_per_epoch:.2f})'))
      _print(f'[eval] {time.time() - t:.1f}s')
      return results, qf, gf

    if bool(config.train.eval_at_start) and start == 0:
      out['initial'] = scalar_results(do_eval(state, 0, 'untrained model,')[0])

    chrono = reporting.Chrono(start, setup.num_steps)
    pending: list[tuple[int, dict]] = []
    last_saved = start if ckpt.latest_step() is not None else None
    log_every = int(config.train.log_every_steps)
    ckpt_every = int(config.train.checkpoint_every_steps)

    def flush_metrics() -> Optional[dict]:
      """Fetches pending step metrics; raises on the first non-finite loss; returns the means."""
      if not pending:
        return None
      host = jax.device_get([m for _, m in pending])
      for (s, _), m in zip(pending, host):
        if not np.isfinite(m['loss']):
          ckpt.wait()
          raise NonFiniteLossError(
              f'loss is {float(m["loss"])} at step {s} (metrics: '
              f'{ {k: float(v) for k, v in m.items()} }); the run stopped without saving this '
              f'state. Last good checkpoint: '
              f'{"none" if last_saved is None else f"{ckpt.directory}/{last_saved}"}. Lower '
              'config.optim.lr, check the data, or set config.optim.grad_clip_norm.')
      means = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
      pending.clear()
      return means

    step = start
    final_qf_gf = None
    with _StopFlag() as stop_flag:
      batches = data.train_batches(start) if start < setup.num_steps else iter(())
      for step in range(start + 1, setup.num_steps + 1):
        batch = next(batches)
        state, metrics = setup.train_step(state, sharding.to_global(batch, setup.mesh))
        pending.append((step, metrics))
        # Multi-process runs agree on stopping through a collective: only at log steps.
        stop = (stop_flag.is_set() if jax.process_count() == 1 or step % log_every == 0
                else False)
        is_eval = step in eval_steps
        is_ckpt = step % ckpt_every == 0 or step == setup.num_steps
        if step % log_every == 0 or is_eval or is_ckpt or stop or step == start + 1:
          means = flush_metrics()
          if means is not None and (step % log_every == 0 or step == setup.num_steps
                                    or step == start + 1):
            reporter.train_progress(step, means, float(setup.lr_schedule(step - 1)),
                                    chrono.tick(step), setup.global_batch_size, chrono.elapsed())
        if is_eval:
          chrono.pause()
          results, qf, gf = do_eval(state, step, 'final' if step == setup.num_steps else 'eval')
          ckpt.save(state, meta=_meta(config, setup, step, {'eval': scalar_results(results)}),
                    metrics=scalar_results(results))
          last_saved = step
          if step == setup.num_steps:
            out['final'] = scalar_results(results)
            final_qf_gf = (qf, gf)
          chrono.resume()
        elif is_ckpt or stop:
          chrono.pause()
          ckpt.save(state, meta=_meta(config, setup, step))
          last_saved = step
          chrono.resume()
        if stop:
          out['stopped'] = signal.Signals(stop_flag.signum).name if stop_flag.signum else 'stop'
          _print(f'[train] stopped by {out["stopped"]} at step {step}; checkpoint saved to '
                 f'{ckpt.directory}/{step}; rerun the same command to resume')
          break
      else:
        step = setup.num_steps
    out['step'] = step
    if start >= setup.num_steps:
      _print(f'[train] {ckpt.directory}/{start} already reached num_steps={setup.num_steps}; '
             'evaluating it')
      results, qf, gf = do_eval(state, start, 'final')
      out['final'] = scalar_results(results)
      final_qf_gf = (qf, gf)
  finally:
    # Release the input stream now: a tf.data iterator still prefetching (a run stopped early)
    # that is only collected at interpreter exit can deadlock the shutdown.
    if batches is not None and hasattr(batches, 'close'):
      batches.close()  # data_pipeline.pipeline.BatchIterator.close
    del batches
    gc.collect()
    ckpt.close()
    if reporter is not None:
      reporter.close()

  out['best_step'] = ckpt.best_step()
  if out['final'] is not None:
    best = out['best_step']
    if best is not None and best != out['step']:
      m = ckpt.metrics(best) or {}
      _print(f'[eval] best checkpoint: step {best} with {config.eval.best_metric} '
             f'{100 * m.get(config.eval.best_metric, float("nan")):.2f}% (selected on the test '
             'set, as the published recipes do: report the final result)')
    if out['initial'] is not None:
      i, f = out['initial'], out['final']
      _print(f'[eval] untrained -> trained: mAP {100 * i["mAP"]:.2f}% -> {100 * f["mAP"]:.2f}%, '
             f'rank-1 {100 * i["rank1"]:.2f}% -> {100 * f["rank1"]:.2f}%')
    if final_qf_gf is not None:
      png = write_ranked_list(setup, data, *final_qf_gf, workdir, out['step'])
      if png:
        _print(f'[eval] ranked list written to {png}')
  _print(f'[train] done in {reporting.fmt_duration(time.time() - t_wall)}; workdir {workdir}')
  return out


# ------------------------------------------------------------------------------------------------
# Evaluation / extraction of a saved model


def _restore_for_inference(config, workdir: str, step: Optional[int], data: Data):
  variables, meta = ckpt_lib.restore_variables(workdir, step)
  num_classes = int(meta.get('num_classes', data.dataset.num_train_ids))
  setup = build(config, num_classes=num_classes, steps_per_epoch=max(data.steps_per_epoch, 1),
                train=False)
  rep = sharding.replicated(setup.mesh)
  variables = jax.tree.map(lambda x: jax.device_put(x, rep), variables)
  if not variables.get('batch_stats'):
    variables.pop('batch_stats', None)
  return setup, variables, meta


def evaluate(config, workdir: str, *, step: Optional[int] = None,
             data: Optional[Data] = None) -> dict:
  """Evaluates the latest (or `step`) checkpoint of `workdir`; prints and returns the results."""
  workdir = _start_up(config, workdir, 'eval')
  data = data or make_data(config, workdir)
  setup, variables, meta = _restore_for_inference(config, workdir, step, data)
  t = time.time()
  results, qf, gf = run_evaluation(setup, variables, data)
  s = int(meta.get('step', -1))
  table = format_results(results, f'{config.model.name} on {config.data.dataset}, checkpoint '
                         f'step {s}, {config.data.test_sampling} clips')
  reporter = reporting.Reporter(workdir, total_steps=s, is_main=jax.process_index() == 0,
                                tensorboard=False)
  reporter.eval_results(s, scalar_results(results), table)
  reporter.close()
  _print(f'[eval] {time.time() - t:.1f}s')
  if jax.process_index() == 0:
    ckpt_lib.dump_json(os.path.join(workdir, f'eval_step{s}.json'),
                       dict(scalar_results(results), cmc=np.asarray(results['cmc']).tolist(),
                            protocol=config.data.protocol,
                            test_sampling=config.data.test_sampling))
    png = write_ranked_list(setup, data, qf, gf, workdir, s)
    if png:
      _print(f'[eval] ranked list written to {png}')
  return scalar_results(results)


def extract(config, workdir: str, *, split: str = 'query', step: Optional[int] = None,
            output: Optional[str] = None, data: Optional[Data] = None) -> str:
  """Writes per-tracklet descriptors of `split` to an .npz; returns its path.

  The file holds features float32[N, D], pids, camids, tracklet (row in the split's
  TrackletIndex), first_frame (path of each tracklet's first frame), step, split.
  """
  if split not in SPLITS:
    raise config_base.ConfigError(f'--split={split!r}: expected one of {SPLITS}')
  workdir = _start_up(config, workdir, 'extract')
  data = data or make_data(config, workdir)
  setup, variables, meta = _restore_for_inference(config, workdir, step, data)
  index = getattr(data.dataset, split)
  t = time.time()
  feats = tracklet_features(setup, variables, index, data.eval_batches(index))
  s = int(meta.get('step', -1))
  output = output or os.path.join(workdir, f'features_{split}_step{s}.npz')
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    np.savez(output, features=feats, pids=index.pids, camids=index.camids,
             tracklet=np.arange(len(index), dtype=np.int32),
             first_frame=np.asarray([str(index.frame_paths[i]) for i in index.starts]),
             step=np.int64(s), split=split)
  _print(f'[extract] {len(index)} {split} tracklets x {feats.shape[1]} dims in '
         f'{time.time() - t:.1f}s -> {output}')
  return output
