"""Query x gallery distance tiles with the gallery streamed from any array-like, memmaps included.

`distance_tiles` walks the gallery once, in blocks of rows, and yields f32 distance tiles
[query chunk, gallery block] computed on the default JAX device (the kernels of
grl_jax/evaluation/distances.py). Only the queries and one or two gallery blocks are resident,
so a gallery far larger than memory works: an ``np.memmap`` / ``np.load(..., mmap_mode='r')``
array is read block by block and the pages of a block are handed back to the kernel
(``madvise(MADV_DONTNEED)``) once it is copied, so they do not accumulate in the resident set.
Every tile has one padded shape, so the block kernel compiles once.
"""
from __future__ import annotations

import math
import mmap
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from numpy.lib.array_utils import byte_bounds

from grl_jax import errors
from grl_jax.evaluation import distances

# Target elements of one f32 distance tile: 2**24 = 64 MiB (e.g. 1,980 queries x 8,192 rows).
_TILE_ELEMENTS = 2**24
_MAX_QUERY_CHUNK = 2048


def default_block_rows(num_query_rows: int) -> int:
  """Gallery rows per block so that a [query chunk, block] f32 tile is about 64 MiB."""
  return int(min(65536, max(256, _TILE_ELEMENTS // max(1, num_query_rows))))


def _releasable_mmap(a) -> mmap.mmap | None:
  """The read-only / shared mmap under a numpy memmap (or a view of one), else None.

  Copy-on-write memmaps (mode 'c') are left alone: dropping their pages would drop the
  caller's private modifications.
  """
  base, mode = a, None
  while base is not None:
    if isinstance(base, mmap.mmap):
      return base if mode in ('r', 'r+', 'readonly', 'readwrite') else None
    if mode is None and isinstance(base, np.memmap):
      mode = base.mode
    base = getattr(base, 'base', None)
  return None


class GalleryReader:
  """Row blocks of a gallery as f32 device arrays, padded to a fixed number of rows.

  Args:
    gf: float[Ng, D] numpy array, np.memmap, jax array, or anything with `shape` and numpy
      slicing (h5py / zarr datasets).
    block_rows: rows per block (the last block is zero-padded to it).
  """

  def __init__(self, gf, block_rows: int):
    self.gf = gf
    self.block_rows = int(block_rows)
    self.num_rows, self.dim = int(gf.shape[0]), int(gf.shape[1])
    self._is_device = isinstance(gf, jax.Array)
    self._mm = None if self._is_device else _releasable_mmap(gf)
    self._mm_addr = 0
    if self._mm is not None:
      view = np.frombuffer(self._mm, np.uint8)  # only to learn the mapping's address
      self._mm_addr = view.__array_interface__['data'][0]
      del view

  def _release(self, view: np.ndarray):
    """Drops the resident pages behind `view` (a slice of the memmap); the file keeps them."""
    if self._mm is None or view.size == 0:
      return
    low, high = byte_bounds(view)
    start = low - self._mm_addr
    aligned = start - start % mmap.PAGESIZE
    if aligned < 0 or high - self._mm_addr > len(self._mm):
      return
    self._mm.madvise(mmap.MADV_DONTNEED, aligned, high - self._mm_addr - aligned)

  def _pad(self, host: np.ndarray) -> jax.Array:
    if host.shape[0] < self.block_rows:
      full = np.zeros((self.block_rows, self.dim), np.float32)
      full[:host.shape[0]] = host
      host = full
    return jax.device_put(host)

  def rows(self, start: int, stop: int) -> jax.Array:
    """f32[block_rows, D] device copy of gallery rows [start, stop), zero-padded."""
    if self._is_device:
      block = self.gf[start:stop].astype(jnp.float32)
      pad = self.block_rows - (stop - start)
      return jnp.pad(block, ((0, pad), (0, 0))) if pad else block
    view = self.gf[start:stop]
    # A private copy: on the CPU backend device_put may alias host memory, and the memmap pages
    # are released right after.
    host = np.array(view, dtype=np.float32, order='C', copy=True)
    if isinstance(view, np.ndarray):
      self._release(view)
    return self._pad(host)

  def gather(self, index: np.ndarray) -> jax.Array:
    """f32[block_rows, D] device copy of gallery rows `index` (sorted, at most block_rows)."""
    if self._is_device:
      block = jnp.take(self.gf, jnp.asarray(index), axis=0).astype(jnp.float32)
      pad = self.block_rows - len(index)
      return jnp.pad(block, ((0, pad), (0, 0))) if pad else block
    host = np.array(self.gf[index], dtype=np.float32, order='C', copy=True)
    if isinstance(self.gf, np.ndarray):
      self._release(self.gf[int(index[0]):int(index[-1]) + 1])
    return self._pad(host)


def distance_tiles(qf, gf, metric: str, block_rows: int | None = None,
                   query_chunk: int | None = None, columns: np.ndarray | None = None
                   ) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
  """Yields (q0, q1, gallery_index int64[n], f32 numpy [q1 - q0, n]) covering the gallery once.

  Gallery blocks are the outer loop (each is read once), query chunks the inner one. The
  distances are those of `grl_jax.evaluation.pairwise_distance` (same metric kernels).

  Args:
    qf: float[Nq, D] queries (held on the device whole).
    gf: float[Ng, D] gallery, any array-like (see `GalleryReader`).
    metric: 'euclidean' | 'cosine' | 'dot'.
    block_rows: gallery rows per tile (default `default_block_rows`).
    query_chunk: queries per tile (default all, at most 2048).
    columns: optional sorted int64 gallery rows to visit instead of all of them (gathered in
      blocks of block_rows; the same compiled kernel and tile shape).
  """
  distances._check_features(qf, gf, metric)
  nq, ng = int(qf.shape[0]), int(gf.shape[0])
  if query_chunk is not None and query_chunk < 1:
    raise errors.ConfigError(f'evaluation: chunk_size must be >= 1, got {query_chunk}')
  num_q, q_rows = distances._even_blocks(nq, min(query_chunk or _MAX_QUERY_CHUNK, nq))
  q_all = distances._to_device(qf)
  q_blocks = []
  for b in range(num_q):
    q = q_all[b * q_rows:min((b + 1) * q_rows, nq)]
    if q.shape[0] < q_rows:
      q = jnp.pad(q, ((0, q_rows - q.shape[0]), (0, 0)))
    q_blocks.append((b * q_rows, min((b + 1) * q_rows, nq), q))
  if block_rows is not None and block_rows < 1:
    raise errors.ConfigError(f'evaluation: gallery_block must be >= 1, got {block_rows}')
  block_rows = block_rows or default_block_rows(q_rows)
  # Equalised over the whole gallery (the least padding), also when visiting `columns`, so
  # that both passes of an evaluation run the very same compiled kernel on one tile shape.
  block_rows = math.ceil(ng / math.ceil(ng / block_rows))
  total = ng if columns is None else len(columns)
  if total == 0:
    return
  num_g = math.ceil(total / block_rows)
  reader = GalleryReader(gf, block_rows)

  def load(b):
    s, e = b * block_rows, min((b + 1) * block_rows, total)
    if columns is None:
      return np.arange(s, e, dtype=np.int64), reader.rows(s, e)
    index = np.asarray(columns[s:e], np.int64)
    return index, reader.gather(index)

  def dispatch(b):
    index, g = load(b)
    g_norm_sq = distances._sq_norms(g)
    return [(q0, q1, index, distances._finish_block(distances._dot_block(q, g), q, g_norm_sq,
                                                    metric)) for q0, q1, q in q_blocks]

  # One gallery block in flight: its matmuls run while the caller ranks the previous one.
  pending = dispatch(0)
  for b in range(num_g):
    following = dispatch(b + 1) if b + 1 < num_g else None
    for q0, q1, index, d in pending:
      yield q0, q1, index, np.asarray(d)[:q1 - q0, :len(index)]
    pending = following
