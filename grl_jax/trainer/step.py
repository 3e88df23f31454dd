"""The jit-able step functions: one train step and one eval step, plus the frame normalisation
that every path from uint8 frames to a model (training, evaluation, `grl_jax.inference`) uses.

One train step, for a batch sharded over the mesh's 'data' axis:

    x = (frames_uint8 - 255 * mean) / (255 * std)                    ImageNet, RGB
    outputs, batch_stats' = model.apply({params, batch_stats}, x, train=True)
    loss, metrics = objective.loss(outputs, batch, objective_state)
    params' = params + optax update of d loss / d params             (grl_jax/optim.py)
    objective_state' = objective.update_state(stop_gradient(outputs), batch, objective_state)

The trainer knows no model internals: the model and its objective come from the registry
(grl_jax/models/__init__.py), and evaluation reads only `outputs['descriptor']`.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from grl_jax.state import TrainState

MEAN_RGB = np.array([0.485, 0.456, 0.406], np.float32) * 255.0
STD_RGB = np.array([0.229, 0.224, 0.225], np.float32) * 255.0


def normalize_frames(frames: jax.Array) -> jax.Array:
  """uint8[B, T, H, W, 3] RGB -> float32, ImageNet mean/std normalised (on the device)."""
  x = frames.astype(jnp.float32)
  return (x - jnp.asarray(MEAN_RGB)) / jnp.asarray(STD_RGB)


def global_norm(tree) -> jax.Array:
  """sqrt(sum of squares) over every leaf, in float32."""
  leaves = jax.tree.leaves(tree)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


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
    metrics['grad_norm'] = global_norm(grads)
    new_state = state.replace(step=state.step + 1, params=params,
                              batch_stats=updates.get('batch_stats', state.batch_stats),
                              opt_state=opt_state, objective_state=objective_state)
    return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

  return step_fn


def make_eval_step(model) -> Callable:
  """(variables, frames uint8, tracklet) -> (descriptor float32[B, D], tracklet) (eval mode)."""

  def eval_fn(variables, frames, tracklet):
    outputs = model.apply(variables, normalize_frames(frames), train=False)
    if 'descriptor' not in outputs:
      raise KeyError(f'{type(model).__name__} returned no "descriptor" in eval mode '
                     f'(outputs: {sorted(outputs)}); see grl_jax/models/__init__.py')
    return outputs['descriptor'].astype(jnp.float32), tracklet

  return eval_fn
