"""What a packed dataset directory holds, and the check that it is complete and the one asked.

A pack is a TFDS dataset directory (`tfds.builder_from_directory(OUT)` loads it):

    OUT/reid_<dataset>-<split>.array_record-<i>-of-<n>   ArrayRecord shards, one record per
                                                        tracklet (`features()` below)
    OUT/<shard>.offsets.json                            where each record's bytes lie in it
    OUT/features.json                                   TFDS feature spec
    OUT/metadata.json                                   the index, protocols and record places
    OUT/pack_plan.json                                  written first: what is being packed
    OUT/dataset_info.json                               written LAST: the pack is complete

Splits `train`, `query`, `gallery`: train holds the training tracklets in reader order; query the
test tracklets that are queries (in query order); gallery every other test tracklet, in test
order. `metadata.json` maps each row of the reader's test index to its (split, record) and keeps
the gallery rows of every protocol, so a packed run composes query and galleries exactly as the
loose run (data_pipeline/datasets/common.py `make_dataset`).
"""
from __future__ import annotations

from typing import Any

from grl_jax import io
from grl_jax import schema
from grl_jax.errors import DatasetError

# Bumped when the layout of records or metadata changes; a pack of another version is refused.
FORMAT_VERSION = '1.0.0'
FORMAT_NAME = 'grl_jax.pack'
SPLITS = schema.SPLITS  # one split of records each: train, query, gallery
INFO_FILE = 'dataset_info.json'
META_FILE = 'metadata.json'
PLAN_FILE = 'pack_plan.json'
FEATURES_FILE = 'features.json'
TEMPLATE = '{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}'
# One record per chunk (array_record's advice for random access), stored uncompressed (JPEG
# bytes do not compress): a record's bytes then lie in the file as written, interrupted only by
# the 24-byte riegeli block header at every 64 KiB, so a reader fetches one record with one
# byte-range read through the storage layer (`read_logical`), on local disk or gs:// alike.
WRITER_OPTIONS = 'group_size:1,uncompressed'
BLOCK_SIZE = 1 << 16
BLOCK_HEADER = 24
OFFSETS_SUFFIX = '.offsets.json'


def logical_bytes(data: bytes) -> bytes:
  """A shard's bytes without its block headers (where records are contiguous)."""
  return b''.join(data[i + BLOCK_HEADER:i + BLOCK_SIZE] for i in range(0, len(data), BLOCK_SIZE))


def physical(offset: int) -> int:
  """The file position of logical byte `offset`."""
  q, r = divmod(offset, BLOCK_SIZE - BLOCK_HEADER)
  return q * BLOCK_SIZE + BLOCK_HEADER + r


def read_logical(f, offset: int, length: int) -> bytes:
  """`length` logical bytes from logical `offset` of the open shard `f` (one seek + read)."""
  start = physical(offset)
  f.seek(start)
  return strip_headers(f.read(physical(offset + length - 1) + 1 - start), start)


