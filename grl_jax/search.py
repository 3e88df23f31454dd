"""Search a gallery of extracted tracklets with new query tracklets (`--mode=search`).

    python -m grl_jax.main --mode=extract --workdir=W --input=/data/gallery --output=g.npz
    python -m grl_jax.main --mode=search --workdir=W --query=/data/q/person7 --gallery=g.npz

The query is one tracklet folder (images directly inside) or a folder of tracklet folders
(then each one is a query; grl_jax/folders.py). Its descriptors come from the same checkpoint
and pipeline as the gallery's (grl_jax/offline.py `folder_features`), by default at the step
the gallery was extracted with. For each query the `top_k` nearest gallery tracklets under the
model's descriptor distance (grl_jax/evaluation: `top_k`, `pairwise_distance`) are printed,
nearest first, and drawn as a ranked-list picture (grl_jax/visualize.py): the query in blue,
then its top-k in grey (no identities are known), each labelled with its rank and distance.
Gallery frames are read back from the .npz's `root` + `names`; when they are gone the results
are still printed and one line says why there is no picture.
"""
from __future__ import annotations

import io as _io
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from grl_jax import checkpoint
from grl_jax import evaluation
from grl_jax import folders
from grl_jax import io
from grl_jax import offline
from grl_jax import validation
from grl_jax import visualize
from grl_jax.errors import ConfigError, DatasetError
from grl_jax.trainer.loop import say

MAX_PICTURE_ROWS = 20   # queries drawn; the rest are only printed
_NPZ_KEYS = ('features', 'names', 'root')


def load_gallery(path: str) -> dict:
  """The arrays of an `extract --input` .npz; DatasetError naming the file otherwise."""
  expected = 'an .npz written by `--mode=extract --input=...`'
  if not path:
    raise ConfigError(f'--gallery is required for --mode=search; expected {expected}')
  try:
    data = io.read_bytes(path)
  except OSError as e:
    raise DatasetError(f'--gallery={path!r} cannot be read ({e.strerror or e}); expected '
                       f'{expected}') from e
  try:
    with np.load(_io.BytesIO(data), allow_pickle=False) as z:
      out = {k: z[k] for k in z.files}
  except (ValueError, OSError) as e:
    raise DatasetError(f'--gallery={path!r} is not an .npz ({e}); expected {expected}') from e
  missing = [k for k in _NPZ_KEYS if k not in out]
  feats = out.get('features')
  if missing or feats.ndim != 2 or len(feats) != len(out['names']) or not len(feats):
    raise DatasetError(f'--gallery={path!r} has keys {sorted(out)} (features '
                       f'{None if feats is None else feats.shape}); expected {expected}: '
                       'features [N >= 1, D], names [N], root')
  out['root'] = str(out['root'])
  return out


def descriptor_dim(config, setup, variables) -> int:
  """D of the model's descriptor, from shapes only (nothing is compiled or run)."""
  clip = jax.ShapeDtypeStruct((1, int(config.data.seq_len), int(config.data.height),
                               int(config.data.width), 3), jnp.float32)
  out = jax.eval_shape(lambda v, x: setup.model.apply(v, x, train=False)['descriptor'],
                       variables, clip)
  return int(out.shape[-1])


def _label(name: str, query: str) -> str:
  return os.path.basename(io.normalize(query).rstrip('/')) if name == '.' else name


