"""Tracklets that are not a dataset: folders of image files, or a custom-format CSV.

    tracklets = folders.list_tracklets('/data/crops')   # [(name, [frame paths]), ...]
    frames = folders.read_frames(tracklets[0][1], 256, 128)   # uint8[n, 256, 128, 3]

A folder input holds one folder per tracklet at any depth: a *tracklet folder* is a folder
that directly contains image files (`grl_jax.schema.IMAGE_EXTENSIONS`, any case); its name is
its path relative to the input folder, '/'-separated (`.` for the input folder itself when it
holds images directly). Frames are sorted by file name in natural order (`frame9` before
`frame10`). Names starting with '.' (macOS `._x.jpg` resource forks, `.DS_Store`, hidden
folders) are skipped. A folder without sub-folders and without images is an error, so a
tracklet whose files went missing is noticed.

A CSV input is the custom dataset format (data_pipeline/datasets/custom.py); every tracklet of
every split is listed, named by its `tracklet` column (prefixed `<split>/` when that name occurs
in more than one split); no train split is needed.

`read_frames` decodes and resizes with the same TF ops as the evaluation pipeline
(data_pipeline/pipeline/decode.py: `decode_image` to RGB, then antialiased bilinear resize only
when the size differs), so its frames equal what evaluation feeds the model. Local paths and
gs:// URLs both work (grl_jax/io.py).
"""
from __future__ import annotations

import csv
import io as _io
import os
import re
from typing import Callable, Sequence, Union

import numpy as np

from grl_jax import io
from grl_jax.errors import BadFrameError, DatasetError
from grl_jax.schema import IMAGE_EXTENSIONS, SPLITS

_DIGITS = re.compile(r'(\d+)')
_EXPECTED = ('a folder of tracklet folders of image files (' + '/'.join(IMAGE_EXTENSIONS) +
             ') or a custom-format CSV (data_pipeline/datasets/custom.py)')


def natural_key(name: str) -> tuple:
  """Sort key: digit runs compare as numbers, text case-insensitively (then exactly)."""
  parts = tuple((1, int(p), '') if p.isdigit() else (0, 0, p.casefold())
                for p in _DIGITS.split(name) if p)
  return parts, name


def is_image(name: str) -> bool:
  return not name.startswith('.') and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _scan(folder: str) -> tuple[list[str], list[str]]:
  """(sub-folder names, file names) of `folder`, hidden entries skipped."""
  dirs, files = [], []
  if io.is_remote(folder):
    for child in io.path(folder).iterdir():
      if not child.name.startswith('.'):
        (dirs if child.is_dir() else files).append(child.name)
  else:
    with os.scandir(folder) as entries:
      for e in entries:
        if not e.name.startswith('.'):
          (dirs if e.is_dir() else files).append(e.name)
  return dirs, files


def _join(base: str, name: str) -> str:
  return name if name == '.' else base.rstrip('/') + '/' + name


def folder_frames(folder: str) -> list[str]:
  """The image files directly in `folder`, in natural order (DatasetError if there are none)."""
  folder = io.normalize(folder)
  if not io.isdir(folder):
    raise DatasetError(f'tracklet folder {folder!r} does not exist; expected a folder of '
                       'image files')
  _, files = _scan(folder)
  images = sorted((f for f in files if is_image(f)), key=natural_key)
  if not images:
    others = sorted(files)[:3]
    raise DatasetError(f'tracklet folder {folder!r} holds no image files; expected '
                       f'{"/".join(IMAGE_EXTENSIONS)} files'
                       + (f' (found {others}{" ..." if len(files) > 3 else ""})' if files
                          else ' (it is empty)'))
  return [_join(folder, f) for f in images]


def _walk(root: str) -> list[tuple[str, list[str]]]:
  out, stack = [], ['.']
  while stack:
    rel = stack.pop()
    folder = root if rel == '.' else _join(root, rel)
    dirs, files = _scan(folder)
    images = sorted((f for f in files if is_image(f)), key=natural_key)
    if images:
      out.append((rel, [_join(folder, f) for f in images]))
    elif not dirs and rel != '.':
      folder_frames(folder)  # raises: a leaf folder without images
    stack.extend(d if rel == '.' else f'{rel}/{d}' for d in sorted(dirs, key=natural_key))
  return sorted(out, key=lambda t: [natural_key(p) for p in t[0].split('/')])


def _csv_names(csv_path: str) -> list[tuple[str, str]]:
  """(split, tracklet) of each tracklet of the CSV in first-appearance order: the order of
  custom.read_csv's per-split lists."""
  reader = csv.reader(_io.StringIO(io.read_bytes(csv_path).decode('utf-8-sig')))
  header = [h.strip() for h in next(reader)]
  s, t = header.index('split'), header.index('tracklet')
  seen = {}
  for row in reader:
    if row and any(c.strip() for c in row):
      seen.setdefault((row[s].strip(), row[t].strip()), None)
  return list(seen)


