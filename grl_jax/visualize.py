"""Ranked-list pictures: each query tracklet beside its top-k gallery tracklets (PIL + numpy).

One row per query. A tracklet is drawn as a strip of a few evenly spaced frames inside a
coloured border: blue for the query, green for a correct match (same pid, other camera), red
for a wrong one, grey for junk (same pid and camera; pid -1 too under the 'official' protocol).
Above each gallery strip is its rank in the junk-free list that CMC/mAP use ('x' for junk).

Layout (all in pixels; fh x fw = `frame_size`, n = `frames_per_tracklet`, b = `border`):
  cell     = (fh + 2b) high, (n * fw + 2b) wide
  row j    : label strip of LABEL_H above the cells; cells start at y = PAD + j * row_h + LABEL_H
             with row_h = LABEL_H + cell_h + PAD
  columns  : query at x = PAD; gallery i at x = PAD + cell_w + QUERY_GAP + i * (cell_w + PAD)
  picture  : width = PAD + cell_w + QUERY_GAP + k * cell_w + (k - 1) * PAD + PAD,
             height = PAD + rows * row_h
"""
from __future__ import annotations

import io as _io
import os
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageDraw

from grl_jax import io

PAD = 4
LABEL_H = 14
QUERY_GAP = 16
BACKGROUND = (255, 255, 255)
QUERY_COLOR = (40, 90, 230)
GOOD_COLOR = (0, 190, 0)
BAD_COLOR = (230, 0, 0)
JUNK_COLOR = (150, 150, 150)
TEXT_COLOR = (0, 0, 0)
STATUS_COLORS = {'good': GOOD_COLOR, 'bad': BAD_COLOR, 'junk': JUNK_COLOR}

# A tracklet: uint8 frames [T, H, W, 3] (or one [H, W, 3] frame), a list of such frames, or a
# list of image file paths.
Frames = Union[np.ndarray, Sequence[np.ndarray], Sequence[Union[str, os.PathLike]]]


def _pick(n_total: int, n: int) -> np.ndarray:
  """n evenly spaced indices into a tracklet of n_total frames (repeats when it is shorter)."""
  return np.round(np.linspace(0, n_total - 1, n)).astype(int)


def _load(frame) -> Image.Image:
  if isinstance(frame, (str, os.PathLike)):
    with Image.open(_io.BytesIO(io.read_bytes(str(frame)))) as im:
      return im.convert('RGB')
  a = np.asarray(frame)
  if a.dtype != np.uint8:
    raise ValueError(f'visualize: frames must be uint8 [H, W, 3] arrays or image paths, got '
                     f'dtype {a.dtype} shape {a.shape}')
  if a.ndim == 2:
    a = np.repeat(a[..., None], 3, axis=-1)
  if a.ndim != 3 or a.shape[-1] != 3:
    raise ValueError(f'visualize: a frame must be [H, W, 3], got shape {a.shape}')
  return Image.fromarray(a, 'RGB')


def tracklet_strip(frames: Frames, n: int, frame_size: tuple[int, int]) -> np.ndarray:
  """uint8[fh, n * fw, 3]: `n` evenly spaced frames of a tracklet, resized, side by side."""
  if isinstance(frames, np.ndarray) and frames.ndim == 3 and frames.shape[-1] == 3 and (
      frames.dtype == np.uint8):
    frames = frames[None]
  if len(frames) == 0:
    raise ValueError('visualize: a tracklet has no frames')
  fh, fw = frame_size
  strip = np.empty((fh, n * fw, 3), np.uint8)
  for k, i in enumerate(_pick(len(frames), n)):
    im = _load(frames[i]).resize((fw, fh), Image.BILINEAR)
    strip[:, k * fw:(k + 1) * fw] = np.asarray(im)
  return strip


