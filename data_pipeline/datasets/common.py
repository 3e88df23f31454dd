"""Shared pieces of the dataset readers: file access, .mat reading, relabelling, protocol
assembly and the optional frame-existence check.

Every reader only reads index files and directory listings; no image is ever decoded. All file
access goes through the storage layer (grl_jax/io.py), so the same code reads a local directory
or a `gs://` bucket (on a TPU VM the dataset usually lives in GCS). Every bad input raises
`grl_jax.errors.DatasetError` (a ValueError) naming the file and what was expected; the
protocol names come from `grl_jax.schema.PROTOCOLS`.
"""
from __future__ import annotations

import io
import os
import posixpath
from typing import Any, Iterable, Sequence

import numpy as np

from data_pipeline.index import Dataset, TrackletIndex
from grl_jax import io as storage
from grl_jax.errors import DatasetError
from grl_jax.schema import PROTOCOLS

# How many missing frames a `verify=True` error lists before it only counts.
MAX_MISSING_LISTED = 20


# ------------------------------------------------------------------------------------------------
# File access (grl_jax/io.py; every failure becomes a DatasetError naming the path)


def normalize_root(root: str) -> str:
  """Absolute local path (frame paths must be absolute) or the URL as given, no trailing '/'."""
  if not isinstance(root, (str, os.PathLike)) or not str(root):
    raise DatasetError(f'dataset root must be a non-empty path, got {root!r}')
  root = str(root)
  if storage.is_remote(root):
    return root.rstrip('/')
  return os.path.abspath(os.path.expanduser(root))


def join(base: str, *parts: str) -> str:
  """Joins with '/', which both local POSIX paths and gs:// URLs use."""
  return posixpath.join(base, *parts)


def _wrap(path: str, what: str, err: Exception) -> DatasetError:
  return DatasetError(f'cannot {what} {path!r}: {type(err).__name__}: {err}')


def exists(path: str) -> bool:
  try:
    return storage.exists(path)
  except Exception as e:  # pylint: disable=broad-except  (tf.errors.* for permissions etc.)
    raise _wrap(path, 'check', e) from e


def isdir(path: str) -> bool:
  try:
    return storage.isdir(path)
  except Exception as e:  # pylint: disable=broad-except
    raise _wrap(path, 'check', e) from e


def require_root(root: str, dataset: str, expected: str) -> str:
  """Normalises `root` and checks it is a directory; `expected` describes the layout."""
  root = normalize_root(root)
  if not isdir(root):
    raise DatasetError(f'{dataset}: root {root!r} does not exist or is not a directory; '
                       f'expected {expected}')
  return root


def open_root(root: str, dataset: str, expected: str, protocol: str,
              split_id: int | None = None) -> str:
  """The common start of a reader's `load`: the protocol is known, a fixed-split dataset got
  split_id 0 (pass None for datasets with splits, which check theirs), the root exists."""
  check_protocol(protocol, dataset)
  if split_id is not None:
    check_no_split(split_id, dataset)
  return require_root(root, dataset, expected)


def require_dir(path: str, dataset: str, expected: str) -> None:
  if not isdir(path):
    raise DatasetError(f'{dataset}: missing directory {path!r}; expected {expected}')


def require_file(path: str, dataset: str, expected: str) -> None:
  if not exists(path) or isdir(path):
    raise DatasetError(f'{dataset}: missing file {path!r}; expected {expected}')


def listdir(path: str) -> list[str]:
  """Sorted entry names of a directory."""
  try:
    return storage.listdir(path)
  except Exception as e:  # pylint: disable=broad-except
    raise _wrap(path, 'list directory', e) from e


def list_subdirs(path: str) -> list[str]:
  """Sorted names of the sub-directories of `path`."""
  return [n for n in listdir(path) if isdir(join(path, n))]