def _picture(out_path: str, query_tracklets, gallery: dict, indices, distances) -> str | None:
  """Draws the first MAX_PICTURE_ROWS queries; None (after one line saying why) when
  gallery frames cannot be found or read."""
  rows = min(len(query_tracklets), MAX_PICTURE_ROWS)
  names = gallery['names']
  try:
    lookup = folders.frame_lookup(gallery['root'])
    frames = {int(g): lookup(str(names[g])) for g in np.unique(indices[:rows])}
  except DatasetError as e:
    say(f'[search] no picture: the gallery frames under {gallery["root"]!r} are gone or moved '
        f'({" ".join(str(e).split())})')
    return None
  try:
    visualize.ranked_list_picture(
        [paths for _, paths in query_tracklets[:rows]],
        [[frames[int(g)] for g in row] for row in indices[:rows]],
        [['junk'] * indices.shape[1] for _ in range(rows)], out_path,
        labels=[[f'{r + 1}: {d:.4g}' for r, d in enumerate(row)] for row in distances[:rows]],
        query_labels=[n[-24:] for n, _ in query_tracklets[:rows]])
  except OSError as e:  # an unreadable frame (PIL), or the picture could not be written
    say(f'[search] no picture: {type(e).__name__}: {" ".join(str(e).split())}')
    return None
  return out_path


def search(config, workdir: str, *, query: str, gallery: str, top_k: int = 10,
           step: Optional[int] = None, output: Optional[str] = None) -> dict:
  """Ranks the gallery of `gallery` (.npz) for every tracklet of `query`; prints the top
  `top_k` of each and writes the picture to `output` (default <workdir>/search_step<N>.png).

  Args:
    config: the checkpoint's config (grl_jax/main.py reads it from the checkpoint by default).
    workdir: the run (or convert output) holding the checkpoint.
    query, gallery, top_k, output: see the module docstring.
    step: checkpoint step; default the gallery's `step` (else the latest).
  Returns:
    {'queries': names [Q], 'indices': int64[Q, k] gallery rows, 'distances': float32[Q, k],
     'names': str[Q, k] gallery names, 'picture': the PNG path or None}.
  """
  validation.validate(config, device_count=jax.device_count(),
                      process_count=jax.process_count(), mode='search', check_data=False)
  if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
    raise ConfigError(f'--top_k={top_k!r}: expected an int >= 1')
  if not query:
    raise ConfigError('--query is required for --mode=search; expected a tracklet folder or a '
                      'folder of tracklet folders')
  g = load_gallery(gallery)
  if step is None and int(g.get('step', -1)) >= 0:
    step = int(g['step'])
  query_tracklets = [(_label(n, query), p) for n, p in folders.list_tracklets(query)]
  meta_step = int(checkpoint.read_meta(workdir, step).get('step', -1))
  output = offline.check_writable(output or io.join(workdir, f'search_step{meta_step}.png'))
  setup, variables, _ = offline.restore_for_inference(config, workdir, step)
  dim = descriptor_dim(config, setup, variables)
  if g['features'].shape[1] != dim:
    raise DatasetError(f'--gallery={gallery!r} holds {g["features"].shape[1]}-d features but '
                       f'the checkpoint in {workdir!r} (model {config.model.name!r}, step '
                       f'{meta_step}) gives {dim}-d descriptors; extract the gallery with '
                       'this checkpoint')
  metric = setup.spec.descriptor_distance
  t = time.time()
  qf = offline.folder_features(config, setup, variables, query_tracklets)
  k = min(top_k, len(g['features']))
  indices, distances = evaluation.top_k(qf, g['features'].astype(np.float32), k, metric)
  names = g['names'][indices]
  for (qname, paths), row_names, row_d in zip(query_tracklets, names, distances):
    say(f'[search] query {qname!r} ({len(paths)} frames): top {k} of {len(g["features"])} '
        f'gallery tracklets, {metric} distance')
    for r, (n, d) in enumerate(zip(row_names, row_d)):
      say(f'  {r + 1:>3}  {d:12.6g}  {n}')
  picture = None
  if jax.process_index() == 0:
    picture = _picture(output, query_tracklets, g, indices, distances)
    if picture:
      more = (f' (first {MAX_PICTURE_ROWS} of {len(query_tracklets)} queries)'
              if len(query_tracklets) > MAX_PICTURE_ROWS else '')
      say(f'[search] picture{more} written to {picture}')
  say(f'[search] {len(query_tracklets)} queries in {time.time() - t:.1f}s')
  return {'queries': [n for n, _ in query_tracklets], 'indices': indices,
          'distances': distances, 'names': names, 'picture': picture}
