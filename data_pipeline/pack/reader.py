"""Reading a pack: the Dataset of its metadata, and random access to frame bytes by record.

`load_dataset` rebuilds the reader's Dataset from metadata.json alone (no record is read): the
same pids, camids, lengths, query rows and protocol galleries, so the (seed, step) samplers pick
the same rows and frames as on the loose files. Its frame paths are virtual,
`grlpack://<pack key>/<split>/<record>/<frame>`; `PackedFrames.read(path)` returns that frame's
original bytes (one ArrayRecord record per tracklet, fetched by one byte-range read, a few
recent records cached), so each process reads only the records of its own rows.

The `grlpack://` scheme is registered with etils.epath, the library under grl_jax/io.py, so
every other reader of frame paths (ranked-list pictures, GCE maps: `io.read_bytes(path)`) reads
a packed frame as it reads a file; the tf.data graph gets the bytes from the host plan instead
(data_pipeline/pipeline/plan.py).
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import hashlib
import io as _io
import threading

from etils import epath
import numpy as np

from data_pipeline.datasets import common
from data_pipeline.index import Dataset, TrackletIndex
from data_pipeline.pack import format as fmt
from grl_jax import io
from grl_jax.errors import DatasetError

_TEST_SPLITS = {1: 'query', 2: 'gallery'}
CACHE_RECORDS = 64  # parsed tracklets kept: a batch's rows and their bad-frame neighbours
READ_THREADS = 16  # records of one batch in flight (GCS round trips, not CPU, bound them)


SCHEME = 'grlpack://'
_PACKS: dict[str, str] = {}  # pack key -> pack directory (filled by load_dataset / PackedFrames)
_OPEN: dict[str, 'PackedFrames'] = {}  # pack key -> the process's reader of that pack
_REGISTRY_LOCK = threading.Lock()


def pack_key(path: str) -> str:
  """The short key naming the pack at `path` in its virtual frame paths."""
  return hashlib.sha1(io.normalize(path).encode()).hexdigest()[:16]


def frames_of(key: str) -> 'PackedFrames':
  """This process's PackedFrames of the pack with `key` (opened on first use)."""
  with _REGISTRY_LOCK:
    if key not in _OPEN:
      if key not in _PACKS:
        raise DatasetError(f'{SCHEME}{key}: no pack with this key was loaded in this process '
                           '(data_pipeline.pack.load_dataset registers it)')
      _OPEN[key] = PackedFrames(_PACKS[key], register=False)
    return _OPEN[key]


class FramePath:
  """The epath view of a virtual frame path: what grl_jax/io.py asks of a path to read it."""

  def __init__(self, uri: str):
    self._uri = str(uri)

  def joinpath(self, *parts: str) -> 'FramePath':
    return FramePath('/'.join([self._uri.rstrip('/'), *parts])) if parts else self

  def __str__(self) -> str:
    return self._uri

  __fspath__ = __str__

  def __repr__(self) -> str:
    return f'FramePath({self._uri!r})'

  @property
  def name(self) -> str:
    return self._uri.rsplit('/', 1)[-1]

  def read_bytes(self) -> bytes:
    key = self._uri[len(SCHEME):].split('/', 1)[0]
    return frames_of(key).read(self._uri)

  def open(self, mode: str = 'rb'):
    if mode != 'rb':
      raise DatasetError(f'{self._uri}: packed frames are read-only (asked mode {mode!r})')
    return _io.BytesIO(self.read_bytes())

  def exists(self) -> bool:
    try:
      self.read_bytes()
    except (DatasetError, IndexError, ValueError):
      return False
    return True

  def is_dir(self) -> bool:
    return False

  def is_file(self) -> bool:
    return self.exists()


epath.register_path_cls(SCHEME)(FramePath)


def _virtual(prefix: str, split: str, records: np.ndarray, lengths: np.ndarray) -> list[str]:
  return [f'{prefix}{split}/{int(r)}/{j}' for r, n in zip(records, lengths) for j in range(n)]


def _index(prefix: str, split: str, records, split_meta: dict) -> TrackletIndex:
  records = np.asarray(records, np.int64)
  lengths = np.asarray(split_meta['lengths'], np.int32)[records]
  return common.index_from_arrays(
      np.asarray(_virtual(prefix, split, records, lengths), dtype=object),
      np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else [], lengths,
      np.asarray(split_meta['pids'], np.int32)[records],
      np.asarray(split_meta['camids'], np.int32)[records])


def load_dataset(path: str, *, dataset: str, split_id: int = 0,
                 protocol: str = 'torchreid') -> Dataset:
  """The Dataset packed at `path` (checked to be complete and of `dataset` / `split_id`), with
  `protocol`'s query and gallery.

  Raises:
    DatasetError: not a complete pack of that dataset, or `protocol` was not packed.
  """
  meta = fmt.check(path, dataset=dataset, split_id=split_id)
  path = io.normalize(path)
  if protocol not in meta['gallery_rows']:
    raise DatasetError(f'{fmt.describe(path)} has the protocols {sorted(meta["gallery_rows"])}; '
                       f'expected {protocol!r} (config.data.protocol; re-pack with '
                       f'--protocols={protocol})')
  key = pack_key(path)
  with _REGISTRY_LOCK:
    _PACKS[key] = path
  prefix = f'{SCHEME}{key}/'
  splits = meta['splits']
  train = _index(prefix, 'train', np.arange(len(splits['train']['lengths'])), splits['train'])
  code = np.asarray(meta['test']['split'], np.int64)
  record = np.asarray(meta['test']['record'], np.int64)
  parts = []
  for c, split in _TEST_SPLITS.items():
    rows = np.flatnonzero(code == c)
    parts.append((rows, _index(prefix, split, record[rows], splits[split])))
  # The test index in the reader's row order: query and gallery tracklets interleaved back.
  both = TrackletIndex.concat(parts[0][1], parts[1][1])
  order = np.argsort(np.concatenate([parts[0][0], parts[1][0]]), kind='stable')
  test = both.subset(order)
  query_rows = np.asarray(meta['query_rows'], np.int64)
  galleries = {p: np.asarray(r, np.int64) for p, r in meta['gallery_rows'].items()}
  reader_meta = dict(meta['reader_meta'])
  for k, dtype in meta.get('reader_meta_arrays', {}).items():
    reader_meta[k] = np.asarray(reader_meta[k], dtype)
  reader_meta['query_in_gallery'] = common.query_in_gallery(query_rows, galleries[protocol],
                                                            len(test))
  reader_meta['packed'] = path
  return Dataset(name=meta['dataset'], train=train, query=test.subset(query_rows),
                 gallery=test.subset(galleries[protocol]), protocol=protocol, meta=reader_meta,
                 test=test, query_rows=query_rows, gallery_rows=galleries)


