"""iLIDS-VID reader (Wang et al. ECCV'14), with the 10 standard train/test splits.

```
<root>/
  i-LIDS-VID/sequences/cam1/personNNN/cam1_personNNN_<frame>.png
  i-LIDS-VID/sequences/cam2/personNNN/cam2_personNNN_<frame>.png
  train-test people splits/train_test_splits_ilidsvid.mat     'ls_set': 10 × 300, 1-based
```
`ls_set[split_id]` holds 1-based indices into the sorted list of person directories. Following
the common Wang et al. ECCV'14 convention (torchreid, and most published numbers), the FIRST half
of a row is the TEST set and the second half the training set. (GRL's own loader takes the first
half as training.)

Train = both cameras of the training people (pids relabelled). Query = cam1 tracklets and
gallery = cam2 tracklets of the test people (original person numbers as pids). All protocols give
that gallery ('official' = 'torchreid'; 'cas' puts the queries in front). Frames are ordered by
the numeric frame field of their names; names must start `cam<k>_person<NNN>_` matching their
directories.
"""
from __future__ import annotations

from data_pipeline.datasets import common
from data_pipeline.index import Dataset
from grl_jax.errors import DatasetError

NAME = 'ilids'
# What the root must contain and where it comes from (start-up validation prints it).
ROOT_HELP = (
    'iLIDS-VID: <root>/i-LIDS-VID/sequences/cam{1,2}/personNNN/*.png and <root>/'
    'train-test people splits/train_test_splits_ilidsvid.mat (untar iLIDS-VID.tar; the '
    'splits file comes with it or with the official site)')
LAYOUT = ('i-LIDS-VID/sequences/cam{1,2}/personNNN/*.png and '
          "'train-test people splits/train_test_splits_ilidsvid.mat'")
SPLIT_FILE = 'train-test people splits/train_test_splits_ilidsvid.mat'
CAMERAS = ('cam1', 'cam2')


def _frame_key(name: str):
  stem = name.rsplit('.', 1)[0]
  last = stem.rsplit('_', 1)[-1]
  return (0, int(last), name) if last.isdigit() else (1, 0, name)


def _read_sequences(seq_dir: str) -> tuple[list[str], dict[tuple[int, str], list[str]]]:
  """Sorted person directory names and {(camera index, person): ordered frame paths}."""
  persons = {}
  for cam in CAMERAS:
    cam_dir = common.join(seq_dir, cam)
    common.require_dir(cam_dir, NAME, LAYOUT)
    persons[cam] = common.list_subdirs(cam_dir)
  if persons['cam1'] != persons['cam2']:
    only = sorted(set(persons['cam1']) ^ set(persons['cam2']))
    raise DatasetError(f'{NAME}: {seq_dir!r}/cam1 and cam2 hold different person directories '
                       f'(e.g. {only[:5]}); every person must appear in both cameras')
  frames: dict[tuple[int, str], list[str]] = {}
  for c, cam in enumerate(CAMERAS):
    for p in common.list_files(common.join(seq_dir, cam), 1, '*.png'):
      person, fname = p.rsplit('/', 2)[-2:]
      if not fname.startswith(f'{cam}_{person}_'):
        raise DatasetError(f'{NAME}: frame {p!r} should be named {cam}_{person}_<frame>.png '
                           '(camera and person as its directories)')
      frames.setdefault((c, person), []).append(p)
  for cam_person, paths in frames.items():
    paths.sort(key=lambda p: _frame_key(p.rsplit('/', 1)[-1]))
  for c, cam in enumerate(CAMERAS):
    empty = [p for p in persons[cam] if (c, p) not in frames]
    if empty:
      raise DatasetError(f'{NAME}: {common.join(seq_dir, cam, empty[0])!r} has no .png frames '
                         f'({len(empty)} empty person directories in {cam})')
  return persons['cam1'], frames


def _person_number(person: str, seq_dir: str) -> int:
  digits = person[len('person'):]
  if not person.startswith('person') or not digits.isdigit():
    raise DatasetError(f'{NAME}: person directory {person!r} in {seq_dir!r} is not personNNN')
  return int(digits)


def load(root: str, protocol: str = 'torchreid', split_id: int = 0,
         verify: bool = False) -> Dataset:
  """Reads iLIDS-VID split `split_id` (0..9) under `root` (see the module docstring)."""
  root = common.open_root(root, NAME, LAYOUT, protocol)
  seq_dir = common.join(root, 'i-LIDS-VID', 'sequences')
  common.require_dir(seq_dir, NAME, LAYOUT)
  split_path = common.join(root, SPLIT_FILE)
  common.require_file(split_path, NAME, LAYOUT)
  persons, frames = _read_sequences(seq_dir)

  ls_set = common.load_mat_array(split_path, 'ls_set')
  if ls_set.ndim != 2 or ls_set.shape[1] < 2 or ls_set.shape[1] % 2:
    raise DatasetError(f'{split_path!r}: \'ls_set\' has shape {ls_set.shape}; expected '
                       'num_splits × num_people with an even number of people (10 × 300)')
  split_id = common.check_split_id(split_id, ls_set.shape[0], NAME, split_path)
  row = common.as_index_vector(ls_set[split_id], split_path, f'ls_set row {split_id + 1}',
                               len(persons))
  half = len(row) // 2
  # Wang et al. convention: first half test, second half train.
  test_people = [persons[i] for i in sorted(row[:half])]
  train_people = [persons[i] for i in sorted(row[half:])]

  train_lists, train_pids, train_cams = [], [], []
  for person in train_people:
    for c in range(len(CAMERAS)):
      train_lists.append(frames[(c, person)])
      train_pids.append(_person_number(person, seq_dir))
      train_cams.append(c)
  test_pids = [_person_number(p, seq_dir) for p in test_people]
  query = ([frames[(0, p)] for p in test_people], test_pids, [0] * len(test_people))
  gallery = ([frames[(1, p)] for p in test_people], test_pids, [1] * len(test_people))
  meta = {'root': root, 'split_id': split_id,
          'convention': 'ls_set first half = test (Wang et al. ECCV14)'}
  return common.dataset_from_lists(NAME, (train_lists, train_pids, train_cams), query, gallery,
                                   protocol, meta, verify=verify)
