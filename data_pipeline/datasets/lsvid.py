"""LS-VID reader (Li et al. ICCV'19): 3,772 ids, 14,943 tracklets, 15 cameras.

```
<root>/                                  (or <root>/LS-VID/, found automatically)
  list_sequence/list_seq_train.txt       lines '<path prefix> <pid>', e.g.
  list_sequence/list_seq_test.txt          'tracklet_train/<dir>/<name prefix> 17'
  test/data/info_test.mat                MATLAB v7.3 (HDF5): 'query' = 1-based rows of
                                         list_seq_test.txt (read with h5py)
  tracklet_{train,val,test}/...          frames '<a>_<b>_<camera>_<frame>.jpg'
```
A tracklet's frames are the files of `<root>/<path prefix>*`, sorted by name (the rule of the
BiCnet-TKS/TCLNet loaders); each parent directory is listed once. The camera is the third
'_'-separated field of the frame names (1-based in the names, 0-based here) and must be the same
for all frames of a tracklet.

Protocols (queries the same in all): 'official' = the whole test list in file order (the gallery
contains the queries); 'torchreid' = test rows that are not queries; 'cas' = queries in front of
the torchreid gallery (BiCnet-TKS: "gallery set must contain query set"). No junk ids. An empty
train list gives an evaluation-only dataset; the test list must name tracklets.
"""
from __future__ import annotations

import bisect
import posixpath

import numpy as np

from data_pipeline.datasets import common
from data_pipeline.index import Dataset, TrackletIndex
from grl_jax.errors import DatasetError

NAME = 'lsvid'
# What the root must contain and where it comes from (start-up validation prints it).
ROOT_HELP = (
    'LS-VID: <root>/list_sequence/, <root>/tracklet_train/, <root>/tracklet_val/, '
    '<root>/tracklet_test/ and <root>/test/data/info_test.mat (from the LS-VID release)')
LAYOUT = ('LS-VID/{list_sequence/list_seq_train.txt, list_sequence/list_seq_test.txt, '
          'test/data/info_test.mat, tracklet_*/...}')
TRAIN_LIST = 'list_sequence/list_seq_train.txt'
TEST_LIST = 'list_sequence/list_seq_test.txt'
QUERY_FILE = 'test/data/info_test.mat'


class _Lister:
  """Caches sorted directory listings so each parent directory is listed once."""

  def __init__(self):
    self._cache: dict[str, list[str]] = {}

  def matching(self, directory: str, prefix: str) -> list[str]:
    if directory not in self._cache:
      self._cache[directory] = common.listdir(directory) if common.isdir(directory) else []
    names = self._cache[directory]
    lo = bisect.bisect_left(names, prefix)
    hi = bisect.bisect_left(names, prefix + '\U0010ffff')
    return names[lo:hi]


def _read_list(root: str, list_path: str, lister: _Lister, allow_empty: bool = False
               ) -> tuple[list[list[str]], list[int], list[int]]:
  """(frames per tracklet, pid, 0-based camid) of one list file, in file order."""
  tracklets, pids, camids = [], [], []
  for line_no, line in enumerate(common.read_lines(list_path), 1):
    parts = line.rsplit(None, 1)
    if len(parts) != 2 or not parts[1].lstrip('-').isdigit():
      raise DatasetError(f'{list_path!r} line {line_no}: {line!r} is not '
                         "'<tracklet path prefix> <pid>'")
    rel, pid = parts[0], int(parts[1])
    directory, prefix = posixpath.split(common.join(root, rel))
    names = lister.matching(directory, prefix)
    if not names:
      raise DatasetError(f'{list_path!r} line {line_no}: no frames match '
                         f'{common.join(directory, prefix)!r}*')
    cams = set()
    for n in names:
      fields = n.split('_')
      if len(fields) < 4 or not fields[2].isdigit():
        raise DatasetError(f'{list_path!r} line {line_no}: frame {n!r} in {directory!r} does '
                           "not have the camera as its third '_' field")
      cams.add(int(fields[2]))
    if len(cams) != 1:
      raise DatasetError(f'{list_path!r} line {line_no}: frames of {rel!r} mix cameras '
                         f'{sorted(cams)}; expected one')
    cam = cams.pop()
    if cam < 1:
      raise DatasetError(f'{list_path!r} line {line_no}: camera {cam} in frame names; expected '
                         '1-based cameras')
    tracklets.append([common.join(directory, n) for n in names])
    pids.append(pid)
    camids.append(cam - 1)
  if not tracklets and not allow_empty:
    raise DatasetError(f'{list_path!r} lists no tracklets')
  return tracklets, pids, camids


def load(root: str, protocol: str = 'torchreid', split_id: int = 0,
         verify: bool = False) -> Dataset:
  """Reads LS-VID under `root` (see the module docstring)."""
  root = common.open_root(root, NAME, LAYOUT, protocol, split_id)
  if not common.isdir(common.join(root, 'list_sequence')) and common.isdir(
      common.join(root, 'LS-VID')):
    root = common.join(root, 'LS-VID')
  paths = {k: common.join(root, v) for k, v in
           (('train', TRAIN_LIST), ('test', TEST_LIST), ('query', QUERY_FILE))}
  for rel, path in zip((TRAIN_LIST, TEST_LIST, QUERY_FILE), paths.values()):
    common.require_file(path, NAME, f'{rel} ({LAYOUT})')
  lister = _Lister()
  train_lists, train_pids, train_cams = _read_list(root, paths['train'], lister,
                                                   allow_empty=True)
  test_lists, test_pids, test_cams = _read_list(root, paths['test'], lister)
  query_rows = common.as_index_vector(common.load_mat_array(paths['query'], 'query'),
                                      paths['query'], 'query', len(test_lists))
  labels, original = common.relabel(np.asarray(train_pids))
  train = TrackletIndex.from_lists(train_lists, labels, train_cams)
  test = TrackletIndex.from_lists(test_lists, test_pids, test_cams)
  is_query = np.zeros(len(test), bool)
  is_query[query_rows] = True
  meta = {'root': root, 'train_pids': original, 'query_rows': query_rows}
  return common.make_dataset(NAME, train, test, query_rows, np.flatnonzero(~is_query), protocol,
                             meta, verify=verify)
