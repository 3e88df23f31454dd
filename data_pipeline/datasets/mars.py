"""MARS reader (Zheng et al. ECCV'16) from the original release layout.

```
<root>/
  bbox_train/<pid4>/<pid4>C<cam>T<tracklet4>F<frame3>.jpg     e.g. 0001/0001C1T0001F001.jpg
  bbox_test/<pid4 | 0000 | 00-1>/...                           0000 = distractor, 00-1 = junk
  info/train_name.txt          one frame file name per line (509,914 lines)
  info/test_name.txt           (681,089 lines)
  info/tracks_train_info.mat   'track_train_info' int N×4: start, end (1-based, inclusive, into
  info/tracks_test_info.mat    'track_test_info'           the name list), pid, camid 1..6
  info/query_IDX.mat           'query_IDX' 1-based rows of track_test_info (1,980 of them)
```
`info/` is the one from github.com/liangzheng06/MARS-evaluation.

Only the name lists and the .mat files are read (a few seconds for the 1.19 M names); for every
tracklet the pid (name chars 0-3, '00-1' = -1) and the camera digit (char 5) of all its frames
must agree with its .mat row, checked with vectorised numpy.

Protocols (the query set is the same 1,980 tracklets in all of them):
- 'official': gallery = all 12,180 test tracklets in .mat order, junk (pid -1) included; the
  evaluator treats junk and same-id-same-camera entries as junk (MARS-evaluation, STE-NVAN).
- 'torchreid': gallery = test rows not in query_IDX with pid != -1 (9,330; torchreid, GRL).
- 'cas': the queries in front of the torchreid gallery (11,310; AP3D/TCLNet/BiCnet-TKS).

Train pids are relabelled 0..624 (originals in `meta['train_pids']`), camids are 0-based, test
pids are kept (-1 junk, 0 distractor). An empty train split (empty train_name.txt, empty
track_train_info) gives an evaluation-only dataset.
"""
from __future__ import annotations

import numpy as np

from data_pipeline.datasets import common
from data_pipeline.index import Dataset, TrackletIndex
from grl_jax.errors import DatasetError

NAME = 'mars'
# What the root must contain and where it comes from (start-up validation prints it).
ROOT_HELP = (
    'MARS: <root>/bbox_train/, <root>/bbox_test/ (the frame crops, from the MARS release: '
    'bbox_train.zip, bbox_test.zip, http://zheng-lab.cecs.anu.edu.au/Project/'
    'project_mars.html) and <root>/info/{train_name.txt,test_name.txt,tracks_train_info.mat,'
    'tracks_test_info.mat,query_IDX.mat} (from github.com/liangzheng06/MARS-evaluation, '
    'folder info/)')
LAYOUT = 'MARS/{bbox_train,bbox_test,info} as released (info/ from liangzheng06/MARS-evaluation)'
INFO_FILES = {
    'train_names': 'train_name.txt',
    'test_names': 'test_name.txt',
    'train_info': 'tracks_train_info.mat',
    'test_info': 'tracks_test_info.mat',
    'query': 'query_IDX.mat',
}


def _pid_codes(pids: np.ndarray) -> np.ndarray:
  """The 4-character name prefix of each pid: '%04d', except -1 which MARS writes '00-1'."""
  codes = np.char.mod('%04d', pids).astype('U4')
  codes[pids == -1] = '00-1'
  return codes


def _read_track_info(path: str, key: str) -> np.ndarray:
  info = common.load_mat_array(path, key)
  if info.size == 0:  # MATLAB saves an empty matrix as 0×0, whatever its intended width
    return np.zeros((0, 4), np.int64)
  if info.ndim != 2 or info.shape[1] != 4:
    raise DatasetError(f'{path!r}: {key!r} has shape {info.shape}; expected N×4 '
                       '(start, end, pid, camid)')
  if not np.issubdtype(info.dtype, np.number) or (
      info.size and not np.all(np.equal(np.mod(info, 1), 0))):
    raise DatasetError(f'{path!r}: {key!r} must hold integers, got dtype {info.dtype}')
  return info.astype(np.int64)


