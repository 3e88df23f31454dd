"""Query-gallery distances on the accelerator, in blocks: euclidean, cosine or dot.

The blocks are computed on the device and handed to the host one at a time
(`distance_blocks`), so the full [Nq, Ng] matrix exists only when asked for
(`pairwise_distance`). grl_jax/evaluation/__init__.py describes the metrics built on them.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from grl_jax import schema

_NORM_EPS = 1e-12


@jax.jit
def _dot_block(q: jax.Array, g: jax.Array) -> jax.Array:
  """f32[Bq, Ng] inner products of a query block f32[Bq, D] with the gallery f32[Ng, D]."""
  # HIGHEST: on GPU/TPU the default f32 matmul may run in TF32/bf16 passes, which would perturb
  # rankings between devices; evaluation must be exact f32.
  return jnp.dot(q, g.T, precision=jax.lax.Precision.HIGHEST)


@functools.partial(jax.jit, static_argnames=('metric',))
def _finish_block(qg: jax.Array, q: jax.Array, g_norm_sq: jax.Array, metric: str) -> jax.Array:
  """Distances from inner products.

  Kept out of `_dot_block` on purpose: on the CPU backend XLA fuses a matmul and its
  element-wise epilogue into one YNNPACK call that repacks the whole gallery operand on every
  call (a gallery-sized transient, ~3x slower per block at 5x MARS); the bare matmul does not.

  Args:
    qg: f32[Bq, Ng] inner products.
    q: f32[Bq, D] the query block (padded rows are zeros; their distances are discarded).
    g_norm_sq: f32[Ng] squared L2 norms of the gallery (computed once, not per block).
    metric: 'euclidean' | 'cosine' | 'dot'.

  Returns:
    f32[Bq, Ng].
  """
  if metric == 'dot':
    return -qg
  q_norm_sq = jnp.sum(q * q, axis=1)
  if metric == 'euclidean':
    sq = q_norm_sq[:, None] + g_norm_sq[None, :] - 2.0 * qg
    return jnp.sqrt(jnp.maximum(sq, 0.0))
  # cosine: normalise after the matmul, with torch.nn.functional.normalize's eps.
  qn = jnp.maximum(jnp.sqrt(q_norm_sq), _NORM_EPS)
  gn = jnp.maximum(jnp.sqrt(g_norm_sq), _NORM_EPS)
  return 1.0 - qg / (qn[:, None] * gn[None, :])


@jax.jit
def _sq_norms(g: jax.Array) -> jax.Array:
  return jnp.sum(g * g, axis=1)


def _to_device(x) -> jax.Array:
  """f32 device copy of a numpy or jax array."""
  if isinstance(x, jax.Array):
    return x if x.dtype == jnp.float32 else x.astype(jnp.float32)
  # device_put copies at most once (on CPU it may even alias a 64-byte aligned array), while
  # jnp.asarray of a numpy array transiently holds two copies: at 10x MARS (0.9 GiB of gallery
  # descriptors) that is the difference between fitting in 2 GiB and not.
  return jax.device_put(np.asarray(x, dtype=np.float32))


def _check_features(qf, gf, metric: str):
  schema.check_choice(metric, schema.DISTANCES, 'evaluation: metric')
  if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1]:
    raise ValueError(f'evaluation: features must be [Nq, D] and [Ng, D] with the same D, got '
                     f'query {tuple(qf.shape)} and gallery {tuple(gf.shape)}')
  if qf.shape[0] == 0 or gf.shape[0] == 0:
    raise ValueError(f'evaluation: empty query ({qf.shape[0]}) or gallery ({gf.shape[0]})')


def _even_blocks(n: int, block_size: int) -> tuple[int, int]:
  """(number of blocks, rows per block) with the least padding for a fixed block shape."""
  if block_size < 1:
    raise ValueError(f'evaluation: block_size must be >= 1, got {block_size}')
  num = math.ceil(n / block_size)
  return num, math.ceil(n / num)


def distance_blocks(qf, gf, metric: str, block_size: int):
  """Yields (start, stop, f32 numpy [stop - start, Ng]) for consecutive query blocks.

  The gallery is put on the device once; every query block has the same padded shape, so the
  jitted block function compiles once.
  """
  _check_features(qf, gf, metric)
  g = _to_device(gf)
  g_norm_sq = _sq_norms(g)
  nq = qf.shape[0]
  num, rows = _even_blocks(nq, block_size)

  def dispatch(b):
    start, stop = b * rows, min((b + 1) * rows, nq)
    q = jnp.asarray(qf[start:stop], dtype=jnp.float32)
    if stop - start < rows:
      q = jnp.pad(q, ((0, rows - (stop - start)), (0, 0)))
    return start, stop, _finish_block(_dot_block(q, g), q, g_norm_sq, metric)

  # One block in flight: JAX dispatch is asynchronous, so block b+1's matmul runs while the
  # caller ranks block b on the host.
  pending = dispatch(0)
  for b in range(num):
    following = dispatch(b + 1) if b + 1 < num else None
    start, stop, d = pending
    yield start, stop, np.asarray(d)[:stop - start]
    pending = following


def pairwise_distance(qf, gf, metric: str = 'euclidean', block_size: int = 1024) -> np.ndarray:
  """Query-gallery distance matrix, computed in query blocks on the default JAX device.

  Args:
    qf: float[Nq, D] query descriptors (numpy or jax array).
    gf: float[Ng, D] gallery descriptors.
    metric: 'euclidean': plain (not squared) L2 distance,
        sqrt(max(|q|^2 + |g|^2 - 2 <q, g>, 0)) (the clamp absorbs f32 cancellation; for
        near-identical vectors expect an absolute error of ~sqrt(f32 eps) |q| = 3e-4 |q|);
      'cosine': 1 - <q, g> / (max(|q|, 1e-12) max(|g|, 1e-12)) (rank-equivalent to STE-NVAN's
        -cos);
      'dot': -<q, g>, GRL's "cosin_dist" on unnormalised descriptors (official
        flysnowtiger/GRL evaluator).
    block_size: query rows per block. Blocks are equalised (ceil(Nq / ceil(Nq / block_size))
      rows) and the last one zero-padded so one compiled shape serves all.

  Returns:
    float32 numpy [Nq, Ng]; smaller = more similar.
  """
  out = np.empty((qf.shape[0], gf.shape[0]), np.float32)
  for start, stop, d in distance_blocks(qf, gf, metric, block_size):
    out[start:stop] = d
  return out


# ----------------------------------------------------------------------------------------------
# Ranks of sparse entries inside sorted rows.
