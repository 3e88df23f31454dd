"""Data parallelism over a one-axis device mesh: batch sharded on 'data', state replicated.

The mesh uses *Auto* axis types (`Mesh(devices, ('data',))`): with jax 0.10's default Explicit
axes (`jax.make_mesh`), slicing a sharded batch and pairwise distances inside the losses fail to
type-check (`ShardingTypeError`, "illegally sharded result"). Under jit with a batch-sharded
input XLA inserts the all-reduces itself, so BatchNorm statistics and gradients are global over
the mesh (SyncBN semantics) and the same code runs on 1 CPU, 8 simulated CPU devices, a GPU or a
TPU slice.

Multi-process: every process feeds only its own rows (`global / process_count`, a contiguous
slice computed by the sampler) and `jax.make_array_from_process_local_data` assembles the global
array; process p's rows land on its addressable devices.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

PyTree = Any
AXIS = 'data'


def make_mesh(num_devices: int = -1) -> Mesh:
  """A ('data',) mesh over the first `num_devices` devices (-1: all), process-major order.

  jax.devices() lists every process's devices grouped by process, so each process's devices are
  contiguous along the axis and its local batch slice maps onto them.
  """
  devices = jax.devices()
  if num_devices != -1:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(f'mesh of {num_devices} devices requested; {len(devices)} available')
    if jax.process_count() > 1 and num_devices != len(devices):
      raise ValueError('multi-process runs use all devices (config.mesh.data=-1)')
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'."""
  return NamedSharding(mesh, P(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def replicate_tree(tree: PyTree, mesh: Mesh) -> PyTree:
  """A sharding tree (same structure as `tree`) replicating every leaf on `mesh`."""
  rep = replicated(mesh)
  return jax.tree.map(lambda _: rep, tree)


def local_batch_size(global_batch_size: int) -> int:
  if global_batch_size % jax.process_count():
    raise ValueError(f'global batch {global_batch_size} does not split over '
                     f'{jax.process_count()} processes')
  return global_batch_size // jax.process_count()


def to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Host-local numpy batch (this process's rows) -> global arrays sharded on 'data'.

  With one process this is a sharded `device_put`; the leading axis must divide evenly over the
  local devices of the mesh.
  """
  sharding = data_sharding(mesh)
  n_local = len([d for d in mesh.devices.flat if d.process_index == jax.process_index()])
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if value.shape[0] % n_local:
      raise ValueError(f'batch[{key!r}] has {value.shape[0]} rows on this process, not '
                       f'divisible by its {n_local} mesh devices')
    out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out


def fetch(tree: PyTree) -> PyTree:
  """Device -> host numpy for fully replicated (or fully addressable) arrays."""
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)
