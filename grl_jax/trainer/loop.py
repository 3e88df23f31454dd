"""`train_and_evaluate(config, workdir)`: the training loop.

It resumes from the workdir's latest checkpoint (the sample stream is a pure function of
(seed, step), so a resumed run continues the identical sequence), evaluates every
`config.train.eval_every_epochs` epochs and at the end (optionally also the untrained model),
runs the evaluators of `config.evals` (grl_jax/evaluators/), saves asynchronously every `config.train.checkpoint_every_steps` and at every evaluation, and
fetches step metrics from the device only at log, evaluation and checkpoint steps.

Faults: a non-finite loss stops the run (`NonFiniteLossError` naming the first bad step)
without saving the bad state, so the last checkpoint on disk stays the last good one; SIGTERM /
SIGINT (preemption.py) save a checkpoint after the current step and return.
"""
from __future__ import annotations

import gc
import sys
import time
from typing import Optional

import jax
import numpy as np

from grl_jax import checkpoint as ckpt_lib
from grl_jax import io
from grl_jax import optim
from grl_jax import reporting
from grl_jax import sharding
from grl_jax import validation
from grl_jax import evaluators
from grl_jax.errors import CheckpointError, NonFiniteLossError
from grl_jax.state import TrainState
from grl_jax.trainer import data as data_lib
from grl_jax.trainer import prefetch as prefetch_lib
from grl_jax.trainer import preemption
from grl_jax.trainer import setup as setup_lib


def eval_steps(config, steps_per_epoch: int, num_steps: int) -> set[int]:
  """The steps after which the model is evaluated (always including the last)."""
  every = int(config.train.eval_every_epochs)
  steps = {num_steps}
  if every > 0:
    steps |= set(range(every * steps_per_epoch, num_steps + 1, every * steps_per_epoch))
  return steps


def checkpoint_meta(config, setup: setup_lib.Setup, step: int,
                    extra: Optional[dict] = None) -> dict:
  """The meta JSON saved with a checkpoint: what eval / extract / inference need to rebuild."""
  return {'config': ckpt_lib.config_to_dict(config), 'step': int(step),
          'epoch': step / max(setup.steps_per_epoch, 1), 'num_classes': setup.num_classes,
          'model': config.model.name, 'descriptor_distance': setup.spec.descriptor_distance,
          'process_count': jax.process_count(), 'device_count': jax.device_count(),
          **(extra or {})}


def say(msg: str):
  """Prints on process 0 only."""
  if jax.process_index() == 0:
    print(msg, flush=True)


def _initial_state(config, setup, ckpt) -> tuple[TrainState, int]:
  start = ckpt.latest_step()
  if start is not None and not ckpt.has_train_state(start):
    raise CheckpointError(
        f'{ckpt.directory}/{start} holds variables only (a converted checkpoint?); training '
        'resumes only from training checkpoints. Use config.init.checkpoint for warm starts.')
  t0 = time.time()
  if start is None:
    state = setup.init_state(int(config.seed))
    if config.init.checkpoint:
      state = setup_lib.warm_start(state, config, setup.mesh)
    say(f'[init] initialised {config.model.name} in {time.time() - t0:.1f}s')
    return state, 0
  abstract = ckpt_lib.abstract_tree(setup.abstract_state, sharding.replicated(setup.mesh))
  state, _ = ckpt.restore(abstract, start)
  say(f'[init] resumed from {ckpt.directory}/{start} in {time.time() - t0:.1f}s')
  return state, start