def picture_size(num_rows: int, top_k: int, frames_per_tracklet: int = 4,
                 frame_size: tuple[int, int] = (128, 64), border: int = 3) -> tuple[int, int]:
  """(height, width) of a `ranked_list_picture` (see the module docstring)."""
  cell_w = frames_per_tracklet * frame_size[1] + 2 * border
  cell_h = frame_size[0] + 2 * border
  width = PAD + cell_w + QUERY_GAP + top_k * cell_w + max(top_k - 1, 0) * PAD + PAD
  return PAD + num_rows * (LABEL_H + cell_h + PAD), width


def cell_origin(row: int, column: int, frames_per_tracklet: int = 4,
                frame_size: tuple[int, int] = (128, 64), border: int = 3) -> tuple[int, int]:
  """(y, x) of the top-left border pixel of a cell; column -1 is the query, 0.. the ranks."""
  cell_w = frames_per_tracklet * frame_size[1] + 2 * border
  cell_h = frame_size[0] + 2 * border
  y = PAD + row * (LABEL_H + cell_h + PAD) + LABEL_H
  x = PAD if column < 0 else PAD + cell_w + QUERY_GAP + column * (cell_w + PAD)
  return y, x


def ranked_list_picture(queries: Sequence[Frames], galleries: Sequence[Sequence[Frames]],
                        statuses: Sequence[Sequence[str]], out_path: str | os.PathLike | None,
                        *, labels: Sequence[Sequence[str]] | None = None,
                        query_labels: Sequence[str] | None = None, frames_per_tracklet: int = 4,
                        frame_size: tuple[int, int] = (128, 64),
                        border: int = 3) -> np.ndarray:
  """Draws query rows with their ranked gallery tracklets and writes a PNG.

  Args:
    queries: R query tracklets (see `Frames`).
    galleries: per row, the ranked gallery tracklets to show (rows may be shorter than the
      longest; the picture is as wide as the longest).
    statuses: per row and rank, 'good' | 'bad' | 'junk' (border colour).
    out_path: PNG path (parent folders are created); None = only return the array.
    labels: per row and rank, the text above the cell (default: 1, 2, ...).
    query_labels: per row, the text above the query (default: 'query').
    frames_per_tracklet: frames drawn per tracklet, evenly spaced over it.
    frame_size: (height, width) of each drawn frame.
    border: border width.

  Returns:
    uint8[H, W, 3], the picture (H, W from `picture_size`).
  """
  if not (len(queries) == len(galleries) == len(statuses)):
    raise ValueError(f'visualize: {len(queries)} queries, {len(galleries)} gallery rows and '
                     f'{len(statuses)} status rows; expected the same number')
  top_k = max((len(g) for g in galleries), default=0)
  height, width = picture_size(len(queries), top_k, frames_per_tracklet, frame_size, border)
  canvas = Image.new('RGB', (width, height), BACKGROUND)
  draw = ImageDraw.Draw(canvas)
  fh, fw = frame_size
  cell = (fh + 2 * border, frames_per_tracklet * fw + 2 * border)

  def put(row, column, frames, color, text):
    y, x = cell_origin(row, column, frames_per_tracklet, frame_size, border)
    draw.rectangle([x, y, x + cell[1] - 1, y + cell[0] - 1], fill=color)
    strip = tracklet_strip(frames, frames_per_tracklet, frame_size)
    canvas.paste(Image.fromarray(strip, 'RGB'), (x + border, y + border))
    draw.text((x + 1, y - LABEL_H + 1), text, fill=TEXT_COLOR)

  for r, (q, gal, st) in enumerate(zip(queries, galleries, statuses)):
    if len(st) != len(gal):
      raise ValueError(f'visualize: row {r} has {len(gal)} gallery tracklets but {len(st)} '
                       'statuses')
    put(r, -1, q, QUERY_COLOR, query_labels[r] if query_labels else 'query')
    for i, (frames, s) in enumerate(zip(gal, st)):
      if s not in STATUS_COLORS:
        raise ValueError(f'visualize: status {s!r} (row {r}, rank {i}); expected one of '
                         f'{tuple(STATUS_COLORS)}')
      put(r, i, frames, STATUS_COLORS[s], labels[r][i] if labels else str(i + 1))
  if out_path is not None:
    io.save_png(str(out_path), canvas)
  return np.asarray(canvas)