def list_files(base: str, depth: int, pattern: str) -> list[str]:
  """Sorted paths of the files matching `pattern` exactly `depth` directory levels below `base`.

  One glob (a single prefix listing on GCS) unless `base` itself holds glob metacharacters,
  which globbing cannot escape on every backend; then the tree is walked with listdir.
  """
  if not any(ch in base for ch in '*?['):
    try:
      return storage.glob(base, '/'.join(['*'] * depth + [pattern]))
    except Exception as e:  # pylint: disable=broad-except
      raise _wrap(join(base, *(['*'] * depth), pattern), 'glob', e) from e
  import fnmatch  # pylint: disable=g-import-not-at-top
  dirs = [base]
  for _ in range(depth):
    dirs = [join(d, n) for d in dirs for n in listdir(d) if isdir(join(d, n))]
  return sorted(join(d, n) for d in dirs for n in listdir(d)
                if fnmatch.fnmatchcase(n, pattern) and not isdir(join(d, n)))


def read_bytes(path: str) -> bytes:
  try:
    return storage.read_bytes(path)
  except Exception as e:  # pylint: disable=broad-except
    raise _wrap(path, 'read', e) from e


def read_lines(path: str) -> list[str]:
  """Non-empty lines of a text file, stripped of surrounding whitespace (CRLF tolerant)."""
  data = read_bytes(path)
  try:
    text = data.decode('utf-8')
  except UnicodeDecodeError as e:
    raise DatasetError(f'{path!r} is not UTF-8 text: {e}') from e
  return [line.strip() for line in text.splitlines() if line.strip()]


def write_text(path: str, text: str) -> None:
  """Writes through a temporary name then renames, so readers never see a partial file."""
  tmp = f'{path}.tmp{os.getpid()}'
  storage.write_text(tmp, text)
  storage.rename(tmp, path)


def read_tokens(path: str) -> list[str]:
  """Whitespace-separated tokens of a text file (one name per line lists, read fast)."""
  data = read_bytes(path)
  try:
    return data.decode('utf-8').split()
  except UnicodeDecodeError as e:
    raise DatasetError(f'{path!r} is not UTF-8 text: {e}') from e


# ------------------------------------------------------------------------------------------------
# MATLAB files

_HDF5_SIGNATURE = b'\x89HDF\r\n\x1a\n'


def _is_hdf5(data: bytes) -> bool:
  # MATLAB v7.3 files are HDF5 files with a 512-byte user block; HDF5 looks for its signature at
  # offsets 0, 512, 1024, 2048, ...
  offset = 0
  while offset + 8 <= len(data):
    if data[offset:offset + 8] == _HDF5_SIGNATURE:
      return True
    offset = 512 if offset == 0 else offset * 2
  return False


def load_mat_array(path: str, key: str) -> np.ndarray:
  """Reads variable `key` of a .mat file (v5 via scipy, v7.3/HDF5 via h5py) as a numpy array.

  HDF5-stored MATLAB arrays come back transposed relative to MATLAB (h5py reads row-major), which
  is what the public loaders index (e.g. LS-VID's `['query'][0, :]`); callers handle shape.
  """
  data = read_bytes(path)
  if _is_hdf5(data):
    import h5py  # pylint: disable=g-import-not-at-top
    try:
      with h5py.File(io.BytesIO(data), 'r') as f:
        if key not in f:
          raise DatasetError(f'{path!r} (MATLAB v7.3/HDF5) has no variable {key!r}; '
                             f'it holds {sorted(f.keys())}')
        return np.asarray(f[key][()])
    except DatasetError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise DatasetError(f'{path!r} is not a readable HDF5 .mat file: {e}') from e
  import scipy.io  # pylint: disable=g-import-not-at-top
  try:
    mat = scipy.io.loadmat(io.BytesIO(data))
  except Exception as e:  # pylint: disable=broad-except
    raise DatasetError(f'{path!r} is not a readable .mat file: {type(e).__name__}: {e}') from e
  if key not in mat:
    keys = sorted(k for k in mat if not k.startswith('__'))
    raise DatasetError(f'{path!r} has no variable {key!r}; it holds {keys}')
  return np.asarray(mat[key])


