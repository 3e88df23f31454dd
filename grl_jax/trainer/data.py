"""This process's view of the input side: data_pipeline/builder.py given the JAX topology."""
from __future__ import annotations

import jax

from data_pipeline import builder
from grl_jax import schema


def barrier(name: str) -> None:
  """Waits until every process reaches `name` (no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def make_data(config, workdir: str, mode: str = 'train') -> builder.Data:
  """The dataset and this process's batch iterators for `config` (see builder.build)."""
  n_mesh = schema.mesh_devices(config, jax.device_count())
  return builder.build(config, workdir,
                       global_batch_size=schema.global_batch_size(config, n_mesh),
                       num_steps=lambda spe: schema.total_steps(config, spe),
                       process_index=jax.process_index(), process_count=jax.process_count(),
                       mode=mode, barrier=barrier)


def bad_frames() -> tuple[int, int]:
  """(frames replaced, distinct bad files) so far over every input stream of this process
  (data_pipeline/pipeline/recovery.py keeps the totals; in-memory test data adds none)."""
  from data_pipeline.pipeline import recovery  # pylint: disable=g-import-not-at-top
  return recovery.STATS.replaced, len(recovery.STATS.files)
