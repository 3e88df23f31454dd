"""Where the squared distances come from: three given matrices, or descriptors on the device.

Both sources hand out blocks of rows of S^T, where S is the (Nq + Ng)^2 matrix of squared
distances [[q_q, q_g], [q_g^T, g_g]]^2 laid out as the reference concatenates it: row i of the
block is *column* i of S (the reference normalises S by its column maxima and transposes).
Blocks are padded to a fixed row count with copies of their last row, so one compiled shape
serves every block and no padding row divides by zero.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from grl_jax import schema
from grl_jax.errors import ConfigError

_NORM_EPS = 1e-12


def _check_int(value, name: str, low: int = 1) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
    raise ConfigError(f're_ranking: {name}={value!r}: expected an integer >= {low}')
  return int(value)


def check_params(k1, k2, lambda_value, block_size) -> tuple[int, int, float, int]:
  """Validated (k1, k2, lambda_value, block_size); ConfigError naming the argument."""
  k1, k2 = _check_int(k1, 'k1'), _check_int(k2, 'k2')
  block_size = _check_int(block_size, 'block_size')
  if (isinstance(lambda_value, bool) or not isinstance(lambda_value, (int, float, np.floating,
                                                                      np.integer))
      or not 0.0 <= float(lambda_value) <= 1.0):
    raise ConfigError(f're_ranking: lambda_value={lambda_value!r}: expected a number in [0, 1]')
  return k1, k2, float(lambda_value), block_size


def _pad_ids(start: int, stop: int, rows: int) -> np.ndarray:
  """int32[rows]: start..stop-1, then stop-1 repeated."""
  return np.minimum(np.arange(start, start + rows), stop - 1).astype(np.int32)


@jax.jit
def _square(x):
  return x * x


class MatrixSource:
  """Rows of S^T cut from host (numpy) or device distance matrices, one block at a time."""

  def __init__(self, q_g, q_q, g_g):
    q_g, q_q, g_g = (x if isinstance(x, (np.ndarray, jax.Array)) else np.asarray(x)
                     for x in (q_g, q_q, g_g))
    if q_g.ndim != 2 or min(q_g.shape) < 1:
      raise ConfigError(f're_ranking: q_g_dist must be a non-empty [Nq, Ng] matrix, got shape '
                        f'{tuple(q_g.shape)}')
    nq, ng = q_g.shape
    for name, x, want in (('q_q_dist', q_q, (nq, nq)), ('g_g_dist', g_g, (ng, ng))):
      if tuple(x.shape) != want:
        raise ConfigError(f're_ranking: {name} must have shape {want} to match q_g_dist '
                          f'{(nq, ng)}, got {tuple(x.shape)}')
    self.q_g, self.q_q, self.g_g = q_g, q_q, g_g
    self.nq, self.ng, self.n = nq, ng, nq + ng

  def rows(self, start: int, stop: int, pad: int) -> jax.Array:
    """f32[pad, N]: rows start..stop-1 of S^T (then the last one repeated)."""
    nq = self.nq
    out = np.empty((pad, self.n), np.float32)
    if start < nq:  # column i < Nq of S: [q_q[:, i], q_g[i, :]]
      a, b = start, min(stop, nq)
      _transpose_into(out[:b - a, :nq], self.q_q[:, a:b])
      out[:b - a, nq:] = self.q_g[a:b]
    if stop > nq:   # column Nq + k of S: [q_g[:, k], g_g[:, k]]
      a, b = max(start, nq) - nq, stop - nq
      r = max(nq - start, 0)
      _transpose_into(out[r:r + b - a, :nq], self.q_g[:, a:b])
      _transpose_into(out[r:r + b - a, nq:], self.g_g[:, a:b])
    out[stop - start:] = out[stop - start - 1]
    return _square(jax.device_put(out))

  def entries(self, idx: jax.Array) -> jax.Array:
    """f32[N, L]: S[idx[i, l], i] squared (0 where idx is the sentinel N), read on the host."""
    idx = np.asarray(idx)
    nq, n = self.nq, self.n
    i = np.broadcast_to(np.arange(n)[:, None], idx.shape)
    out = np.zeros(idx.shape, np.float32)
    for e_q, i_q, x, flip in ((True, True, self.q_q, False), (False, True, self.q_g, True),
                              (True, False, self.q_g, False), (False, False, self.g_g, False)):
      sel = (idx < n) & ((idx < nq) == e_q) & ((i < nq) == i_q)
      e, c = idx[sel] - (0 if e_q else nq), i[sel] - (0 if i_q else nq)
      out[sel] = np.asarray(x)[(c, e) if flip else (e, c)]   # S[e, i] with S's blocks
    return _square(jax.device_put(out))

  def query_gallery(self, start: int, stop: int, pad: int) -> jax.Array:
    """f32[pad, Ng]: squared q_g rows start..stop-1 (then the last one repeated)."""
    out = np.empty((pad, self.ng), np.float32)
    out[:stop - start] = self.q_g[start:stop]
    out[stop - start:] = out[stop - start - 1]
    return _square(jax.device_put(out))


def _transpose_into(dst: np.ndarray, src, tile: int = 256):
  """dst[:] = src.T, copied in row tiles of src: a plain strided transpose of a tall slab
  misses the cache on every element (3x slower at MARS size)."""
  for r in range(0, src.shape[0], tile):
    dst[:, r:r + tile] = np.asarray(src[r:r + tile]).T


@functools.partial(jax.jit, static_argnames=('metric',))
def _sq_distance(x, y, y_sq, metric: str):
  """f32[B, M] squared distances between x f32[B, D] and y f32[M, D] (y_sq = |y|^2)."""
  xy = jnp.dot(x, y.T, precision=jax.lax.Precision.HIGHEST)
  x_sq = jnp.sum(x * x, axis=1)
  if metric == 'euclidean':  # (the square of grl_jax.evaluation.pairwise_distance's value)
    return jnp.maximum(x_sq[:, None] + y_sq[None, :] - 2.0 * xy, 0.0)
  cos = xy / (jnp.maximum(jnp.sqrt(x_sq), _NORM_EPS)[:, None]
              * jnp.maximum(jnp.sqrt(y_sq), _NORM_EPS)[None, :])
  return (1.0 - cos) ** 2


@functools.partial(jax.jit, static_argnames=('metric',))
def _sq_entries(f, f_sq, rows, idx, metric: str):
  """f32[B, L] squared distances between items rows[b] and idx[b, l], as _sq_distance."""
  xy = jnp.einsum('bd,bld->bl', f[rows], f[idx], precision=jax.lax.Precision.HIGHEST)
  if metric == 'euclidean':
    return jnp.maximum(f_sq[rows][:, None] + f_sq[idx] - 2.0 * xy, 0.0)
  norm = jnp.maximum(jnp.sqrt(f_sq), _NORM_EPS)
  return (1.0 - xy / (norm[rows][:, None] * norm[idx])) ** 2


class FeatureSource:
  """Rows of S^T computed on the device from descriptors; S itself never exists."""

  def __init__(self, qf, gf, metric: str):
    schema.check_choice(metric, schema.DISTANCES, 're_ranking_features: metric')
    if metric == 'dot':
      raise ConfigError("re_ranking_features: metric='dot': re-ranking squares distances, so "
                        "they must be non-negative; expected 'euclidean' or 'cosine'")
    qf, gf = (jnp.asarray(x, jnp.float32) for x in (qf, gf))
    if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1] or not (qf.shape[0]
                                                                           and gf.shape[0]):
      raise ConfigError(f're_ranking_features: features must be non-empty [Nq, D] and [Ng, D] '
                        f'with the same D, got {tuple(qf.shape)} and {tuple(gf.shape)}')
    self.metric = metric
    self.all = jnp.concatenate([qf, gf])
    self.all_sq = jnp.sum(self.all * self.all, axis=1)
    self.nq, self.ng = qf.shape[0], gf.shape[0]
    self.n = self.nq + self.ng

  def rows(self, start: int, stop: int, pad: int) -> jax.Array:
    x = self.all[jnp.asarray(_pad_ids(start, stop, pad))]
    return _sq_distance(x, self.all, self.all_sq, self.metric)

  def entries(self, idx: jax.Array) -> jax.Array:
    """f32[N, L]: squared distance of item i to item idx[i, l] (anything at the sentinel).

    In row chunks whose gathered descriptors, [rows, L, D], stay near 2**24 floats (64 MiB).
    """
    idx = jnp.minimum(idx, self.n - 1)
    rows = max(1, min(self.n, 2**24 // (idx.shape[1] * self.all.shape[1])))
    out = []
    for s in range(0, self.n, rows):
      ids = jnp.asarray(_pad_ids(s, min(s + rows, self.n), rows))
      out.append(_sq_entries(self.all, self.all_sq, ids, idx[ids], self.metric)[:self.n - s])
    return jnp.concatenate(out)

  def query_gallery(self, start: int, stop: int, pad: int) -> jax.Array:
    x = self.all[jnp.asarray(_pad_ids(start, stop, pad))]
    return _sq_distance(x, self.all[self.nq:], self.all_sq[self.nq:], self.metric)