def as_index_vector(arr: np.ndarray, path: str, key: str, upper: int) -> np.ndarray:
  """Validates a 1-based index vector (any 1×K, K×1 or K shape) and returns it 0-based int64."""
  if arr.ndim > 2 or (arr.ndim == 2 and min(arr.shape) != 1 and arr.size):
    raise DatasetError(f'{path!r}: {key!r} has shape {arr.shape}; expected a vector (1×K or K×1)')
  if not np.issubdtype(arr.dtype, np.number):
    raise DatasetError(f'{path!r}: {key!r} has dtype {arr.dtype}; expected integers')
  flat = arr.reshape(-1)
  if flat.size and not np.all(np.equal(np.mod(flat, 1), 0)):
    raise DatasetError(f'{path!r}: {key!r} holds non-integer values; expected 1-based indices')
  idx = flat.astype(np.int64)
  bad = np.flatnonzero((idx < 1) | (idx > upper))
  if bad.size:
    raise DatasetError(
        f'{path!r}: {key!r} entry {int(bad[0]) + 1} is {int(idx[bad[0]])}, outside the valid '
        f'1-based range 1..{upper} ({bad.size} bad entries)')
  _, first, counts = np.unique(idx, return_index=True, return_counts=True)
  if np.any(counts > 1):
    dup = int(idx[np.sort(first[counts > 1])[0]])
    raise DatasetError(f'{path!r}: {key!r} lists index {dup} more than once')
  return idx - 1


# ------------------------------------------------------------------------------------------------
# Index assembly


