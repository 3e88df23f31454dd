"""Jaccard distance between sparse V rows and the final re-ranked distance, in pair blocks.

    J(i, g) = 1 - s / (2 - s),  s = sum_j min(V[i, j], V[g, j])
    final(i, g) = (1 - lambda) J(i, g) + lambda d(i, g)

(with sum_j V[i, j] = 1 this is 1 - |min| / |max| of the two rows, the paper's weighted
Jaccard). Only columns j where both rows are non-zero contribute, so the work is the number of
(query entry, gallery entry) pairs that share a column. The gallery rows are turned into an
inverted index (column -> gallery rows holding it, CSC order); each query entry (i, j) is then
paired with the gallery entries of column j, min() taken, and scatter-added into a dense
[B, Ng] block of s. Query rows are grouped so that a block holds at most a fixed number of
pair slots: the memory of a block is O(slots + B Ng), independent of how skewed the columns
are.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnames=('n',))
def inverted_index(g_idx: jax.Array, g_val: jax.Array, n: int):
  """CSC form of the gallery rows of V.

  Args:
    g_idx: int32[Ng, M] sorted columns of each gallery row, n in empty slots.
    g_val: f32[Ng, M] values.
    n: number of columns N (= Nq + Ng), also the empty-slot sentinel.

  Returns:
    (int32[N + 1] column pointers, int32[Ng M] gallery row of each entry, f32[Ng M] values);
    column j's entries are [ptr[j], ptr[j + 1]) in gallery-row order.
  """
  ng, m = g_idx.shape
  rows = jnp.broadcast_to(jnp.arange(ng, dtype=jnp.int32)[:, None], (ng, m)).reshape(-1)
  cols, rows, vals = jax.lax.sort((g_idx.reshape(-1), rows, g_val.reshape(-1)), num_keys=1,
                                  is_stable=True)
  ptr = jnp.searchsorted(cols, jnp.arange(n + 1, dtype=jnp.int32), side='left')
  return ptr.astype(jnp.int32), rows, vals


def _entry_counts(q_idx: jax.Array, ptr: jax.Array) -> jax.Array:
  """int32[..., M]: gallery entries sharing each query entry's column (0 for empty slots)."""
  n = ptr.shape[0] - 1
  j = jnp.minimum(q_idx, n - 1)
  return jnp.where(q_idx < n, ptr[j + 1] - ptr[j], 0)


@functools.partial(jax.jit, static_argnames=('chunk',))
def task_counts(q_idx: jax.Array, ptr: jax.Array, chunk: int) -> jax.Array:
  """int32[Nq]: tasks of each query row (a task = one query entry x `chunk` gallery entries)."""
  return jnp.sum(-(-_entry_counts(q_idx, ptr) // chunk), axis=1)


@jax.jit
def mean_pairs(q_idx: jax.Array, ptr: jax.Array) -> jax.Array:
  """f32 mean number of gallery entries paired with an occupied query entry."""
  c = _entry_counts(q_idx, ptr)
  return jnp.sum(c) / jnp.maximum(jnp.sum(c > 0), 1)


@functools.partial(jax.jit, static_argnames=('tasks', 'chunk'))
def final_block(q_idx, q_val, ptr, csc_rows, csc_vals, sq_qg, row_max, lam, tasks: int,
                chunk: int):
  """Final distances of a block of query rows.

  Each query entry (b, j) with c gallery entries in column j becomes ceil(c / chunk) tasks of
  `chunk` lanes; lane l of task q handles gallery entry ptr[j] + q chunk + l. Chunking keeps
  the task -> entry lookup (a scatter of entry starts + a max-scan) `chunk` times smaller
  than one per pair, at the price of < chunk idle lanes per entry.

  Args:
    q_idx, q_val: int32 / f32 [B, M] sparse V rows of the queries (padding rows empty).
    ptr, csc_rows, csc_vals: `inverted_index` of the gallery rows.
    sq_qg: f32[B, Ng] squared query-gallery distances; row_max: f32[B] the maxima of the
      queries' full rows, so d = sq_qg / row_max.
    lam: f32 scalar lambda.
    tasks: static task slots; the block's `task_counts` must not exceed it.
    chunk: static lanes per task.

  Returns:
    f32[B, Ng] (1 - lambda) J + lambda d.
  """
  b, m = q_idx.shape
  ng = sq_qg.shape[1]
  counts = _entry_counts(q_idx, ptr).reshape(-1)                   # [E], E = B M
  n_tasks = -(-counts // chunk)
  ends = jnp.cumsum(n_tasks)
  starts = ends - n_tasks
  entry = jnp.arange(b * m, dtype=jnp.int32)
  # Task t belongs to the last entry starting at or before t: mark starts, then a max-scan.
  marks = jnp.zeros((tasks,), jnp.int32).at[jnp.where(n_tasks > 0, starts, tasks)].max(
      entry, mode='drop')
  e = jax.lax.associative_scan(jnp.maximum, marks)                  # [T]
  t = jnp.arange(tasks, dtype=jnp.int32)
  j = jnp.minimum(q_idx.reshape(-1)[e], ptr.shape[0] - 2)
  offset = (t - starts[e])[:, None] * chunk + jnp.arange(chunk, dtype=jnp.int32)[None, :]
  valid = (t < ends[-1])[:, None] & (offset < counts[e][:, None])   # [T, chunk]
  pos = jnp.minimum(ptr[j][:, None] + offset, csc_rows.shape[0] - 1)
  contrib = jnp.minimum(q_val.reshape(-1)[e][:, None], csc_vals[pos])
  target = jnp.where(valid, (e // m)[:, None] * ng + csc_rows[pos], b * ng)
  s = jnp.zeros((b * ng,), jnp.float32).at[target.reshape(-1)].add(
      contrib.reshape(-1), mode='drop').reshape(b, ng)
  jac = 1.0 - s / (2.0 - s)
  return jac * (1.0 - lam) + (sq_qg / row_max[:, None]) * lam


def query_blocks(counts: np.ndarray, rows: int, budget: int) -> list[tuple[int, int]]:
  """Consecutive query ranges of at most `rows` rows and `budget` tasks (a row is never
  split, so `budget` must be >= counts.max())."""
  out, start, total = [], 0, 0
  for i, c in enumerate(counts.tolist()):
    if i > start and (i - start == rows or total + c > budget):
      out.append((start, i))
      start, total = i, 0
    total += c
  out.append((start, len(counts)))
  return out