def strip_headers(raw: bytes, start: int) -> bytes:
  """The logical bytes of `raw`, read from file position `start` (block headers removed)."""
  out, pos = [], start
  while pos < start + len(raw):
    block_end = (pos // BLOCK_SIZE + 1) * BLOCK_SIZE
    if pos % BLOCK_SIZE < BLOCK_HEADER:
      pos = pos - pos % BLOCK_SIZE + BLOCK_HEADER
      continue
    out.append(raw[pos - start:block_end - start])
    pos = block_end
  return b''.join(out)


def tfds_name(dataset: str) -> str:
  """The TFDS dataset name of a pack of reader `dataset` (snake_case, as TFDS requires)."""
  return f'reid_{dataset}'


def shard_name(dataset: str, split: str, shard: int, num_shards: int) -> str:
  """File name of one shard, as TFDS's template `TEMPLATE` spells it."""
  return f'{tfds_name(dataset)}-{split}.array_record-{shard:05d}-of-{num_shards:05d}'


def features():
  """The TFDS FeaturesDict of one record (one tracklet):

  frames: the frames' original encoded bytes (JPEG/PNG/BMP, never re-encoded), temporal order;
  frame_names: each frame's path relative to the dataset root (or as the reader gave it);
  pid, camid: as in the reader's index (train pids relabelled); tracklet: the tracklet's id;
  row: its row in the reader's split (train) or test index (query, gallery).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  f = tfds.features
  return f.FeaturesDict({
      'frames': f.Sequence(f.Tensor(shape=(), dtype=np.object_)),
      'frame_names': f.Sequence(f.Text()),
      'pid': f.Scalar(dtype=np.int32),
      'camid': f.Scalar(dtype=np.int32),
      'tracklet': f.Text(),
      'row': f.Scalar(dtype=np.int64),
  })


def describe(path: str) -> str:
  return f'packed dataset {path!r}'


def read_complete(path: str) -> tuple[dict, dict]:
  """(dataset_info, metadata) of a complete pack at `path`.

  Raises:
    DatasetError: the path is missing, is a half-written pack (no dataset_info.json yet) or
      holds something else; one line naming the path and what was expected.
  """
  path = io.normalize(path)
  info_path = io.join(path, INFO_FILE)
  if not io.exists(info_path):
    if not io.isdir(path):
      raise DatasetError(f'{describe(path)} does not exist; expected a directory written by '
                         '`python -m data_pipeline.pack`')
    if io.exists(io.join(path, PLAN_FILE)):
      raise DatasetError(f'{describe(path)} is half-written (no {INFO_FILE} yet): packing '
                         'stopped before the end; re-run the same `python -m data_pipeline.pack` '
                         'command to finish it')
    raise DatasetError(f'{path!r} is not a packed dataset (no {INFO_FILE}); expected a '
                       'directory written by `python -m data_pipeline.pack`')
  try:
    info = io.read_json(info_path)
    meta = io.read_json(io.join(path, META_FILE))
  except Exception as e:  # pylint: disable=broad-except  (JSON, permissions, gs:// errors)
    raise DatasetError(f'{describe(path)}: cannot read {INFO_FILE} / {META_FILE}: '
                       f'{type(e).__name__}: {e}') from e
  if meta.get('format') != FORMAT_NAME:
    raise DatasetError(f'{path!r} is a TFDS directory but not a grl_jax pack '
                       f'({META_FILE} has no format={FORMAT_NAME!r})')
  return info, meta


def check(path: str, *, dataset: str, split_id: int = 0) -> dict[str, Any]:
  """The metadata of the pack at `path`, after checking it is complete and packs `dataset`
  (split `split_id`) in format FORMAT_VERSION.

  Raises:
    DatasetError: one line naming the path and what was expected.
  """
  info, meta = read_complete(path)
  found = (meta.get('dataset'), int(meta.get('split_id', 0)), info.get('version'))
  wanted = (dataset, int(split_id), FORMAT_VERSION)
  if found != wanted:
    raise DatasetError(
        f'{describe(io.normalize(path))} holds dataset {found[0]!r} split {found[1]} in pack '
        f'format {found[2]}; expected dataset {wanted[0]!r} split {wanted[1]} in format '
        f'{wanted[2]} (config.data.dataset / split_id; re-pack with `python -m '
        'data_pipeline.pack`)')
  return meta


def shard_paths(path: str, dataset: str, info: dict, split: str) -> tuple[list[str], list[int]]:
  """(shard paths, records per shard) of `split` of the pack of `dataset`, from its info."""
  for s in info.get('splits', []):
    if s['name'] == split:
      lengths = [int(n) for n in s.get('shardLengths', [])]
      return ([io.join(path, shard_name(dataset, split, i, len(lengths)))
               for i in range(len(lengths))], lengths)
  return [], []
