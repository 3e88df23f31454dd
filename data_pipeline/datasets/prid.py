"""PRID-2011 reader (Hirzer et al. SCIA'11), multi-shot sequences, 10 random 50/50 splits.

```
<root>/prid_2011/multi_shot/cam_a/person_NNNN/NNNN.png    (or <root> = the prid_2011 directory)
<root>/prid_2011/multi_shot/cam_b/person_NNNN/NNNN.png
<root>/splits_prid2011.json                               written on first use (see below)
```
Only persons 1..200 are the same people in both cameras (cam_a has 385 sequences and cam_b 749;
numbers above 200 are different people), so only those are used. The ~21-frame minimum length
filter some papers apply is NOT applied.

Splits: `splits_prid2011.json` is a JSON list of {"train": [person numbers], "test": [...]}, the
format torchreid reads, so torchreid's own file can be dropped in. When absent it is generated
once: 10 splits, each a permutation of the shared person numbers by
`numpy.random.default_rng(seed=0)` (one generator drawn 10 times), the first half (rounded down)
TEST and the rest train. It is written to the dataset root or, when the root is not writable
(e.g. a read-only bucket), to `$GRL_JAX_CACHE/prid2011/<hash of root>/splits_prid2011.json`
(default cache `~/.cache/grl_jax`); later loads read it back from either place, so splits stay
stable. `meta['splits_file']` says which file was used.

Train = both cameras of the training people (pids relabelled); query = cam_a and gallery = cam_b
of the test people ('official' = 'torchreid'; 'cas' puts the queries in front).
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from data_pipeline.datasets import common
from data_pipeline.index import Dataset
from grl_jax import io as storage
from grl_jax.errors import DatasetError

NAME = 'prid'
# What the root must contain and where it comes from (start-up validation prints it).
ROOT_HELP = (
    'PRID-2011: <root>/prid_2011/multi_shot/cam_{a,b}/person_NNNN/*.png (untar '
    'prid_2011.zip from the TU Graz PRID 2011 page)')
LAYOUT = 'prid_2011/multi_shot/cam_{a,b}/person_NNNN/*.png'
SPLITS_FILE = 'splits_prid2011.json'
NUM_SHARED = 200  # persons 1..200 appear in both cameras
NUM_SPLITS = 10
SEED = 0
CAMERAS = ('cam_a', 'cam_b')


def make_splits(person_ids, num_splits: int = NUM_SPLITS, seed: int = SEED) -> list[dict]:
  """The seeded 50/50 splits: first half of each permutation = test."""
  ids = np.sort(np.asarray(person_ids, np.int64))
  rng = np.random.default_rng(seed)
  half = len(ids) // 2
  splits = []
  for _ in range(num_splits):
    perm = rng.permutation(ids)
    splits.append({'train': sorted(int(i) for i in perm[half:]),
                   'test': sorted(int(i) for i in perm[:half])})
  return splits


def cache_dir() -> str:
  return os.path.join(os.path.expanduser(os.environ.get('GRL_JAX_CACHE', '~/.cache/grl_jax')),
                      'prid2011')


def _cache_path(root: str) -> str:
  digest = hashlib.sha1(root.encode('utf-8')).hexdigest()[:12]
  return os.path.join(cache_dir(), digest, SPLITS_FILE)


def _load_or_create_splits(root: str, person_ids: list[int]) -> tuple[list[dict], str]:
  candidates = [common.join(root, SPLITS_FILE), _cache_path(root)]
  for path in candidates:
    if common.exists(path):
      try:
        splits = json.loads(common.read_bytes(path).decode('utf-8'))
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f'{path!r} is not valid JSON ({e}); delete it to regenerate') from e
      return splits, path
  splits = make_splits(person_ids)
  text = json.dumps(splits)
  for path in candidates:
    try:
      if not storage.is_remote(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
      common.write_text(path, text)
      return splits, path
    except Exception:  # pylint: disable=broad-except  (read-only root: fall back to the cache)
      continue
  raise DatasetError(f'{NAME}: could not write {SPLITS_FILE} to {candidates}')


def _check_splits(splits, path: str, split_id: int, available: set[int]) -> dict:
  if not isinstance(splits, list) or not all(
      isinstance(s, dict) and isinstance(s.get('train'), list) and isinstance(s.get('test'), list)
      for s in splits):
    raise DatasetError(f'{path!r}: expected a JSON list of {{"train": [...], "test": [...]}}')
  split_id = common.check_split_id(split_id, len(splits), NAME, path)
  split = splits[split_id]
  for part in ('train', 'test'):
    ids = split[part]
    # An empty train list is an evaluation-only split; the test list must name people.
    if (not ids and part == 'test') or not all(isinstance(i, int) for i in ids):
      raise DatasetError(f'{path!r}: split {split_id} {part!r} must be a '
                         f'{"non-empty " if part == "test" else ""}list of person numbers')
    missing = sorted(set(ids) - available)
    if missing:
      raise DatasetError(f'{path!r}: split {split_id} {part!r} names persons {missing[:5]} that '
                         f'are not in both cameras (1..{NUM_SHARED}) under the dataset root')
  if set(split['train']) & set(split['test']):
    raise DatasetError(f'{path!r}: split {split_id} has persons in both train and test')
  return split


def _read_camera(cam_dir: str) -> dict[int, list[str]]:
  """{person number: ordered frame paths} for persons 1..NUM_SHARED of one camera."""
  frames: dict[int, list[str]] = {}
  for p in common.list_files(cam_dir, 1, '*.png'):
    person = p.rsplit('/', 2)[-2]
    if not person.startswith('person_'):
      continue  # not a sequence directory
    digits = person[len('person_'):]
    if not digits.isdigit():
      raise DatasetError(f'{NAME}: directory of {p!r} is not person_NNNN')
    if int(digits) <= NUM_SHARED:
      frames.setdefault(int(digits), []).append(p)
  for paths in frames.values():
    paths.sort()
  return frames


def load(root: str, protocol: str = 'torchreid', split_id: int = 0,
         verify: bool = False) -> Dataset:
  """Reads PRID-2011 split `split_id` (0..9) under `root` (see the module docstring)."""
  root = common.open_root(root, NAME, LAYOUT, protocol)
  base = common.join(root, 'prid_2011', 'multi_shot')
  if not common.isdir(base) and common.isdir(common.join(root, 'multi_shot')):
    base = common.join(root, 'multi_shot')
  common.require_dir(base, NAME, LAYOUT)
  frames = []
  for cam in CAMERAS:
    cam_dir = common.join(base, cam)
    common.require_dir(cam_dir, NAME, LAYOUT)
    frames.append(_read_camera(cam_dir))
  shared = sorted(set(frames[0]) & set(frames[1]))
  if len(shared) < 2:
    raise DatasetError(f'{NAME}: found {len(shared)} persons (numbers 1..{NUM_SHARED}) with '
                       f'frames in both {base!r}/cam_a and cam_b; expected up to {NUM_SHARED}')
  splits, splits_path = _load_or_create_splits(root, shared)
  split = _check_splits(splits, splits_path, split_id, set(shared))

  train_lists, train_pids, train_cams = [], [], []
  for pid in sorted(split['train']):
    for c in range(len(CAMERAS)):
      train_lists.append(frames[c][pid])
      train_pids.append(pid)
      train_cams.append(c)
  test_ids = sorted(split['test'])
  query = ([frames[0][p] for p in test_ids], test_ids, [0] * len(test_ids))
  gallery = ([frames[1][p] for p in test_ids], test_ids, [1] * len(test_ids))
  meta = {'root': root, 'split_id': int(split_id), 'splits_file': splits_path}
  return common.dataset_from_lists(NAME, (train_lists, train_pids, train_cams), query, gallery,
                                   protocol, meta, verify=verify)