class PackedFrames:
  """Frame bytes of a pack by virtual path (thread-safe; shards opened on first use).

  A record is fetched with one byte-range read of its shard through the storage layer
  (grl_jax/io.py; local and gs:// alike) at the place metadata.json records for it
  (format.py `physical`), so a process reads only the records of its own rows. `read_many`
  fetches the records of a whole batch concurrently (on GCS each read waits a round trip).

  Attributes:
    path: the pack directory.
    records_read: records fetched from the shards so far (cache misses).
  """

  def __init__(self, path: str, register: bool = True):
    self.path = io.normalize(path)
    key = pack_key(self.path)
    self._prefix = f'{SCHEME}{key}/'
    info, meta = fmt.read_complete(self.path)
    self._shards = {s: fmt.shard_paths(self.path, meta['dataset'], info, s)[0]
                    for s in fmt.SPLITS}
    self._records = {s: np.asarray(meta['records'][s], np.int64).reshape(-1, 3)
                     for s in fmt.SPLITS}
    self._local = threading.local()  # each thread its own open shards (a seek is per handle)
    self._stack = contextlib.ExitStack()  # every open shard (epath gives gs:// ones as contexts)
    self._cache: collections.OrderedDict = collections.OrderedDict()
    self._lock = threading.Lock()
    self._pool = None
    self.records_read = 0
    if register:  # io.read_bytes of this pack's frame paths shares this reader and its cache
      with _REGISTRY_LOCK:
        _PACKS[key] = self.path
        _OPEN[key] = self

  def _handle(self, shard_path: str):
    files = self._local.__dict__.setdefault('files', {})
    if shard_path not in files:
      with self._lock:
        files[shard_path] = self._stack.enter_context(io.path(shard_path).open('rb'))
    return files[shard_path]

  def _fetch(self, split: str, i: int) -> list[bytes]:
    """Reads and parses record `i` of `split` (no cache)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    records = self._records[split]
    if not 0 <= int(i) < len(records):
      raise DatasetError(f'{fmt.describe(self.path)}: {split} has {len(records)} records, '
                         f'asked for record {i}')
    shard, offset, length = (int(v) for v in records[int(i)])
    shard_path = self._shards[split][shard]
    try:
      raw = fmt.read_logical(self._handle(shard_path), offset, length)
    except Exception as e:  # pylint: disable=broad-except  (missing shard, gs:// errors)
      raise DatasetError(f'{fmt.describe(self.path)}: cannot read shard {shard_path!r}: '
                         f'{type(e).__name__}: {e}') from e
    if len(raw) != length:
      raise DatasetError(f'{fmt.describe(self.path)}: shard {shard_path!r} is shorter than its '
                         f'records say (read {len(raw)} of {length} bytes at {offset})')
    return list(tf.train.Example.FromString(raw).features.feature['frames'].bytes_list.value)

  def record(self, split: str, i: int) -> list[bytes]:
    """The frame bytes of record `i` of `split` (the last CACHE_RECORDS are kept)."""
    key = (split, int(i))
    with self._lock:
      if key in self._cache:
        self._cache.move_to_end(key)
        return self._cache[key]
    frames = self._fetch(split, int(i))
    with self._lock:
      self.records_read += 1
      self._cache[key] = frames
      while len(self._cache) > CACHE_RECORDS:
        self._cache.popitem(last=False)
    return frames

  def _parse(self, virtual_path: str) -> tuple[str, int, int]:
    virtual_path = str(virtual_path)
    if not virtual_path.startswith(self._prefix):
      raise DatasetError(f'{virtual_path!r} is not a frame of {fmt.describe(self.path)}')
    split, record, j = virtual_path[len(self._prefix):].split('/')
    return split, int(record), int(j)

  def read(self, virtual_path: str) -> bytes:
    """The original bytes of the frame at `virtual_path` (reader.load_dataset's paths)."""
    split, record, j = self._parse(virtual_path)
    return self.record(split, record)[j]

  def read_many(self, virtual_paths) -> list[bytes]:
    """`read` of each path; the records they need are fetched concurrently."""
    parsed = [self._parse(p) for p in virtual_paths]
    keys = list(dict.fromkeys((s, r) for s, r, _ in parsed))
    if len(keys) > 1:
      if self._pool is None:
        with self._lock:
          if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(READ_THREADS)
      got = dict(zip(keys, self._pool.map(lambda k: self.record(*k), keys)))
    else:
      got = {k: self.record(*k) for k in keys}
    return [got[(s, r)][j] for s, r, j in parsed]

  def close(self):
    with self._lock:
      if self._pool is not None:
        self._pool.shutdown()
        self._pool = None
      self._stack.close()
      self._local = threading.local()
      self._cache.clear()
