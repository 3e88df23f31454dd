"""Bring your own dataset: one CSV file, one row per frame.

`root` is either the CSV file itself or a directory holding `dataset.csv`. Relative frame paths
are resolved against the CSV's directory. Example:

```
path,pid,camid,tracklet,split
train/0007/c0_t0/000001.jpg,7,0,7_c0_t0,train
train/0007/c0_t0/000002.jpg,7,0,7_c0_t0,train
train/0007/c1_t0/000001.jpg,7,1,7_c1_t0,train
test/0042/c0/000001.jpg,42,0,q42,query
test/0042/c1/000001.jpg,42,1,g42_c1,gallery
/abs/or/gs://bucket/any/frame.jpg,42,2,g42_c2,gallery
```

Columns (header row required, any column order; an unknown column is an error, to catch typos):
- `path`: frame file, relative to the CSV's directory, absolute, or a gs:// URL.
- `pid`: integer person id. Train ids are relabelled 0..N-1 (originals in
  `meta['train_pids']`); query/gallery ids are kept. In query/gallery, -1 marks junk (ignored
  by the evaluator) and 0 is an ordinary id, so a 0 with no query acts as a distractor.
- `camid`: integer camera id >= 0, used as given (0-based). Re-ID evaluation drops gallery
  entries with the query's pid AND camid, so give different cameras different camids.
- `tracklet`: any string naming the tracklet; rows with the same (split, tracklet) form one
  tracklet (they need not be adjacent). pid and camid must be the same on all its rows.
- `split`: `train`, `query` or `gallery`. A query may also appear in the gallery (as its own
  gallery tracklet) or not; both are fine.
- `frame` (optional): integer frame number; frames of a tracklet are sorted by it (it must not
  repeat within a tracklet). Without it, frames keep their row order.

Tracklets keep the order in which they first appear. query and gallery must be non-empty; train
may be empty (evaluation only). Protocols: 'torchreid' and 'official' use the gallery rows as
given; 'cas' puts the queries in front of them. Errors name the CSV line.
"""
from __future__ import annotations

import csv
import io

from data_pipeline.datasets import common
from data_pipeline.index import Dataset
from grl_jax import io as storage
from grl_jax.errors import DatasetError
from grl_jax.schema import EVAL_SPLITS, SPLITS

NAME = 'custom'
# What the root must contain and where it comes from (start-up validation prints it).
ROOT_HELP = ('custom: a CSV file (or a directory holding dataset.csv) with columns '
             'path,pid,camid,tracklet,split[,frame]; see data_pipeline/datasets/custom.py')
DEFAULT_FILE = 'dataset.csv'
REQUIRED = ('path', 'pid', 'camid', 'tracklet', 'split')
OPTIONAL = ('frame',)


def _int(value: str, column: str, where: str, minimum: int | None = None) -> int:
  try:
    v = int(value.strip())
  except ValueError:
    raise DatasetError(f'{where}: {column} {value!r} is not an integer') from None
  if minimum is not None and v < minimum:
    raise DatasetError(f'{where}: {column} {v} must be >= {minimum}')
  return v


def _resolve(base: str, path: str) -> str:
  if storage.is_remote(path) or path.startswith('/'):
    return path
  return common.join(base, path)


def read_csv(csv_path: str) -> dict[str, tuple[list[list[str]], list[int], list[int]]]:
  """{split: (frames per tracklet, pids, camids)} from a CSV in the format above."""
  text = common.read_bytes(csv_path).decode('utf-8-sig', errors='strict')
  base = csv_path.rsplit('/', 1)[0] if '/' in csv_path else '.'
  reader = csv.reader(io.StringIO(text))
  try:
    header = [h.strip() for h in next(reader)]
  except StopIteration:
    raise DatasetError(f'{csv_path!r} is empty; expected a header {",".join(REQUIRED)}') from None
  unknown = [h for h in header if h not in REQUIRED + OPTIONAL]
  missing = [h for h in REQUIRED if h not in header]
  if unknown or missing or len(set(header)) != len(header):
    raise DatasetError(f'{csv_path!r} line 1: header {header} must hold the columns '
                       f'{list(REQUIRED)} (+ optional {list(OPTIONAL)}), each once; '
                       f'missing {missing}, unknown {unknown}')
  col = {h: i for i, h in enumerate(header)}
  has_frame = 'frame' in col
  # (split, tracklet) -> [first line, pid, camid, [(order key, path)]]
  tracks: dict[tuple[str, str], list] = {}
  for row in reader:
    where = f'{csv_path!r} line {reader.line_num}'
    if not row or all(not c.strip() for c in row):
      continue
    if len(row) != len(header):
      raise DatasetError(f'{where}: {len(row)} fields, expected {len(header)} ({header})')
    split = row[col['split']].strip()
    if split not in SPLITS:
      raise DatasetError(f'{where}: split {split!r} must be one of {SPLITS}')
    path, tracklet = row[col['path']].strip(), row[col['tracklet']].strip()
    if not path or not tracklet:
      raise DatasetError(f'{where}: empty path or tracklet')
    pid = _int(row[col['pid']], 'pid', where, 0 if split == 'train' else -1)
    camid = _int(row[col['camid']], 'camid', where, 0)
    order = _int(row[col['frame']], 'frame', where) if has_frame else reader.line_num
    entry = tracks.setdefault((split, tracklet), [reader.line_num, pid, camid, []])
    if (entry[1], entry[2]) != (pid, camid):
      raise DatasetError(f'{where}: tracklet {tracklet!r} ({split}) has pid {pid}, camid '
                         f'{camid}, but line {entry[0]} gave it pid {entry[1]}, camid {entry[2]}')
    if has_frame and any(o == order for o, _, _ in entry[3]):
      first = next(ln for o, _, ln in entry[3] if o == order)
      raise DatasetError(f'{where}: tracklet {tracklet!r} ({split}) repeats frame {order} '
                         f'(also on line {first})')
    entry[3].append((order, _resolve(base, path), reader.line_num))
  out = {s: ([], [], []) for s in SPLITS}
  for (split, _), (_, pid, camid, frames) in tracks.items():
    frames.sort(key=lambda f: f[0])
    out[split][0].append([p for _, p, _ in frames])
    out[split][1].append(pid)
    out[split][2].append(camid)
  return out


def load(root: str, protocol: str = 'torchreid', split_id: int = 0,
         verify: bool = False) -> Dataset:
  """Reads a custom CSV dataset (see the module docstring for the format)."""
  common.check_protocol(protocol, NAME)
  common.check_no_split(split_id, NAME)
  root = common.normalize_root(root)
  csv_path = common.join(root, DEFAULT_FILE) if common.isdir(root) else root
  common.require_file(csv_path, NAME, f'a CSV file or a directory holding {DEFAULT_FILE}')
  splits = read_csv(csv_path)
  for split in EVAL_SPLITS:
    if not splits[split][0]:
      raise DatasetError(f'{csv_path!r} has no {split!r} rows; query and gallery are required')
  return common.dataset_from_lists(NAME, splits['train'], splits['query'], splits['gallery'],
                                  protocol, {'root': csv_path}, verify=verify)