def relabel(pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Maps pids to 0..N-1 in increasing original-pid order; returns (labels, original_pids)."""
  original, labels = np.unique(np.asarray(pids), return_inverse=True)
  return labels.astype(np.int32), original.astype(np.int64)


def check_protocol(protocol: str, dataset: str) -> str:
  if protocol not in PROTOCOLS:
    raise DatasetError(f'{dataset}: unknown protocol {protocol!r}; expected one of {PROTOCOLS}')
  return protocol


def check_no_split(split_id: int, dataset: str) -> None:
  if split_id not in (0, None):
    raise DatasetError(f'{dataset} has a single fixed split; split_id must be 0, got {split_id}')


def check_split_id(split_id: int, num_splits: int, dataset: str, source: str) -> int:
  if not isinstance(split_id, (int, np.integer)) or not 0 <= split_id < num_splits:
    raise DatasetError(f'{dataset}: split_id {split_id!r} out of range; {source} defines '
                       f'{num_splits} splits (0..{num_splits - 1})')
  return int(split_id)


def protocol_rows(num_test: int, query_rows: Sequence[int], gallery_rows: Sequence[int],
                  protocol: str, official_rows: Sequence[int] | None = None) -> np.ndarray:
  """int64[G]: the rows of the test index that make `protocol`'s gallery, in order.

  Args:
    num_test: tracklets in the test index the protocols draw from.
    query_rows: rows of the test index that are queries (same in every protocol).
    gallery_rows: the torchreid-style gallery (queries and junk excluded as the dataset defines).
    protocol: 'torchreid' -> gallery_rows; 'cas' -> query_rows followed by gallery_rows (the
      AP3D/TCLNet/BiCnet-TKS and GRL evaluators); 'official' -> `official_rows` (default: every
      test row, in order, as MARS's official MATLAB script).
    official_rows: the 'official' gallery when it is not simply the whole test index.
  """
  if protocol == 'torchreid':
    return np.asarray(gallery_rows, np.int64)
  if protocol == 'cas':
    return np.concatenate([np.asarray(query_rows, np.int64), np.asarray(gallery_rows, np.int64)])
  return (np.arange(num_test, dtype=np.int64) if official_rows is None
          else np.asarray(official_rows, np.int64))


def query_in_gallery(query_rows: np.ndarray, rows: np.ndarray, num_test: int) -> np.ndarray:
  """int64[Q]: for each query, the gallery position of its own test row, or -1 when absent."""
  position = np.full(num_test, -1, np.int64)
  # Reverse order so that, should a row repeat, the first position wins.
  position[rows[::-1]] = np.arange(len(rows))[::-1]
  return position[np.asarray(query_rows, np.int64)]


def assemble_protocol(test: TrackletIndex, query_rows: Sequence[int],
                      gallery_rows: Sequence[int], protocol: str,
                      official_rows: Sequence[int] | None = None
                      ) -> tuple[TrackletIndex, TrackletIndex, np.ndarray]:
  """(query, gallery, query_in_gallery) of `protocol` (see `protocol_rows`)."""
  query_rows = np.asarray(query_rows, np.int64)
  rows = protocol_rows(len(test), query_rows, gallery_rows, protocol, official_rows)
  return (test.subset(query_rows), test.subset(rows),
          query_in_gallery(query_rows, rows, len(test)))


def index_from_arrays(frame_paths: Iterable[str], starts, lengths, pids, camids) -> TrackletIndex:
  paths = np.asarray(list(frame_paths) if not isinstance(frame_paths, np.ndarray) else frame_paths,
                     dtype=object)
  return TrackletIndex(paths, np.asarray(starts, np.int64), np.asarray(lengths, np.int32),
                       np.asarray(pids, np.int32), np.asarray(camids, np.int32))


def make_dataset(name: str, train: TrackletIndex, test: TrackletIndex, query_rows, gallery_rows,
                 protocol: str, meta: dict[str, Any], official_rows=None,
                 verify: bool = False) -> Dataset:
  """Assembles the Dataset: the galleries of every protocol over one test index, with
  `protocol`'s as its query / gallery; optionally checks that every frame file exists."""
  query, gallery, qig = assemble_protocol(test, query_rows, gallery_rows, protocol,
                                          official_rows)
  if verify:
    verify_frames(name, [train, test])
  meta = dict(meta)
  meta['query_in_gallery'] = qig
  galleries = {p: protocol_rows(len(test), query_rows, gallery_rows, p, official_rows)
               for p in PROTOCOLS}
  return Dataset(name=name, train=train, query=query, gallery=gallery, protocol=protocol,
                 meta=meta, test=test, query_rows=np.asarray(query_rows, np.int64),
                 gallery_rows=galleries)


def dataset_from_lists(name: str, train, query, gallery, protocol: str, meta: dict[str, Any],
                       verify: bool = False) -> Dataset:
  """A Dataset from per-split `(tracklets, pids, camids)` lists (frame-path lists per tracklet).

  For layouts whose query and gallery are separate lists (Duke, iLIDS-VID, PRID, custom): train
  pids are relabelled (originals in `meta['train_pids']`) and the gallery is used as given by
  the 'official' and 'torchreid' protocols, with the queries prepended by 'cas'.
  """
  tracklets, pids, camids = train
  labels, original = relabel(np.asarray(pids, np.int64))
  train_index = TrackletIndex.from_lists(tracklets, labels, camids)
  query_index = TrackletIndex.from_lists(*query)
  gallery_index = TrackletIndex.from_lists(*gallery)
  test = TrackletIndex.concat(query_index, gallery_index)
  nq = len(query_index)
  gallery_rows = nq + np.arange(len(gallery_index))
  return make_dataset(name, train_index, test, np.arange(nq), gallery_rows, protocol,
                      dict(meta, train_pids=original), official_rows=gallery_rows,
                      verify=verify)


def verify_frames(dataset: str, indices: Sequence[TrackletIndex],
                  limit: int = MAX_MISSING_LISTED) -> None:
  """Raises DatasetError listing (up to `limit`) frame files that do not exist.

  Rather than one `exists` call per frame (1.2 M round trips on MARS in GCS), each directory is
  listed once and the frames are looked up in the listing; the answer is the same.
  """
  paths = np.unique(np.concatenate([np.asarray(ix.frame_paths, dtype=object) for ix in indices])
                    .astype(str))
  by_dir: dict[str, list[str]] = {}
  for p in paths:
    d, base = posixpath.split(p)
    by_dir.setdefault(d, []).append(base)
  missing = []
  for d, bases in sorted(by_dir.items()):
    if not isdir(d):
      missing.extend(join(d, b) for b in bases)
      continue
    present = set(listdir(d))
    missing.extend(join(d, b) for b in bases if b not in present)
  if missing:
    listed = '\n  '.join(missing[:limit])
    more = f'\n  ... and {len(missing) - limit} more' if len(missing) > limit else ''
    raise DatasetError(f'{dataset}: {len(missing)} of {len(paths)} frame files are missing:\n'
                       f'  {listed}{more}')
