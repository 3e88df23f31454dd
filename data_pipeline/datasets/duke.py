"""DukeMTMC-VideoReID reader (Wu et al. CVPR'18).

```
<root>/                        (or <root>/DukeMTMC-VideoReID/, found automatically)
  train/<pid4>/<tracklet4>/*.jpg       702 ids, 2,196 tracklets
  query/<pid4>/<tracklet4>/*.jpg       702 tracklets, one per test id
  gallery/<pid4>/<tracklet4>/*.jpg     2,636 tracklets (copies of the queries included;
                                       408 distractor ids)
```
Frame names: `0001_C2_F0001_X00001.jpg` (camera `C<n>`, frame number `F<n>`) or the old format
without underscores, `0001C6F0099X30823.jpg`. Frames are ordered by their F number; the camera
must be the same for all frames of a tracklet and the name's pid must match the pid directory.
One glob per split lists the frames (one prefix listing on GCS). An empty `train/` gives an
evaluation-only dataset (no training tracklets); query and gallery must hold frames.

Protocols: 'torchreid' and 'official' both use the gallery directory as given (Duke has no
separate official rule; its gallery already holds a copy of every query, removed by the
same-id-same-camera rule at evaluation); 'cas' puts the queries in front of it, as GRL and the
CAS-group evaluators do.
"""
from __future__ import annotations

import re

import numpy as np

from data_pipeline.datasets import common
from data_pipeline.index import Dataset
from grl_jax.errors import DatasetError
from grl_jax.schema import SPLITS

NAME = 'duke'
# What the root must contain and where it comes from (start-up validation prints it).
ROOT_HELP = (
    'DukeMTMC-VideoReID: <root>/{train,query,gallery}/<pid4>/<tracklet4>/*.jpg (unzip '
    'DukeMTMC-VideoReID.zip, github.com/Yu-Wu/DukeMTMC-VideoReID)')
LAYOUT = 'DukeMTMC-VideoReID/{train,query,gallery}/<pid4>/<tracklet4>/*.jpg'
# pid, camera, frame number; underscores optional to accept both name formats.
_FRAME_RE = re.compile(r'^(-?\d+)_?C(\d+)_?F(\d+)')


def _read_split(split_dir: str) -> tuple[list[list[str]], list[int], list[int]]:
  """(frames per tracklet, pid, 0-based camid) of one split directory, sorted by pid/tracklet."""
  paths = common.list_files(split_dir, 2, '*.jpg')
  groups: dict[tuple[str, str], list[tuple[int, str, int, str]]] = {}
  for p in paths:
    parts = p.rsplit('/', 3)
    pid_dir, tracklet_dir, fname = parts[-3], parts[-2], parts[-1]
    m = _FRAME_RE.match(fname)
    if not m:
      raise DatasetError(f'{NAME}: frame {p!r} is not named <pid>_C<cam>_F<frame>_X<n>.jpg '
                         'or <pid>C<cam>F<frame>X<n>.jpg')
    if not pid_dir.lstrip('-').isdigit() or int(m.group(1)) != int(pid_dir):
      raise DatasetError(f'{NAME}: frame {p!r} has pid {m.group(1)} but lies in pid directory '
                         f'{pid_dir!r}')
    groups.setdefault((pid_dir, tracklet_dir), []).append(
        (int(m.group(3)), fname, int(m.group(2)), p))
  tracklets, pids, camids = [], [], []
  for (pid_dir, tracklet_dir), frames in sorted(groups.items()):
    frames.sort()
    cams = {f[2] for f in frames}
    where = common.join(split_dir, pid_dir, tracklet_dir)
    if len(cams) != 1:
      raise DatasetError(f'{NAME}: tracklet {where!r} mixes cameras {sorted(cams)}; expected '
                         'one camera for all its frames')
    numbers = [f[0] for f in frames]
    if len(set(numbers)) != len(numbers):
      dup = next(n for n, c in zip(*np.unique(numbers, return_counts=True)) if c > 1)
      raise DatasetError(f'{NAME}: tracklet {where!r} has two frames numbered F{dup:04d}')
    cam = cams.pop()
    if cam < 1:
      raise DatasetError(f'{NAME}: tracklet {where!r} has camera C{cam}; expected C1 or above')
    tracklets.append([f[3] for f in frames])
    pids.append(int(pid_dir))
    camids.append(cam - 1)
  return tracklets, pids, camids


def load(root: str, protocol: str = 'torchreid', split_id: int = 0,
         verify: bool = False) -> Dataset:
  """Reads DukeMTMC-VideoReID under `root` (see the module docstring)."""
  root = common.open_root(root, NAME, LAYOUT, protocol, split_id)
  nested = common.join(root, 'DukeMTMC-VideoReID')
  if not common.isdir(common.join(root, 'train')) and common.isdir(nested):
    root = nested
  read = {}
  for split in SPLITS:
    split_dir = common.join(root, split)
    common.require_dir(split_dir, NAME, LAYOUT)
    read[split] = _read_split(split_dir)
    if not read[split][0] and split != 'train':  # an empty train/ = evaluation only
      raise DatasetError(f'{NAME}: no frames found under {split_dir!r}; expected {LAYOUT}')
  return common.dataset_from_lists(NAME, read['train'], read['query'], read['gallery'],
                                  protocol, {'root': root}, verify=verify)
