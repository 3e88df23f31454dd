"""The training state: everything a step reads and writes, as one pytree.

Keeping model/optimiser *functions* out of the state (unlike `flax.training.TrainState`) makes
the state plain data: it can be created sharded by `jax.jit(out_shardings=...)`, donated to the
step, and saved/restored by orbax with an abstract copy of itself as the target.
"""
from __future__ import annotations

from typing import Any

import flax
import jax

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Attributes:
    step: int32[] number of optimiser updates applied so far.
    params: model parameters (the `params` collection).
    batch_stats: BatchNorm running statistics (the `batch_stats` collection; {} if none).
    opt_state: the optax state of `grl_jax.optim.make_optimizer`.
    objective_state: the objective's non-trainable state (GRL: OIM lookup tables
      {'lut_corr': f32[N, D], 'lut_uncorr': f32[N, D]}); {} if none.
    rng: typed PRNG key; step s uses `fold_in(rng, s)`, so randomness does not depend on how
      a run was split by restarts.
  """
  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  objective_state: PyTree
  rng: jax.Array

  @property
  def variables(self) -> dict:
    """The model's variables for `module.apply`."""
    out = {'params': self.params}
    if self.batch_stats:
      out['batch_stats'] = self.batch_stats
    return out

  def checkpoint_items(self) -> tuple[dict, dict]:
    """(variables item, train_state item) of the checkpoint layout (grl_jax.checkpoint)."""
    variables = {'params': self.params, 'batch_stats': self.batch_stats}
    rest = {'step': self.step, 'opt_state': self.opt_state,
            'objective_state': self.objective_state, 'rng': self.rng}
    return variables, rest

  @classmethod
  def from_checkpoint_items(cls, variables: dict, rest: dict) -> 'TrainState':
    return cls(step=rest['step'], params=variables['params'],
               batch_stats=variables.get('batch_stats', {}), opt_state=rest['opt_state'],
               objective_state=rest['objective_state'], rng=rest['rng'])