def ranked_list(dist_row: np.ndarray, q_pid: int, q_camid: int, g_pids: np.ndarray,
                g_camids: np.ndarray, top_k: int = 10, protocol: str = 'torchreid',
                show_junk: bool = True) -> tuple[np.ndarray, list[str], list[str]]:
  """The top of one query's ranking, as the metrics see it.

  Args:
    dist_row: float[Ng] distances of the query to the gallery.
    q_pid, q_camid: the query's ids; g_pids, g_camids: int[Ng].
    top_k: entries to return.
    protocol: 'official' also treats pid -1 entries as junk; other protocols only same pid and
      camera.
    show_junk: keep junk entries in the list (labelled 'x'); False skips them.

  Returns:
    (gallery indices int[<= top_k], statuses, labels) where labels are the 1-based ranks in the
    junk-free list (ties broken by gallery index, as in `grl_jax.evaluation`).
  """
  dist_row = np.asarray(dist_row)
  g_pids, g_camids = np.asarray(g_pids), np.asarray(g_camids)
  order = np.argsort(dist_row, kind='stable')
  same = g_pids[order] == q_pid
  junk = same & (g_camids[order] == q_camid)
  if protocol == 'official':
    junk |= g_pids[order] == -1
  good = same & ~junk
  idx, statuses, labels = [], [], []
  rank = 0
  for g, j, ok in zip(order, junk, good):
    if len(idx) == top_k:
      break
    if j:
      if show_junk:
        idx.append(g)
        statuses.append('junk')
        labels.append('x')
      continue
    rank += 1
    idx.append(g)
    statuses.append('good' if ok else 'bad')
    labels.append(str(rank))
  return np.asarray(idx, np.int64), statuses, labels


def ranked_list_picture_from_distances(distmat: np.ndarray, query, gallery,
                                       query_rows: Sequence[int],
                                       out_path: str | os.PathLike | None, *, top_k: int = 10,
                                       protocol: str = 'torchreid', show_junk: bool = True,
                                       frames_per_tracklet: int = 4,
                                       frame_size: tuple[int, int] = (128, 64),
                                       border: int = 3) -> np.ndarray:
  """`ranked_list_picture` for chosen queries of an evaluation.

  Args:
    distmat: float[Nq, Ng], rows in `query` order, columns in `gallery` order.
    query, gallery: TrackletIndex-like objects (`frames(i)` -> frame paths, `pids`, `camids`).
    query_rows: which query tracklets to draw, one picture row each.
    Others: see `ranked_list` and `ranked_list_picture`.
  """
  if distmat.shape != (len(query), len(gallery)):
    raise ValueError(f'visualize: distmat has shape {distmat.shape}, expected '
                     f'({len(query)}, {len(gallery)}) = (queries, gallery tracklets)')
  qs, gals, sts, labs, qlabs = [], [], [], [], []
  for qi in query_rows:
    row = distmat[qi]
    q_pid, q_cam = int(query.pids[qi]), int(query.camids[qi])
    idx, st, lab = ranked_list(row, q_pid, q_cam, gallery.pids, gallery.camids, top_k,
                               protocol, show_junk)
    qs.append(query.frames(qi))
    gals.append([gallery.frames(int(g)) for g in idx])
    sts.append(st)
    labs.append(lab)
    qlabs.append(f'q{qi} id{q_pid} c{q_cam}')
  return ranked_list_picture(qs, gals, sts, out_path, labels=labs, query_labels=qlabs,
                             frames_per_tracklet=frames_per_tracklet, frame_size=frame_size,
                             border=border)