def _from_csv(csv_path: str) -> tuple[list[tuple[str, list[str]]], dict]:
  from data_pipeline.datasets import custom  # pylint: disable=g-import-not-at-top
  splits = custom.read_csv(csv_path)  # validates every row, names the line at fault
  keys = _csv_names(csv_path)
  counts = {}
  for _, name in keys:
    counts[name] = counts.get(name, 0) + 1
  tracklets, pids, camids, split_of = [], [], [], []
  for split in SPLITS:
    names = [n for sp, n in keys if sp == split]
    frames, p, c = splits[split]
    for name, paths, pid, camid in zip(names, frames, p, c):
      tracklets.append((f'{split}/{name}' if counts[name] > 1 else name, list(paths)))
      pids.append(pid)
      camids.append(camid)
      split_of.append(split)
  if not tracklets:
    raise DatasetError(f'{csv_path!r} has no rows; expected one row per frame '
                       '(data_pipeline/datasets/custom.py)')
  extra = dict(pids=np.asarray(pids, np.int32), camids=np.asarray(camids, np.int32),
               splits=np.asarray(split_of))
  return tracklets, extra


def is_csv(input: str) -> bool:  # pylint: disable=redefined-builtin
  return str(input).lower().endswith('.csv')


def list_tracklets_with_labels(input: str  # pylint: disable=redefined-builtin
                               ) -> tuple[list[tuple[str, list[str]]], dict]:
  """`list_tracklets` plus, for a CSV, {pids, camids int32[N], splits str[N]} ({} else)."""
  if not input:
    raise DatasetError(f'no input given; expected {_EXPECTED}')
  path = io.normalize(str(input))
  if not io.exists(path):
    raise DatasetError(f'input {path!r} does not exist; expected {_EXPECTED}')
  if not io.isdir(path):
    if is_csv(path):
      return _from_csv(path)
    raise DatasetError(f'input {path!r} is a file; expected {_EXPECTED}')
  tracklets = _walk(path)
  if not tracklets:
    raise DatasetError(f'input folder {path!r} holds no image files in it or any sub-folder; '
                       f'expected {_EXPECTED}')
  return tracklets, {}


def list_tracklets(input: str) -> list[tuple[str, list[str]]]:  # pylint: disable=redefined-builtin
  """[(name, frame paths in temporal order)] of a folder tree or a custom CSV (see above)."""
  return list_tracklets_with_labels(input)[0]


def frame_lookup(root: str) -> Callable[[str], list[str]]:
  """name -> frame paths of tracklet `name` of `root` (a folder input or a CSV), as
  `list_tracklets(root)` gives them; DatasetError when it or its frames are no longer there."""
  if not is_csv(root):
    base = io.normalize(root)
    return lambda name: folder_frames(base if name == '.' else _join(base, name))
  if not io.exists(root):
    raise DatasetError(f'{root!r} does not exist')
  table = dict(list_tracklets(root))

  def lookup(name: str) -> list[str]:
    if name not in table:
      raise DatasetError(f'{root!r} has no tracklet {name!r}')
    gone = [p for p in table[name] if not io.is_remote(p) and not io.exists(p)]
    if gone:
      raise DatasetError(f'{len(gone)} frames of tracklet {name!r} of {root!r} do not exist '
                         f'(e.g. {gone[0]!r})')
    return table[name]

  return lookup


# ------------------------------------------------------------------------------------------
# Pixels

def decode_frame(path: str, height: int, width: int) -> np.ndarray:
  """uint8[height, width, 3], RGB, exactly as the evaluation pipeline loads `path`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from data_pipeline.pipeline import decode  # pylint: disable=g-import-not-at-top
  try:
    data = io.read_bytes(path)
  except OSError as e:
    raise BadFrameError(f'{path}: cannot be read ({type(e).__name__}: {e})') from e
  # The pipeline's completeness check: a truncated JPEG decodes without error in TF.
  if not bool(decode.looks_valid(tf.constant(data))):
    raise BadFrameError(f'{path}: truncated or not a JPEG/PNG/BMP image ({len(data)} bytes); '
                        'expected a complete image file')
  try:
    img = tf.io.decode_image(data, channels=3, expand_animations=False)
    return decode.resize_if_needed(img, height, width).numpy()
  except tf.errors.OpError as e:
    reason = e.message.splitlines()[0][:200]
    raise BadFrameError(f'{path}: cannot be decoded ({reason}); expected a JPEG/PNG/BMP '
                        'image') from e


def read_frames(folder_or_paths: Union[str, os.PathLike, Sequence[str]], height: int,
                width: int) -> np.ndarray:
  """uint8[n, height, width, 3]: decoded RGB frames, resized as evaluation resizes them.

  Args:
    folder_or_paths: a tracklet folder (its images in natural order, `folder_frames`), one
      image file, or a sequence of image paths (in the order given).
    height, width: the model's input size (`config.data.height` x `config.data.width`).
  Raises:
    DatasetError: a missing folder or one without images; BadFrameError: a file that is not a
      complete JPEG/PNG/BMP image (the message names it).
  """
  from data_pipeline.pipeline import tf_device  # pylint: disable=g-import-not-at-top
  tf_device.hide_accelerators_from_tf()  # before TF's first op: the accelerator is JAX's
  if isinstance(folder_or_paths, (str, os.PathLike)):
    p = str(folder_or_paths)
    paths = folder_frames(p) if io.isdir(p) else [p]
  else:
    paths = [str(p) for p in folder_or_paths]
  if not paths:
    raise DatasetError('read_frames: no image paths given; expected at least one')
  out = np.empty((len(paths), int(height), int(width), 3), np.uint8)
  for i, p in enumerate(paths):
    out[i] = decode_frame(p, int(height), int(width))
  return out