def train_and_evaluate(config, workdir: str, *, data=None) -> dict:
  """Trains `config` in `workdir` (resuming from its latest checkpoint), evaluating on schedule.

  Args:
    config: a config built from configs/ (validated here, before anything is compiled).
    workdir: the run directory (prepared by grl_jax/workdir.py).
    data: a data_pipeline.builder.Data; default: built from config.data.

  Returns:
    {'step': last step, 'final': the final evaluation's metrics ('<evaluator>/<metric>' ->
     float; None if stopped early), 'best_step', 'initial': step-0 metrics if eval_at_start,
     'stopped': signal name or None, 'bad_frames': frames the input streams replaced}.
  """
  t_wall = time.time()
  validation.validate(config, device_count=jax.device_count(),
                      process_count=jax.process_count(), mode='train')
  data = data or data_lib.make_data(config, workdir, 'train')
  bad_before = data_lib.bad_frames()
  num_classes = data.dataset.num_train_ids
  setup = setup_lib.build(config, num_classes=num_classes, steps_per_epoch=data.steps_per_epoch)
  is_main = jax.process_index() == 0
  if is_main:
    io.write_json(io.join(workdir, 'config.json'), ckpt_lib.config_to_dict(config))

  ckpt = ckpt_lib.Checkpointer(workdir, keep=int(config.train.keep_checkpoints),
                               best_metric=str(config.eval.best_metric),
                               async_save=bool(config.train.async_checkpoints))
  reporter = None
  batches = None
  try:
    state, start = _initial_state(config, setup, ckpt)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    say(f'[init] {config.model.name}: {n_params:,} parameters; {num_classes} training ids; '
        f'{len(data.dataset.query)} queries, {len(data.dataset.gallery)} gallery tracklets; '
        f'mesh {dict(setup.mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} '
        f'device(s), {jax.process_count()} process(es); batch {data.global_batch_size}; '
        f'{setup.steps_per_epoch} steps/epoch, {setup.num_steps} steps; '
        f'{config.accel} preset')
    say(f'[init] lr groups: {optim.describe_groups(state.params, config.optim)}')

    reporter = reporting.Reporter(workdir, total_steps=setup.num_steps, is_main=is_main)
    schedule = eval_steps(config, setup.steps_per_epoch, setup.num_steps)
    evals = evaluators.build(config, setup, data, workdir)
    out = {'step': start, 'final': None, 'initial': None, 'best_step': None, 'stopped': None}

    def do_eval(st: TrainState, step: int, title: str, final: bool) -> dict:
      t = time.time()
      outcome = evals.run(st.variables, step, final=final,
                          title=f'{title} step {step} (epoch {step / setup.steps_per_epoch:.2f})')
      reporter.eval_results(step, outcome.metrics, '\n'.join(outcome.tables))
      for name, path in outcome.artifacts.items():
        say(f'[eval] {name} written to {path}')
      say(f'[eval] {time.time() - t:.1f}s')
      return outcome.metrics

    if bool(config.train.eval_at_start) and start == 0:
      out['initial'] = do_eval(state, 0, 'untrained model,', final=False)

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
    with preemption.StopFlag() as stop_flag:
      # The next batches are transferred to the mesh while the current step computes.
      batches = prefetch_lib.on_devices(
          data.train_batches(start) if start < setup.num_steps else iter(()), setup.mesh)
      for step in range(start + 1, setup.num_steps + 1):
        state, metrics = setup.train_step(state, next(batches))
        pending.append((step, metrics))
        # Multi-process runs agree on stopping through a collective: only at log steps.
        stop = (stop_flag.is_set() if jax.process_count() == 1 or step % log_every == 0
                else False)
        is_eval = step in schedule
        is_ckpt = step % ckpt_every == 0 or step == setup.num_steps
        if step % log_every == 0 or is_eval or is_ckpt or stop or step == start + 1:
          means = flush_metrics()
          if means is not None and (step % log_every == 0 or step == setup.num_steps
                                    or step == start + 1):
            reporter.train_progress(step, means, float(setup.lr_schedule(step - 1)),
                                    chrono.tick(step), data.global_batch_size, chrono.elapsed())
        if is_eval:
          chrono.pause()
          last = step == setup.num_steps
          scalars = do_eval(state, step, 'final' if last else 'eval', final=last)
          ckpt.save(state, meta=checkpoint_meta(config, setup, step, {'eval': scalars}),
                    metrics=scalars)
          last_saved = step
          if last:
            out['final'] = scalars
          chrono.resume()
        elif is_ckpt or stop:
          chrono.pause()
          ckpt.save(state, meta=checkpoint_meta(config, setup, step))
          last_saved = step
          chrono.resume()
        if stop:
          out['stopped'] = stop_flag.name
          say(f'[train] stopped by {out["stopped"]} at step {step}; checkpoint saved to '
              f'{ckpt.directory}/{step}; rerun the same command to resume')
          break
      else:
        step = setup.num_steps
    out['step'] = step
    if start >= setup.num_steps:
      say(f'[train] {ckpt.directory}/{start} already reached num_steps={setup.num_steps}; '
          'evaluating it')
      out['final'] = do_eval(state, start, 'final', final=True)
  except Exception as e:  # pylint: disable=broad-except
    # A full disk fails whichever write comes first (a save, metrics.jsonl, TensorBoard, a
    # picture): one line naming the workdir and the last complete checkpoint.
    if isinstance(e, CheckpointError) or not ckpt_lib.out_of_space(e):
      raise
    raise ckpt.space_error(f'writing logs or outputs ({type(e).__name__})') from e
  finally:
    failing = sys.exc_info()[0] is not None
    # Release the input stream now: a tf.data iterator still prefetching (a run stopped early)
    # that is only collected at interpreter exit can deadlock the shutdown.
    if batches is not None and hasattr(batches, 'close'):
      batches.close()  # data_pipeline.pipeline.BatchIterator.close
    del batches
    gc.collect()
    ckpt.close()
    if reporter is not None:
      try:
        reporter.close()
      except Exception:  # pylint: disable=broad-except
        if not failing:   # a full disk fails the last flush too: keep the first error
          raise

  replaced, files = (now - before for now, before in zip(data_lib.bad_frames(), bad_before))
  out['bad_frames'] = replaced
  if replaced or files:
    say(f'[data] {replaced} frames replaced by the nearest valid frame of their tracklet (black '
        f'where none is valid): {files} bad files, each named in a warning; '
        'config.data.strict=True stops at the first instead')
  out['best_step'] = ckpt.best_step()
  if out['final'] is not None:
    _summarise(config, ckpt, out)
  say(f'[train] done in {reporting.fmt_duration(time.time() - t_wall)}; workdir {workdir}')
  return out


def _summarise(config, ckpt, out: dict) -> None:
  best = out['best_step']
  if best is not None and best != out['step']:
    m = ckpt.metrics(best) or {}
    say(f'[eval] best checkpoint: step {best} with {config.eval.best_metric} '
        f'{100 * m.get(config.eval.best_metric, float("nan")):.2f}% (selected on the test '
        'set, as the published recipes do: report the final result)')
  if out['initial'] is not None:
    i, f = out['initial'], out['final']
    ev = str(config.eval.best_metric).split('/', 1)[0]   # the evaluator that picks the best
    say(f'[eval] untrained -> trained ({ev}): mAP {100 * i[f"{ev}/mAP"]:.2f}% -> '
        f'{100 * f[f"{ev}/mAP"]:.2f}%, rank-1 {100 * i[f"{ev}/rank1"]:.2f}% -> '
        f'{100 * f[f"{ev}/rank1"]:.2f}%')
