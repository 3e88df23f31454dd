"""Writing a pack: a reader's Dataset -> ArrayRecord shards + TFDS metadata (format.py).

Resumable and atomic: `pack_plan.json` is written first and fixes the shards; each shard is
written to a local temporary file, copied to `<shard>.tmp<pid>` through the storage layer
(grl_jax/io.py: local and gs:// alike) and renamed into place, so a shard file under its final
name is always whole and a re-run skips it. `dataset_info.json`, the mark of a complete pack, is
written last; until then readers refuse the directory (format.read_complete).
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Optional, Sequence

from absl import logging
import numpy as np

from data_pipeline.index import Dataset, TrackletIndex
from data_pipeline.pack import format as fmt
from grl_jax import io
from grl_jax.errors import DatasetError

# Tracklets per shard: ~250 KB per MARS tracklet (61 frames of ~4 KB) -> ~130 MB shards.
DEFAULT_TRACKLETS_PER_SHARD = 512
READ_THREADS = 16  # frame reads in flight (GCS latency, not CPU, bounds a remote read)


def _jsonable(value: Any) -> Any:
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (np.floating,)):
    return float(value)
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  return str(value)  # e.g. a path object: kept readable


def _split_rows(dataset: Dataset) -> tuple[dict[str, tuple[TrackletIndex, np.ndarray]],
                                           np.ndarray, np.ndarray]:
  """{split: (index, reader rows)} and, per test row, its split code (1 query, 2 gallery) and
  record; train rows are records one to one."""
  test, query_rows, _ = dataset.test_split()
  is_query = np.zeros(len(test), bool)
  is_query[query_rows] = True
  gallery_rows = np.flatnonzero(~is_query).astype(np.int64)
  code = np.where(is_query, 1, 2).astype(np.int64)
  record = np.zeros(len(test), np.int64)
  record[query_rows] = np.arange(len(query_rows))
  record[gallery_rows] = np.arange(len(gallery_rows))
  splits = {'train': (dataset.train, np.arange(len(dataset.train), dtype=np.int64)),
            'query': (test.subset(query_rows), np.asarray(query_rows, np.int64)),
            'gallery': (test.subset(gallery_rows), gallery_rows)}
  return splits, code, record


def _name(root: str, p: str) -> str:
  """A frame's name in the pack: relative to the dataset root when under it."""
  prefix = root.rstrip('/') + '/'
  return p[len(prefix):] if p.startswith(prefix) else p


def metadata(dataset: Dataset, root: str, split_id: int, protocols: Sequence[str]) -> dict:
  """metadata.json: what evaluation needs to compose query and galleries as the reader did."""
  splits, code, record = _split_rows(dataset)
  _, query_rows, galleries = dataset.test_split()
  missing = [p for p in protocols if p not in galleries]
  if missing:
    raise DatasetError(f'{dataset.name}: protocols {missing} are not available; the reader '
                       f'composes {sorted(galleries)}')
  meta = {k: _jsonable(v) for k, v in dataset.meta.items() if k != 'query_in_gallery'}
  return {
      'format': fmt.FORMAT_NAME, 'dataset': dataset.name, 'split_id': int(split_id),
      'root': root, 'protocols': list(protocols),
      'splits': {s: {'pids': ix.pids.tolist(), 'camids': ix.camids.tolist(),
                     'lengths': ix.lengths.tolist()} for s, (ix, _) in splits.items()},
      'test': {'split': code.tolist(), 'record': record.tolist()},
      'query_rows': np.asarray(query_rows).tolist(),
      'gallery_rows': {p: np.asarray(galleries[p]).tolist() for p in protocols},
      'reader_meta': meta,
      # Which reader_meta values were numpy arrays (given back as arrays, with their dtype).
      'reader_meta_arrays': {k: str(v.dtype) for k, v in dataset.meta.items()
                             if isinstance(v, np.ndarray) and k != 'query_in_gallery'},
  }


def _read_frame(path: str) -> bytes:
  try:
    return io.read_bytes(path)
  except Exception as e:  # pylint: disable=broad-except  (missing file, permissions)
    # Kept as an empty frame: the pipeline replaces it by the nearest valid frame of its
    # tracklet, as it does for the missing file in a loose run.
    logging.warning('pack: cannot read frame %s (%s: %s); stored empty', path,
                    type(e).__name__, str(e)[:200])
    return b''


def _locate(data: bytes, examples: list[bytes]) -> list[list[int]]:
  """[logical offset, length] of each record in the shard bytes `data` (format.py)."""
  logical = fmt.logical_bytes(data)
  out, pos = [], 0
  for ex in examples:
    k = logical.find(ex, pos)
    if k < 0:
      raise AssertionError('pack: a record is not stored verbatim in its shard; the ArrayRecord '
                           f'writer options {fmt.WRITER_OPTIONS!r} no longer do what format.py '
                           'says')
    out.append([k, len(ex)])
    pos = k + len(ex)
  return out


