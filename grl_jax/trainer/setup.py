"""Everything compiled for a run: model, objective, optimiser, mesh, state sharding and the
jitted steps, built from the config once (`build`), plus state initialisation and warm start.

The state is born sharded: `Setup.init_state` runs the initialiser under jit with the state's
output sharding, so no full copy of the parameters is ever materialised on one host first.
The train step is compiled with the state replicated and donated; BatchNorm statistics and
gradients are reduced over the whole global batch by XLA (SyncBN).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections

from grl_jax import checkpoint as ckpt_lib
from grl_jax import models
from grl_jax import optim
from grl_jax import schema
from grl_jax import sharding
from grl_jax.errors import CheckpointError
from grl_jax.state import TrainState
from grl_jax.trainer import memory
from grl_jax.trainer import step as step_lib


@dataclasses.dataclass
class Setup:
  """The built pieces of one run (see `build`)."""
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
  state_sharding: Any
  abstract_state: Any
  train_step: Any   # jitted
  eval_step: Any    # jitted

  def init_state(self, seed: int) -> TrainState:
    init = jax.jit(_init_fn(self.model, self.objective, self.tx, self.config),
                   out_shardings=self.state_sharding)
    return init(root_key(self.config, seed))


def root_key(config, seed: int) -> jax.Array:
  """The run's typed PRNG key; `config.rng_impl` picks the generator (see configs/base.py)."""
  return jax.random.key(int(seed), impl=str(config.rng_impl))


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


def build(config, *, num_classes: int, steps_per_epoch: int, train: bool = True,
          check_memory: bool = True) -> Setup:
  """Model, objective, optimiser and the jitted step functions over the config's mesh (the
  steps take whatever global batch they are given: its size is the data side's).

  With `train` and `check_memory`, a device with a known memory limit (GPU / TPU) gets the
  train step compiled here for the config's batch: a ConfigError says if it does not fit
  (grl_jax/trainer/memory.py); the executable is reused by the first step."""
  mesh = sharding.make_mesh(int(config.mesh.data))
  spec = models.get(config.model.name)
  model = spec.build(config.model, num_classes)
  objective = spec.objective(config.loss, num_classes) if train else None
  num_steps = schema.total_steps(config, steps_per_epoch)

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
    train_step = jax.jit(step_lib.make_train_step(model, objective, tx),
                         in_shardings=(state_sharding, data_sh),
                         out_shardings=(state_sharding, rep), donate_argnums=(0,))
    if check_memory:
      memory.check_train_step(train_step, abstract_state, config, mesh)
  eval_step = jax.jit(step_lib.make_eval_step(model), in_shardings=(rep, data_sh, data_sh),
                      out_shardings=(rep, rep))
  return Setup(config=config, mesh=mesh, spec=spec, model=model, objective=objective, tx=tx,
               lr_schedule=schedule, num_classes=num_classes, steps_per_epoch=steps_per_epoch,
               num_steps=num_steps, state_sharding=state_sharding,
               abstract_state=abstract_state, train_step=train_step, eval_step=eval_step)


def warm_start(state: TrainState, config, mesh) -> TrainState:
  """Copies the variables of `config.init.checkpoint` (e.g. converted ImageNet ResNet-50
  weights) into the matching paths of the fresh state, under `config.init.prefix`."""
  step = None if int(config.init.step) < 0 else int(config.init.step)
  rep = sharding.replicated(mesh)
  loaded, meta = ckpt_lib.restore_variables(config.init.checkpoint, step, sharding=rep)
  try:
    merged, copied = ckpt_lib.merge_variables(
        {'params': state.params, 'batch_stats': state.batch_stats}, loaded,
        str(config.init.prefix))
  except CheckpointError as e:
    raise CheckpointError(f'config.init.checkpoint={config.init.checkpoint!r}: {e}') from e
  total = len(jax.tree.leaves(state.params)) + len(jax.tree.leaves(state.batch_stats))
  logging.info('warm start: %d of %d tensors from %s (source step %s)', copied, total,
               config.init.checkpoint, meta.get('step'))
  print(f'[init] warm start: {copied}/{total} tensors from {config.init.checkpoint}',
        flush=True)
  put = lambda t: jax.tree.map(lambda x: jax.device_put(x, rep), t)  # noqa: E731
  return state.replace(params=put(merged['params']), batch_stats=put(merged['batch_stats']))
