"""`--format=stablehlo`: a serialized `jax.export.Exported` (StableHLO portable artifact).

The file holds the serving function (grl_jax/export/serving.py) with the variables baked in as
constants; a consumer needs only jax and numpy (no grl_jax, flax or checkpoint):

    from jax import export
    with open('grl.shlo', 'rb') as f:
      exported = export.deserialize(bytearray(f.read()))
    descriptors = exported.call(clips_uint8)          # [B, T, H, W, 3] -> float32[B, D]

`exported.in_avals` / `out_avals` give the shapes (the batch is the symbolic 'b' with
`--dynamic_batch`) and `exported.platforms` the platforms it was lowered for.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np

from grl_jax import io


def export(serving, spec: jax.ShapeDtypeStruct, output: str,
           platforms: Sequence[str] | None = None) -> dict:
  """Writes the serialized Exported of `serving.fn` at `spec` to `output` (one file)."""
  exported = jax.export.export(jax.jit(serving.fn), platforms=platforms)(spec)
  blob = bytes(exported.serialize())
  io.write_bytes(output, blob)
  return {'platforms': list(exported.platforms), 'size_bytes': len(blob),
          'calling_convention_version': int(exported.calling_convention_version)}


def runtime_platform() -> str:
  """The platform `loader` runs artifacts on here (JAX's default backend)."""
  return jax.export.default_export_platform()


def loader(output: str) -> Callable[[np.ndarray], np.ndarray]:
  """The artifact as a numpy function (deserialized with jax.export only)."""
  exported = jax.export.deserialize(bytearray(io.read_bytes(output)))
  return lambda clips: np.asarray(exported.call(clips))