def _check_split(names: list[str], info: np.ndarray, name_file: str, info_file: str,
                 key: str) -> None:
  """Checks every row's range and that its frames' names agree with its pid and camera."""
  n = len(names)
  start, end, pid, cam = info.T
  bad = np.flatnonzero((start < 1) | (end < start) | (end > n))
  if bad.size:
    r = int(bad[0])
    raise DatasetError(
        f'{info_file}: row {r + 1} of {key!r} has start={start[r]}, end={end[r]}; expected '
        f'1 <= start <= end <= {n} (the number of names in {name_file}); {bad.size} bad rows')
  bad = np.flatnonzero((pid < -1) | (cam < 1) | (cam > 9))
  if bad.size:
    r = int(bad[0])
    raise DatasetError(f'{info_file}: row {r + 1} of {key!r} has pid={pid[r]}, camid={cam[r]}; '
                       'expected pid >= -1 and a one-digit camid 1..9')
  arr = np.asarray(names, dtype=str)
  short = np.flatnonzero(np.char.str_len(arr) < 6)
  if short.size:
    i = int(short[0])
    raise DatasetError(f'{name_file}: line {i + 1} {names[i]!r} is not a MARS frame name '
                       '(expected e.g. 0001C1T0001F001.jpg)')
  lengths = end - start + 1
  row_of_frame = np.repeat(np.arange(len(info)), lengths)
  # Position in the name list of every frame of every row, rows one after another.
  offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
  frame_pos = np.repeat(start - 1, lengths) + offsets
  first6 = arr.astype('U6')
  pid_code = first6.astype('U4')
  cam_char = first6.view('U1').reshape(len(arr), 6)[:, 5]
  exp_pid = _pid_codes(pid)
  exp_cam = np.char.mod('%d', cam).astype('U1')
  wrong = ((pid_code[frame_pos] != exp_pid[row_of_frame])
           | (cam_char[frame_pos] != exp_cam[row_of_frame]))
  if wrong.any():
    k = int(np.flatnonzero(wrong)[0])
    i, r = int(frame_pos[k]), int(row_of_frame[k])
    n_rows = np.unique(row_of_frame[wrong]).size
    raise DatasetError(
        f'{name_file}: line {i + 1} {names[i]!r} has pid {str(pid_code[i])!r} and camera '
        f'{str(cam_char[i])!r}, but it belongs to row {r + 1} of {key!r} in {info_file} '
        f'(start={start[r]}, end={end[r]}, pid={pid[r]}, camid={cam[r]}), which expects pid '
        f'{str(exp_pid[r])!r} and camera {str(exp_cam[r])!r} for all its frames '
        f'({int(wrong.sum())} frames in {n_rows} rows disagree)')


def _index(names: list[str], info: np.ndarray, bbox_dir: str, pids: np.ndarray) -> TrackletIndex:
  paths = np.array([f'{bbox_dir}/{n[:4]}/{n}' for n in names], dtype=object)
  start, end, _, cam = info.T
  return common.index_from_arrays(paths, start - 1, end - start + 1, pids, cam - 1)


def load(root: str, protocol: str = 'torchreid', split_id: int = 0,
         verify: bool = False) -> Dataset:
  """Reads MARS under `root` (see the module docstring for layout and protocols)."""
  root = common.open_root(root, NAME, LAYOUT, protocol, split_id)
  info_dir = common.join(root, 'info')
  common.require_dir(info_dir, NAME, LAYOUT)
  for sub in ('bbox_train', 'bbox_test'):
    common.require_dir(common.join(root, sub), NAME, LAYOUT)
  files = {k: common.join(info_dir, v) for k, v in INFO_FILES.items()}
  for k, path in files.items():
    common.require_file(path, NAME, f'info/{INFO_FILES[k]} ({LAYOUT})')

  train_names = common.read_tokens(files['train_names'])
  test_names = common.read_tokens(files['test_names'])
  train_info = _read_track_info(files['train_info'], 'track_train_info')
  test_info = _read_track_info(files['test_info'], 'track_test_info')
  _check_split(train_names, train_info, files['train_names'], files['train_info'],
               'track_train_info')
  _check_split(test_names, test_info, files['test_names'], files['test_info'], 'track_test_info')
  query_rows = common.as_index_vector(
      common.load_mat_array(files['query'], 'query_IDX'), files['query'], 'query_IDX',
      len(test_info))

  labels, train_pids = common.relabel(train_info[:, 2])
  train = _index(train_names, train_info, common.join(root, 'bbox_train'), labels)
  test = _index(test_names, test_info, common.join(root, 'bbox_test'), test_info[:, 2])
  is_query = np.zeros(len(test_info), bool)
  is_query[query_rows] = True
  gallery_rows = np.flatnonzero(~is_query & (test_info[:, 2] != -1))
  meta = {
      'root': root,
      'train_pids': train_pids,
      'query_rows': query_rows,
      'num_cameras': int(max(train_info[:, 3].max(initial=0), test_info[:, 3].max(initial=0))),
  }
  return common.make_dataset(NAME, train, test, query_rows, gallery_rows, protocol, meta,
                             verify=verify)
