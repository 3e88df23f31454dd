"""Writing a synthetic MARS tree: the MARS layout, its .mat files, markers, generate / ensure.

Generation writes `.synthetic_in_progress` in the root first and `info/.synthetic_complete`
(JSON of the parameters) last; `ensure` regenerates a tree whose completion marker is missing
or whose parameters differ, and refuses to touch a directory that holds a MARS-like tree it did
not write. Local directories only.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

import numpy as np

from data_pipeline.synthetic.appearance import camera_model
from data_pipeline.synthetic.planning import SyntheticConfig, Tracklet, plan
from data_pipeline.synthetic.render import render_tracklet
from grl_jax import io as storage
from grl_jax.errors import ConfigError, GrlJaxError, WorkdirError

COMPLETE_MARKER = os.path.join('info', '.synthetic_complete')
PROGRESS_MARKER = '.synthetic_in_progress'
FORMAT_VERSION = 1
_OWNED = ('bbox_train', 'bbox_test', 'info')
_MAT_HEADER = b'MATLAB 5.0 MAT-file, Platform: GLNXA64, Created by: grl_jax synthetic MARS'


class ForeignRootError(WorkdirError, FileExistsError):
  """The root holds bbox_*/info directories without a synthetic-MARS marker (maybe real data).

  Also a FileExistsError, which is what callers caught before the errors were unified.
  """


def _savemat_bytes(key: str, array: np.ndarray) -> bytes:
  """A v5 .mat file whose header carries no timestamp, so the bytes are reproducible."""
  import scipy.io  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  scipy.io.savemat(buf, {key: array}, format='5', oned_as='row')
  data = bytearray(buf.getvalue())
  data[:116] = _MAT_HEADER.ljust(116, b' ')
  return bytes(data)


def _render_tracklets(root: str, cfg: SyntheticConfig, split: str, tracklets: list[Tracklet],
                      cameras: dict[int, dict], parent: int | None = None) -> None:
  """Renders and writes the JPEG frames of `tracklets` under <root>/bbox_<split>/.

  `parent`: in a helper process, the pid of the generating process; the helper stops as soon as
  that process is gone (killed), so it never writes into a tree that a restart regenerates.
  """
  base = os.path.join(root, f'bbox_{split}')
  for t in tracklets:
    if parent is not None and os.getppid() != parent:
      raise SystemExit(1)
    folder = os.path.join(base, t.code)
    os.makedirs(folder, exist_ok=True)
    for f, img in enumerate(render_tracklet(cfg, t, cameras[t.cam]), 1):
      img.save(os.path.join(folder, t.name(f)), format='JPEG', quality=cfg.quality)


def render_shard(argv: list[str]) -> None:
  """Helper-process entry: argv = [root, split, shard, num_shards, JSON of the config fields]."""
  root, split, shard, num_shards, params = argv
  cfg = SyntheticConfig.from_kwargs(**json.loads(params))
  layout = plan(cfg)
  cameras = {c: camera_model(cfg.seed, c, cfg.height, cfg.width)
             for c in range(1, cfg.num_cameras + 1)}
  _render_tracklets(root, cfg, split, layout[split][int(shard)::int(num_shards)], cameras,
                    parent=int(os.environ['GRL_JAX_SYNTHETIC_PARENT']))


# Frames per helper process below which starting one (about 0.3 s) costs more than it saves.
_FRAMES_PER_WORKER = 4000


def _num_workers(frames: int) -> int:
  """Default processes rendering at once: the usable CPUs, at most 8, one per 4000 frames."""
  try:
    cpus = len(os.sched_getaffinity(0))
  except AttributeError:  # macOS
    cpus = os.cpu_count() or 1
  return max(1, min(8, cpus, frames // _FRAMES_PER_WORKER))


def _check_workers(workers) -> None:
  """ConfigError unless `workers` is None (the default) or a positive integer."""
  if workers is not None and (isinstance(workers, bool) or int(workers) < 1):
    raise ConfigError(f'synthetic workers={workers!r}: expected a positive number of processes')


def _write_split(root: str, cfg: SyntheticConfig, split: str, tracklets: list[Tracklet],
                 cameras: dict[int, dict], workers: int | None) -> list[str]:
  """Writes the split's frames, rendered by `workers` processes; returns the frame names.

  Each tracklet is a pure function of (cfg.seed, tracklet), so the bytes do not depend on how
  the tracklets are shared out: this process renders every `workers`-th one and helper
  processes (`render_shard`, a fresh interpreter importing only this package) the others.
  """
  if workers is None:
    workers = _num_workers(sum(t.length for t in tracklets))
  helpers = []
  env = dict(os.environ, GRL_JAX_SYNTHETIC_PARENT=str(os.getpid()))
  params = json.dumps(dataclasses.asdict(cfg))
  code = 'import sys; from data_pipeline.synthetic import writer; writer.render_shard(sys.argv[1:])'
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env['PYTHONPATH'] = os.pathsep.join(p for p in (repo, env.get('PYTHONPATH')) if p)
  try:
    for shard in range(1, workers):
      helpers.append(subprocess.Popen(
          [sys.executable, '-c', code, root, split, str(shard), str(workers), params], env=env,
          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    _render_tracklets(root, cfg, split, tracklets[0::workers], cameras)
    for shard, helper in enumerate(helpers, 1):
      _, err = helper.communicate()
      if helper.returncode:
        last = (err.decode(errors='replace').strip().splitlines() or ['no output'])[-1]
        raise WorkdirError(f'synthetic root {root!r}: rendering shard {shard}/{workers} of '
                           f'bbox_{split} failed (exit {helper.returncode}): {last}')
  finally:
    for helper in helpers:
      if helper.poll() is None:
        helper.kill()
        helper.wait()
  return [t.name(f) for t in tracklets for f in range(1, t.length + 1)]


def _info_array(tracklets: list[Tracklet]) -> np.ndarray:
  return np.array([[t.start, t.end, t.pid, t.cam] for t in tracklets], np.int32).reshape(-1, 4)


def _read_marker(root: str) -> dict | None:
  path = os.path.join(root, COMPLETE_MARKER)
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _is_ours(root: str) -> bool:
  return (os.path.exists(os.path.join(root, PROGRESS_MARKER))
          or os.path.exists(os.path.join(root, COMPLETE_MARKER)))


def _clear(root: str) -> None:
  """Removes a (possibly half-written) synthetic tree; refuses to touch anything else."""
  present = [d for d in _OWNED if os.path.exists(os.path.join(root, d))]
  if present and not _is_ours(root):
    raise ForeignRootError(
        f'synthetic root {root!r} already holds {present} but no synthetic-MARS marker '
        f'({PROGRESS_MARKER} or {COMPLETE_MARKER}); refusing to overwrite what may be a real '
        'dataset. Choose another root or remove them yourself.')
  for d in present:
    shutil.rmtree(os.path.join(root, d))


def _summary(cfg: SyntheticConfig, layout: dict) -> dict[str, Any]:
  test = layout['test']
  return {
      'params': dataclasses.asdict(cfg),
      'format_version': FORMAT_VERSION,
      'train': {'ids': len(layout['train_ids']), 'tracklets': len(layout['train']),
                'frames': int(sum(t.length for t in layout['train']))},
      'test': {'ids': len(layout['test_ids']), 'tracklets': len(test),
               'frames': int(sum(t.length for t in test)),
               'junk_tracklets': sum(t.pid == -1 for t in test),
               'distractor_tracklets': sum(t.pid == 0 for t in test)},
      'queries': len(layout['query_rows']),
  }




def _root_path(root: str) -> str:
  """The absolute local path of `root`; ConfigError for an empty root or a URL."""
  if root is None or not str(root):
    raise ConfigError('synthetic root is empty: expected a local directory path')
  if storage.is_remote(str(root)):
    raise ConfigError(f'synthetic root {str(root)!r}: expected a local directory (the generator '
                      'does not write to URLs; generate it locally with `python -m '
                      'data_pipeline.synthetic --root=DIR`, copy DIR to the bucket and pass '
                      '--config.data.root=gs://.../DIR --config.data.synthetic.enabled=false)')
  return os.path.abspath(os.path.expanduser(str(root)))


def _write_tree(root: str, cfg: SyntheticConfig, workers: int | None) -> dict[str, Any]:
  """Clears `root` of an older synthetic tree and writes the tree of `cfg`; returns its summary."""
  if os.path.exists(root) and not os.path.isdir(root):
    raise WorkdirError(f'synthetic root {root!r} exists and is not a directory')
  os.makedirs(root, exist_ok=True)
  _clear(root)
  with open(os.path.join(root, PROGRESS_MARKER), 'w') as f:
    f.write('synthetic MARS generation in progress; a tree with this file is incomplete\n')
  layout = plan(cfg)
  cameras = {c: camera_model(cfg.seed, c, cfg.height, cfg.width)
             for c in range(1, cfg.num_cameras + 1)}
  info = os.path.join(root, 'info')
  os.makedirs(info, exist_ok=True)
  for split, key in (('train', 'track_train_info'), ('test', 'track_test_info')):
    names = _write_split(root, cfg, split, layout[split], cameras, workers)
    with open(os.path.join(info, f'{split}_name.txt'), 'w') as f:
      f.write('\n'.join(names) + '\n')
    with open(os.path.join(info, f'tracks_{split}_info.mat'), 'wb') as f:
      f.write(_savemat_bytes(key, _info_array(layout[split])))
  query = np.array(layout['query_rows'], np.int64) + 1
  dtype = np.uint16 if query.max(initial=0) < 2 ** 16 else np.uint32
  with open(os.path.join(info, 'query_IDX.mat'), 'wb') as f:
    f.write(_savemat_bytes('query_IDX', query.astype(dtype).reshape(1, -1)))
  summary = _summary(cfg, layout)
  marker = os.path.join(root, COMPLETE_MARKER)
  with open(marker + '.tmp', 'w') as f:
    json.dump(summary, f, indent=1, sort_keys=True)
  os.replace(marker + '.tmp', marker)
  os.remove(os.path.join(root, PROGRESS_MARKER))
  return summary


def generate(root: str, *, workers: int | None = None, **kwargs) -> dict[str, Any]:
  """Writes a synthetic MARS tree under `root` (replacing a previous synthetic one).

  Args:
    root: local directory (created if needed).
    workers: processes rendering at once (default: the usable CPUs, at most 8 and one per 4000
      frames of a split); the bytes written are the same for any number.
    **kwargs: SyntheticConfig fields (num_train_ids, num_test_ids, seed, height, width,
      num_cameras, min_tracklets, max_tracklets, min_len, median_len, max_len, ...).

  Returns:
    Summary dict: params, per-split ids/tracklets/frames, queries, root, seconds.

  Raises:
    ConfigError: an unknown or out-of-range parameter, an empty root or a URL.
    ForeignRootError: `root` holds bbox_*/info directories that this generator did not write
      (a WorkdirError and a FileExistsError).
    WorkdirError: `root` cannot be created or written.
  """
  cfg = SyntheticConfig.from_kwargs(**kwargs)
  _check_workers(workers)
  t0 = time.perf_counter()
  root = _root_path(root)
  try:
    summary = _write_tree(root, cfg, None if workers is None else int(workers))
  except GrlJaxError:
    raise
  except OSError as e:
    where = e.filename if e.filename else root
    raise WorkdirError(f'synthetic root {root!r}: cannot write {where!r}: '
                       f'{e.strerror or e}') from e
  return dict(summary, root=root, generated=True, seconds=round(time.perf_counter() - t0, 3))


def ensure(root: str, *, workers: int | None = None, **kwargs) -> dict[str, Any]:
  """Returns the summary of the synthetic tree at `root`, generating it if absent/incomplete.

  A tree is reused only if its completion marker exists and records the same parameters;
  otherwise (half-written, other parameters) it is regenerated. Same kwargs and errors as
  `generate`.
  """
  cfg = SyntheticConfig.from_kwargs(**kwargs)
  _check_workers(workers)
  root = _root_path(root)
  marker = _read_marker(root)
  if (marker is not None and marker.get('params') == dataclasses.asdict(cfg)
      and marker.get('format_version') == FORMAT_VERSION
      and not os.path.exists(os.path.join(root, PROGRESS_MARKER))):
    return dict(marker, root=root, generated=False, seconds=0.0)
  return generate(root, workers=workers, **kwargs)