def _write_shard(target: str, examples: list[bytes]) -> tuple[int, list]:
  """Writes one ArrayRecord shard at `target` (any storage) atomically, its offsets file
  first; returns (bytes, [logical offset, length] per record)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  tmpdir = tempfile.mkdtemp(prefix='grl_pack_')
  try:
    local = os.path.join(tmpdir, 'shard')
    writer = array_record_module.ArrayRecordWriter(local, fmt.WRITER_OPTIONS)
    for ex in examples:
      writer.write(ex)
    writer.close()
    with open(local, 'rb') as f:  # reading our own local temporary file
      data = f.read()
  finally:
    shutil.rmtree(tmpdir, ignore_errors=True)
  offsets = _locate(data, examples)
  io.write_json(target + fmt.OFFSETS_SUFFIX, offsets, indent=None)
  partial = f'{target}.tmp{os.getpid()}'
  io.write_bytes(partial, data)
  io.rename(partial, target)
  return len(data), offsets


def pack(dataset: Dataset, output: str, *, root: str, split_id: int = 0,
         protocols: Optional[Sequence[str]] = None,
         tracklets_per_shard: int = DEFAULT_TRACKLETS_PER_SHARD,
         on_shard: Optional[Callable[[str], None]] = None) -> dict:
  """Writes `dataset` (read from `root`) as a pack at `output`; returns a summary.

  Args:
    dataset: what the reader returned (data_pipeline/datasets/).
    output: the pack directory (local or gs://); re-running on a half-written one finishes it.
    root: the dataset root (frame names are stored relative to it).
    split_id: the reader's split (iLIDS-VID / PRID), checked when the pack is read.
    protocols: the galleries to keep (default: every one the reader composes).
    tracklets_per_shard: records per ArrayRecord shard.
    on_shard: called with each shard's path after it is written (tests interrupt here).

  Raises:
    DatasetError: `output` holds a complete pack already, or a partial pack of other input.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if tracklets_per_shard < 1:
    raise DatasetError(f'--tracklets_per_shard={tracklets_per_shard}: expected >= 1')
  output = io.normalize(output)
  protocols = list(protocols or dataset.protocols)
  meta = metadata(dataset, root, split_id, protocols)
  splits, _, _ = _split_rows(dataset)
  plan = {'format': fmt.FORMAT_NAME, 'version': fmt.FORMAT_VERSION, 'dataset': dataset.name,
          'split_id': int(split_id), 'root': root, 'tracklets_per_shard': int(tracklets_per_shard),
          'tracklets': {s: len(ix) for s, (ix, _) in splits.items()},
          'frames': {s: ix.num_frames for s, (ix, _) in splits.items()}}
  if io.exists(io.join(output, fmt.INFO_FILE)):
    raise DatasetError(f'{output!r} already holds a complete pack ({fmt.INFO_FILE}); remove it '
                       'or choose another --output')
  plan_path = io.join(output, fmt.PLAN_FILE)
  if io.exists(plan_path):
    old = io.read_json(plan_path)
    if old != plan:
      raise DatasetError(f'{output!r} holds a half-written pack of other input ({old}); remove '
                         f'it or choose another --output (this run packs {plan})')
  else:
    io.makedirs(output)
    io.write_json(plan_path, plan)
  features = fmt.features()
  meta['records'] = {}  # split -> [shard, logical offset, length] per record
  written = skipped = 0
  split_infos = []
  with concurrent.futures.ThreadPoolExecutor(READ_THREADS) as pool:
    for split, (index, rows) in splits.items():
      n = len(index)
      num_shards = -(-n // tracklets_per_shard)
      lengths, sizes, locations = [], [], []
      for shard in range(num_shards):
        target = io.join(output, fmt.shard_name(dataset.name, split, shard, num_shards))
        lo, hi = shard * tracklets_per_shard, min(n, (shard + 1) * tracklets_per_shard)
        lengths.append(hi - lo)
        if io.exists(target):  # finished by an earlier run (shards are renamed in whole)
          sizes.append(int(io.path(target).stat().length))
          locations.extend([shard, *o] for o in io.read_json(target + fmt.OFFSETS_SUFFIX))
          skipped += 1
          continue
        examples = []
        for i in range(lo, hi):
          paths = [str(p) for p in index.frames(i)]
          data = list(pool.map(_read_frame, paths))
          examples.append(features.serialize_example({
              'frames': data, 'frame_names': [_name(root, p) for p in paths],
              'pid': int(index.pids[i]), 'camid': int(index.camids[i]),
              'tracklet': f'{split}/{int(rows[i])}', 'row': int(rows[i])}))
        size, offsets = _write_shard(target, examples)
        sizes.append(size)
        locations.extend([shard, *o] for o in offsets)
        written += 1
        if on_shard is not None:
          on_shard(target)
      template = tfds.core.ShardedFileTemplate(
          data_dir=output, template=fmt.TEMPLATE, dataset_name=fmt.tfds_name(dataset.name),
          split=split, filetype_suffix='array_record')
      meta['records'][split] = locations
      split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=lengths,
                                             num_bytes=int(sum(sizes)),
                                             filename_template=template))
  info = tfds.core.DatasetInfo(
      builder=tfds.core.DatasetIdentity(name=fmt.tfds_name(dataset.name),
                                        version=tfds.core.Version(fmt.FORMAT_VERSION),
                                        data_dir=output, module_name='data_pipeline.pack'),
      features=features,
      description=(f'{dataset.name} video re-ID tracklets packed by grl_jax '
                   '(python -m data_pipeline.pack): one record per tracklet, original frame '
                   'bytes; protocols in metadata.json'))
  info.set_file_format('array_record')
  info.set_splits(tfds.core.SplitDict(split_infos))
  io.write_text(io.join(output, fmt.FEATURES_FILE), json.dumps(features.to_json(), indent=1))
  io.write_text(io.join(output, fmt.META_FILE), json.dumps(meta))
  # Last: the mark of a complete pack (written whole, then renamed into place).
  partial = io.join(output, f'{fmt.INFO_FILE}.tmp{os.getpid()}')
  io.write_text(partial, info.as_json)
  io.rename(partial, io.join(output, fmt.INFO_FILE))
  return {'output': output, 'dataset': dataset.name, 'shards_written': written,
          'shards_skipped': skipped, 'tracklets': plan['tracklets'], 'frames': plan['frames'],
          'bytes': {s.name: int(s.num_bytes) for s in split_infos}}

