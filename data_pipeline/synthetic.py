"""Synthetic MARS: a complete MARS-layout tree of rendered walking people, for tests and demos.

    python -m data_pipeline.synthetic --root=/tmp/synmars [--ids 32] [--test-ids 32] [--seed 0]
        [--height 256 --width 128] [--max-len 150] [--force]

    from data_pipeline import synthetic
    summary = synthetic.ensure('/tmp/synmars', height=128, width=64)   # generate if absent

The tree is exactly what `data_pipeline.datasets.mars` reads from the real MARS, so it exercises
the same code path:
```
<root>/bbox_train/<pid4>/<pid4>C<cam>T<tracklet4>F<frame3>.jpg
<root>/bbox_test/<pid4 | 0000 | 00-1>/...      0000 = distractor, 00-1 = junk tracklets
<root>/info/{train_name.txt, test_name.txt}
<root>/info/tracks_train_info.mat  'track_train_info' int32 N×4 (start, end 1-based; pid; cam)
<root>/info/tracks_test_info.mat   'track_test_info'
<root>/info/query_IDX.mat          'query_IDX' uint16 1×K, 1-based rows of track_test_info
<root>/info/.synthetic_complete    JSON of the parameters, written LAST
```

What makes it a fair (small) re-ID task rather than a colour-lookup one:
- identity: top and bottom colours from one shared palette (many ids share colours), a top
  pattern (plain, horizontal/vertical stripes, checks, chest logo), sleeves, shorts or trousers,
  body height/width/head size, skin and hair colour and length, shoes, an optional bag;
- camera (shared by train and test): illumination gain, colour cast, gamma, vertical light
  gradient, blur, sensor noise, resolution loss, person scale and a textured background (wall
  and floor), which covers most of the crop so that the mean colour of a tracklet says more
  about its camera than about its identity;
- tracklet: facing front or back (logo/backpack visible or not), walking phase and speed (leg
  and arm swing), horizontal drift and jitter, vertical bob, a small brightness change, and for
  some tracklets an occluder (pole, box in front of the legs, or a passer-by);
- MARS-like statistics: long-tailed tracklet lengths (mostly 8-60 frames, a few up to
  `max_len`), every test id in >= 2 cameras, junk (-1) and distractor (0) tracklets in the test
  split, and one query per (id, camera) pair where that leaves every query a gallery match in
  another camera.

Everything is a function of `seed`: numpy Generators are seeded per (id), (camera) and
(id, camera, tracklet), and PIL's JPEG encoder is deterministic, so the same arguments give the
same bytes. Generation writes `.synthetic_in_progress` in the root first and
`info/.synthetic_complete` last; `ensure` regenerates a tree whose completion marker is missing
or whose parameters differ, and refuses to touch a directory that holds a MARS-like tree it did
not write. Local directories only.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import shutil
import sys
import time
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageFilter

COMPLETE_MARKER = os.path.join('info', '.synthetic_complete')
PROGRESS_MARKER = '.synthetic_in_progress'
FORMAT_VERSION = 1
_OWNED = ('bbox_train', 'bbox_test', 'info')
_MAT_HEADER = b'MATLAB 5.0 MAT-file, Platform: GLNXA64, Created by: grl_jax synthetic MARS'

# Clothing palette shared by all ids (RGB), so several ids wear the same colours.
PALETTE = np.array([
    (25, 25, 30), (230, 230, 225), (128, 128, 130), (40, 52, 110), (175, 35, 40),
    (45, 110, 55), (215, 190, 65), (120, 82, 50), (95, 145, 205), (205, 125, 160),
    (100, 45, 120), (210, 120, 45), (70, 95, 70), (190, 172, 140)], np.float32)
# Bottoms are mostly dark/neutral, as in street scenes.
BOTTOM_WEIGHTS = np.array([5, 1, 3, 5, 1, 1, 0.5, 2, 2, 0.5, 0.5, 0.5, 1.5, 2], np.float64)
SKIN = np.array([(250, 215, 185), (225, 180, 145), (190, 140, 100), (140, 95, 65),
                 (100, 70, 50)], np.float32)
HAIR = np.array([(20, 15, 12), (60, 40, 25), (110, 75, 40), (200, 170, 110), (150, 150, 150)],
                np.float32)
PATTERNS = ('plain', 'hstripes', 'vstripes', 'checks', 'logo')


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Parameters of a synthetic MARS tree (all recorded in the completion marker)."""
  num_train_ids: int = 32
  num_test_ids: int = 32
  seed: int = 0
  height: int = 256
  width: int = 128
  num_cameras: int = 6
  min_tracklets: int = 4       # per identity
  max_tracklets: int = 8
  min_len: int = 2
  median_len: int = 24         # lognormal body of the length distribution
  max_len: int = 150           # cap of the long tail (<= 999: 3-digit frame numbers)
  long_fraction: float = 0.08  # share of tracklets drawn from the long tail
  junk_fraction: float = 0.07  # junk / distractor tracklets, relative to id tracklets in test
  distractor_fraction: float = 0.15
  occlusion_prob: float = 0.25
  quality: int = 90

  def validate(self) -> None:
    if self.num_train_ids < 1 or self.num_test_ids < 1:
      raise ValueError('need at least one train and one test identity')
    if self.num_train_ids + self.num_test_ids > 4000:
      raise ValueError('at most 4000 identities (MARS names hold 4-digit pids)')
    if not 2 <= self.num_cameras <= 9:
      raise ValueError(f'num_cameras must be 2..9 (one-digit MARS camera), got {self.num_cameras}')
    if not 1 <= self.min_tracklets <= self.max_tracklets:
      raise ValueError('need 1 <= min_tracklets <= max_tracklets')
    if not 1 <= self.min_len <= self.median_len <= self.max_len <= 999:
      raise ValueError('need 1 <= min_len <= median_len <= max_len <= 999')
    if self.height < 16 or self.width < 8:
      raise ValueError(f'image size {self.height}x{self.width} is too small (min 16x8)')


# ------------------------------------------------------------------------------------------------
# Planning: which tracklets exist (ids, cameras, lengths, queries)


@dataclasses.dataclass
class _Tracklet:
  pid: int         # MARS pid: -1 junk, 0 distractor, else identity
  cam: int         # 1-based
  number: int = 0  # T number, per (pid, cam), 1-based
  length: int = 0
  start: int = 0   # 1-based row range in the name list, filled when laid out
  end: int = 0

  @property
  def code(self) -> str:
    return '00-1' if self.pid == -1 else f'{self.pid:04d}'

  def name(self, frame: int) -> str:
    return f'{self.code}C{self.cam}T{self.number:04d}F{frame:03d}.jpg'


def _length(rng: np.random.Generator, cfg: SyntheticConfig, median: float) -> int:
  if rng.random() < cfg.long_fraction:
    value = rng.lognormal(math.log(max(median * 3.5, 1.0)), 0.45)
  else:
    value = rng.lognormal(math.log(median), 0.55)
  return int(np.clip(round(value), cfg.min_len, cfg.max_len))


def _identity_tracklets(rng, cfg: SyntheticConfig, pid: int) -> list[_Tracklet]:
  # Cameras per id: 2 plus a binomial tail (MARS ids average about 3 cameras).
  k = min(cfg.num_cameras, 2 + int(rng.binomial(cfg.num_cameras - 2, 0.3)))
  cams = np.sort(rng.choice(np.arange(1, cfg.num_cameras + 1), size=k, replace=False))
  n = max(k, int(rng.integers(cfg.min_tracklets, cfg.max_tracklets + 1)))
  chosen = list(cams) + list(rng.choice(cams, size=n - k))
  return [_Tracklet(pid, int(c), length=_length(rng, cfg, cfg.median_len)) for c in chosen]


def _number_and_sort(tracklets: list[_Tracklet]) -> list[_Tracklet]:
  """Assigns T numbers per (pid, cam) and sorts like the MARS name lists; fills start/end."""
  tracklets.sort(key=lambda t: (t.code, t.cam))  # stable: keeps generation order within
  counters: dict[tuple[int, int], int] = {}
  row = 1
  for t in tracklets:
    counters[(t.pid, t.cam)] = counters.get((t.pid, t.cam), 0) + 1
    t.number = counters[(t.pid, t.cam)]
    t.start, t.end = row, row + t.length - 1
    row = t.end + 1
  return tracklets


def _choose_queries(rng, tracklets: list[_Tracklet]) -> list[int]:
  """One query per (id, camera) while every query keeps a non-query match in another camera."""
  by_id: dict[int, list[int]] = {}
  for i, t in enumerate(tracklets):
    if t.pid > 0:
      by_id.setdefault(t.pid, []).append(i)
  queries = []
  for pid in sorted(by_id):
    rows = by_id[pid]
    cams = sorted({tracklets[i].cam for i in rows})
    chosen: list[int] = []
    for cam in rng.permutation(cams):
      candidates = [i for i in rows if tracklets[i].cam == cam]
      trial = chosen + [int(rng.choice(candidates))]
      gallery = [i for i in rows if i not in trial]
      if all(any(tracklets[g].cam != tracklets[q].cam for g in gallery) for q in trial):
        chosen = trial
    queries.extend(chosen)
  return sorted(queries)


def plan(cfg: SyntheticConfig) -> dict[str, Any]:
  """The tracklet layout of both splits (no pixels)."""
  rng = np.random.default_rng([cfg.seed, 0])
  total = cfg.num_train_ids + cfg.num_test_ids
  pool = np.arange(1, min(9999, 2 * total) + 1)
  pids = rng.choice(pool, size=total, replace=False)
  train_ids = sorted(int(p) for p in pids[:cfg.num_train_ids])
  test_ids = sorted(int(p) for p in pids[cfg.num_train_ids:])
  train = [t for p in train_ids for t in _identity_tracklets(rng, cfg, p)]
  test = [t for p in test_ids for t in _identity_tracklets(rng, cfg, p)]
  n_id = len(test)
  for pid, frac in ((-1, cfg.junk_fraction), (0, cfg.distractor_fraction)):
    count = int(round(frac * n_id)) if frac > 0 else 0
    count = max(count, 1) if frac > 0 else 0
    for _ in range(count):
      cam = int(rng.integers(1, cfg.num_cameras + 1))
      test.append(_Tracklet(pid, cam, length=_length(rng, cfg, max(cfg.min_len,
                                                                  cfg.median_len // 2))))
  train = _number_and_sort(train)
  test = _number_and_sort(test)
  queries = _choose_queries(rng, test)
  return {'train': train, 'test': test, 'query_rows': queries, 'train_ids': train_ids,
          'test_ids': test_ids}


# ------------------------------------------------------------------------------------------------
# Appearance models


def _jitter_colour(rng, colour, amount=12.0):
  return np.clip(colour + rng.normal(0, amount, 3), 0, 255).astype(np.float32)


def identity_appearance(seed: int, pid: int) -> dict[str, Any]:
  """Clothes, body and hair of one identity (a pure function of seed and pid)."""
  rng = np.random.default_rng([seed, 1, pid + 1])
  top_i = int(rng.integers(len(PALETTE)))
  pattern_i = (top_i + 1 + int(rng.integers(len(PALETTE) - 1))) % len(PALETTE)
  bottom_i = int(rng.choice(len(PALETTE), p=BOTTOM_WEIGHTS / BOTTOM_WEIGHTS.sum()))
  skin = SKIN[int(rng.integers(len(SKIN)))]
  return {
      'top': _jitter_colour(rng, PALETTE[top_i]),
      'pattern_colour': _jitter_colour(rng, PALETTE[pattern_i]),
      'pattern': PATTERNS[int(rng.choice(len(PATTERNS), p=[0.36, 0.2, 0.14, 0.14, 0.16]))],
      'period': float(rng.uniform(0.03, 0.06)),         # stripe period / person height
      'bottom': _jitter_colour(rng, PALETTE[bottom_i]),
      'shorts': bool(rng.random() < 0.2),
      'long_sleeves': bool(rng.random() < 0.6),
      'skin': _jitter_colour(rng, skin, 8.0),
      'hair': _jitter_colour(rng, HAIR[int(rng.integers(len(HAIR)))], 8.0),
      'long_hair': bool(rng.random() < 0.3),
      'shoes': _jitter_colour(rng, PALETTE[int(rng.choice([0, 1, 2, 7]))], 10.0),
      'bag': str(rng.choice(['none', 'none', 'backpack', 'shoulder'])),
      'bag_colour': _jitter_colour(rng, PALETTE[int(rng.integers(len(PALETTE)))]),
      'height': float(rng.uniform(0.8, 0.93)),          # person height / frame height
      'shoulder': float(rng.uniform(0.11, 0.15)),       # half shoulder width / person height
      'torso': float(rng.uniform(0.29, 0.34)),
      'head': float(rng.uniform(0.9, 1.1)),
      'build': float(rng.uniform(0.85, 1.2)),           # limb thickness factor
  }


def _smooth_noise(rng, h: int, w: int, cells_h: int, cells_w: int) -> np.ndarray:
  """Value noise in [0, 1]: a coarse random grid, bilinearly upsampled (float32[h, w])."""
  coarse = (rng.random((cells_h, cells_w)) * 255).astype(np.uint8)
  return np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR), np.float32) / 255.0


def camera_model(seed: int, cam: int, height: int, width: int) -> dict[str, Any]:
  """Illumination, optics and a wide textured background of one camera."""
  rng = np.random.default_rng([seed, 2, cam])
  bh, bw = height, 3 * width  # wide so the crop can slide along it as the person walks
  ys = np.arange(bh, dtype=np.float32)[:, None] / bh
  xs = np.arange(bw, dtype=np.float32)[None, :] / width
  horizon = rng.uniform(0.45, 0.75)
  # Muted colours: a grey level plus a moderate tint.
  wall = np.clip(rng.uniform(60, 200) + rng.normal(0, 30, 3), 20, 235).astype(np.float32)
  floor = np.clip(rng.uniform(50, 170) + rng.normal(0, 20, 3), 20, 220).astype(np.float32)
  wall_tex = str(rng.choice(['bricks', 'panels', 'windows', 'noise']))
  noise = _smooth_noise(rng, bh, bw, 12, 24)
  fine = _smooth_noise(rng, bh, bw, max(2, bh // 6), max(2, bw // 6))
  if wall_tex == 'bricks':
    period = rng.uniform(0.06, 0.1)
    row = np.floor(ys / period)
    mortar = ((ys % period) < period * 0.15) | (
        ((xs * width / height + 0.5 * (row % 2) * period * 2) % (period * 2)) < period * 0.15)
    pattern = np.where(mortar, 0.7, 1.0)
  elif wall_tex == 'panels':
    pattern = np.where((xs % rng.uniform(0.3, 0.6)) < 0.04, 0.65, 1.0) * np.ones_like(ys)
  elif wall_tex == 'windows':
    pw, ph = rng.uniform(0.35, 0.6), rng.uniform(0.18, 0.3)
    win = ((xs % pw) > pw * 0.35) & ((ys % ph) > ph * 0.4)
    pattern = np.where(win, rng.uniform(0.5, 1.5), 1.0)
  else:
    pattern = np.ones((bh, bw), np.float32)
  wall_img = wall * (pattern * (0.75 + 0.5 * noise) * (0.9 + 0.2 * fine))[..., None]
  tile = rng.uniform(0.15, 0.4)
  floor_lines = ((xs % tile) < 0.02) | (((ys - horizon) % (tile * 0.5)) < 0.01)
  floor_img = floor * (np.where(floor_lines, 0.8, 1.0) * (0.8 + 0.4 * fine)
                       * (0.85 + 0.3 * (ys - horizon)))[..., None]
  background = np.where((ys < horizon)[..., None], wall_img, floor_img)
  background = np.clip(background, 0, 255).astype(np.float32)
  return {
      'background': background,
      'gain': float(rng.uniform(0.6, 1.25)),
      'cast': rng.uniform(0.82, 1.18, 3).astype(np.float32),
      'gamma': float(rng.uniform(0.8, 1.25)),
      'gradient': float(rng.uniform(-0.35, 0.35)),     # light from above / below
      'blur': float(rng.uniform(0.0, 1.3)) * height / 256,
      'noise': float(rng.uniform(1.5, 6.0)),
      'lowres': float(rng.choice([1.0, 1.0, 0.7, 0.5])),
      'scale': float(rng.uniform(0.85, 1.0)),
  }


def tracklet_motion(seed: int, t: _Tracklet, junk: bool) -> dict[str, Any]:
  """Viewpoint, gait and crop motion of one tracklet, plus its own Generator ('rng') that the
  renderer keeps drawing from (per-frame jitter, occluder, noise), seeded by (seed, pid, cam, T).
  Junk tracklets get badly scaled and off-centre crops."""
  rng = np.random.default_rng([seed, 3, t.pid + 1, t.cam, t.number])
  return {
      'rng': rng,
      'facing': str(rng.choice(['front', 'back'])),
      'phase': float(rng.uniform(0, 2 * np.pi)),
      'period': float(rng.uniform(8, 16)),              # frames per walking cycle
      'swing': float(rng.uniform(0.07, 0.14)),          # foot displacement / person height
      'drift': float(rng.normal(0, 0.004)),             # crop-centre drift / width per frame
      'bg_speed': float(rng.uniform(-0.02, 0.02)),      # background slide / width per frame
      'bg_x': float(rng.uniform(0, 1.0)),
      'gain': float(rng.uniform(0.9, 1.1)),
      'scale': float(rng.uniform(0.95, 1.03)) * (rng.uniform(0.6, 1.6) if junk else 1.0),
      'offset': (rng.normal(0, 0.3, 2) if junk else np.zeros(2)).astype(np.float32),
  }


# ------------------------------------------------------------------------------------------------
# Rendering


class _Painter:
  """Paints shapes onto a float32[H, W, 3] canvas, evaluating each mask only on its bounding box.

  Coordinates are pixel indices (y down, x right); shapes are clipped to the canvas.
  """

  def __init__(self, canvas: np.ndarray):
    self.canvas = canvas
    self.h, self.w = canvas.shape[:2]

  def _window(self, y0, y1, x0, x1):
    y0, y1 = max(0, int(math.floor(y0))), min(self.h, int(math.ceil(y1)) + 1)
    x0, x1 = max(0, int(math.floor(x0))), min(self.w, int(math.ceil(x1)) + 1)
    if y1 <= y0 or x1 <= x0:
      return None
    yy = np.arange(y0, y1, dtype=np.float32)[:, None]
    xx = np.arange(x0, x1, dtype=np.float32)[None, :]
    return self.canvas[y0:y1, x0:x1], yy, xx

  def rect(self, y0, y1, x0, x1, colour, where=None):
    """Axis-aligned box [y0, y1) x [x0, x1); `where(yy, xx)` optionally narrows it."""
    win = self._window(y0, y1 - 1, x0, x1 - 1)
    if win is None:
      return
    view, yy, xx = win
    mask = (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)
    if where is not None:
      mask = mask & where(yy, xx)
    view[mask] = colour

  def segment(self, a, b, radius, colour, where=None):
    """Pixels within `radius` of segment a->b (points (y, x))."""
    (ay, ax), (by, bx) = a, b
    win = self._window(min(ay, by) - radius, max(ay, by) + radius,
                       min(ax, bx) - radius, max(ax, bx) + radius)
    if win is None:
      return
    view, yy, xx = win
    dy, dx = by - ay, bx - ax
    s = np.clip(((yy - ay) * dy + (xx - ax) * dx) / (dy * dy + dx * dx + 1e-6), 0.0, 1.0)
    mask = (yy - ay - s * dy) ** 2 + (xx - ax - s * dx) ** 2 <= radius * radius
    if where is not None:
      mask = mask & where(yy, xx)
    view[mask] = colour

  def ellipse(self, cy, cx, ry, rx, colour, where=None):
    win = self._window(cy - ry, cy + ry, cx - rx, cx + rx)
    if win is None:
      return
    view, yy, xx = win
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    if where is not None:
      mask = mask & where(yy, xx)
    view[mask] = colour


def render_person(canvas: np.ndarray, app: dict, *, cx: float, feet_y: float, person_h: float,
                  phase: float, swing: float, facing: str) -> None:
  """Paints one walking person onto `canvas` (float32[H, W, 3]) in place.

  Args:
    canvas: the frame being drawn.
    app: `identity_appearance` of the person.
    cx, feet_y: horizontal centre and foot line in pixels.
    person_h: height in pixels, head to feet.
    phase: walking-cycle phase (radians); legs and arms swing with sin(phase).
    swing: foot displacement at full stride, as a fraction of person_h.
    facing: 'front' or 'back' (hair over the face, backpack or its straps, chest logo).
  """
  paint = _Painter(canvas)
  ph = person_h
  top = feet_y - ph
  head_r = 0.062 * ph * app['head']
  head_cy = top + head_r
  y_shoulder = top + 2 * head_r + 0.02 * ph
  y_waist = y_shoulder + app['torso'] * ph
  half_w = app['shoulder'] * ph
  limb = 0.036 * ph * app['build']
  s = math.sin(phase)
  foot_dx = swing * ph * s

  # Long hair hangs behind the shoulders.
  if app['long_hair']:
    paint.rect(head_cy, y_shoulder + 0.1 * ph, cx - head_r * 1.05, cx + head_r * 1.05,
               app['hair'])
  # Arms (behind the torso), swinging against the legs.
  arm_colour = app['top'] if app['long_sleeves'] else app['skin']
  for side in (-1, 1):
    shoulder = (y_shoulder + limb, cx + side * half_w * 0.92)
    hand = (y_shoulder + 0.36 * ph, cx + side * (half_w + 0.02 * ph) - 0.45 * foot_dx * side)
    paint.segment(shoulder, hand, limb * 0.8, arm_colour)
    if app['long_sleeves']:
      paint.ellipse(hand[0], hand[1], limb * 0.9, limb * 0.9, app['skin'])
  # Legs: trousers (or shorts, then skin below the knee) and shoes.
  knee_y = y_waist + 0.45 * (feet_y - y_waist)
  for side, sign in ((-1, 1), (1, -1)):
    hip = (y_waist, cx + side * half_w * 0.42)
    foot = (feet_y - 0.03 * ph * max(0.0, sign * s), hip[1] + sign * foot_dx)
    if app['shorts']:
      paint.segment(hip, foot, limb * 1.1, app['skin'], where=lambda yy, xx: yy >= knee_y)
      paint.segment(hip, foot, limb * 1.1, app['bottom'], where=lambda yy, xx: yy < knee_y)
    else:
      paint.segment(hip, foot, limb * 1.1, app['bottom'])
    paint.ellipse(foot[0], foot[1] + side * 0.01 * ph, limb * 0.8, limb * 1.5, app['shoes'])
  paint.rect(y_waist - 0.02 * ph, y_waist + 0.07 * ph, cx - half_w * 0.85, cx + half_w * 0.85,
             app['bottom'])
  # Torso tapering to the waist, then its pattern.
  torso_h = y_waist - y_shoulder

  def torso(yy, xx):
    return np.abs(xx - cx) < half_w * (1 - 0.15 * np.clip((yy - y_shoulder) / torso_h, 0, 1))

  paint.rect(y_shoulder, y_waist, cx - half_w, cx + half_w, app['top'], where=torso)
  period = max(2.0, app['period'] * ph)
  pattern = app['pattern']
  off = 100 * period  # keeps floor division away from negative numbers
  stripes = {
      'hstripes': lambda yy, xx: ((yy - y_shoulder) // period) % 2 == 1,
      'vstripes': lambda yy, xx: ((xx - cx + off) // period) % 2 == 1,
      'checks': lambda yy, xx: (((yy - y_shoulder) // period
                                 + (xx - cx + off) // period) % 2) == 1,
  }
  if pattern in stripes:
    paint.rect(y_shoulder, y_waist, cx - half_w, cx + half_w, app['pattern_colour'],
               where=lambda yy, xx, f=stripes[pattern]: torso(yy, xx) & f(yy, xx))
  elif pattern == 'logo' and facing == 'front':
    ly = y_shoulder + 0.4 * torso_h
    paint.rect(ly - half_w * 0.35, ly + half_w * 0.35, cx - half_w * 0.4, cx + half_w * 0.4,
               app['pattern_colour'])
  # Bags.
  if app['bag'] == 'backpack':
    if facing == 'back':
      paint.rect(y_shoulder + 0.03 * ph, y_shoulder + 0.8 * torso_h, cx - half_w * 0.7,
                 cx + half_w * 0.7, app['bag_colour'])
    else:
      strap = 0.014 * ph + 0.5
      for side in (-1, 1):
        sx = cx + side * half_w * 0.5
        paint.rect(y_shoulder, y_waist, sx - strap, sx + strap, app['bag_colour'])
  elif app['bag'] == 'shoulder':
    paint.segment((y_shoulder, cx - half_w * 0.7), (y_waist, cx + half_w * 0.8),
                  0.012 * ph + 0.5, app['bag_colour'])
    by, bx = y_waist + 0.02 * ph, cx + half_w * 1.05
    paint.rect(by - 0.05 * ph, by + 0.05 * ph, bx - 0.06 * ph, bx + 0.06 * ph, app['bag_colour'])
  # Neck, head and hair (a back view shows only hair).
  paint.rect(head_cy, y_shoulder + 1, cx - head_r * 0.4, cx + head_r * 0.4, app['skin'])
  paint.ellipse(head_cy, cx, head_r, head_r * 0.85,
                app['hair'] if facing == 'back' else app['skin'])
  paint.ellipse(head_cy, cx, head_r, head_r * 0.85, app['hair'],
                where=lambda yy, xx: yy < head_cy - 0.3 * head_r)


def _camera_multiplier(cam: dict, gain: float, h: int) -> np.ndarray:
  """float32[H, 1, 3]: colour cast x gain x vertical light gradient."""
  rows = np.arange(h, dtype=np.float32) / h
  return ((1.0 + cam['gradient'] * (0.5 - rows))[:, None, None]
          * (cam['cast'] * (cam['gain'] * gain))[None, None, :]).astype(np.float32)


def _gamma_lut(gamma: float) -> np.ndarray:
  return np.round(255.0 * (np.arange(256) / 255.0) ** gamma).astype(np.uint8)


def _apply_camera(img: np.ndarray, cam: dict, multiplier: np.ndarray, lut: np.ndarray,
                  noise: np.ndarray) -> Image.Image:
  """Illumination, noise, gamma, resolution loss and blur of `cam` on float32[H, W, 3]."""
  img = img * multiplier + noise
  out = Image.fromarray(lut[np.clip(img + 0.5, 0, 255).astype(np.uint8)])
  h, w = img.shape[:2]
  if cam['lowres'] < 1.0:
    small = (max(4, int(w * cam['lowres'])), max(8, int(h * cam['lowres'])))
    out = out.resize(small, Image.BILINEAR).resize((w, h), Image.BILINEAR)
  if cam['blur'] > 0.25:
    # One box pass (std ~ 0.8 x radius): ~3x cheaper than PIL's 3-pass GaussianBlur.
    out = out.filter(ImageFilter.BoxBlur(1.2 * cam['blur']))
  return out


def render_tracklet(cfg: SyntheticConfig, t: _Tracklet, cam: dict) -> list[Image.Image]:
  """All frames of one tracklet as PIL images (a pure function of cfg.seed and t)."""
  h, w = cfg.height, cfg.width
  junk = t.pid <= 0
  motion = tracklet_motion(cfg.seed, t, junk)
  rng = motion['rng']
  # Junk and distractor tracklets show a one-off person (or nobody), never a real identity.
  app = identity_appearance(cfg.seed, 100000 + t.cam * 10000 + t.number + (
      5000 if t.pid == 0 else 0)) if junk else identity_appearance(cfg.seed, t.pid)
  show_person = not (t.pid == 0 and rng.random() < 0.5)
  occ = 'none'
  if rng.random() < cfg.occlusion_prob:
    occ = str(rng.choice(['pole', 'box', 'passer']))
  occ_x = rng.uniform(0.1, 0.9) * w
  occ_w = rng.uniform(0.06, 0.14) * w
  occ_colour = rng.uniform(30, 200, 3).astype(np.float32)
  box_top = rng.uniform(0.6, 0.8) * h
  passer_app = identity_appearance(cfg.seed, 200000 + t.cam * 10000 + t.number)
  passer_dir = rng.choice([-1.0, 1.0])

  multiplier = _camera_multiplier(cam, motion['gain'], h)
  lut = _gamma_lut(cam['gamma'])
  pad = 8
  # One noise field per tracklet, viewed at a random offset per frame (cheaper than drawing
  # fresh noise for every frame, and still not constant across frames).
  noise_bank = rng.standard_normal((h + pad, w + pad, 3), dtype=np.float32) * cam['noise']
  bg = cam['background']
  bw = bg.shape[1]
  cx = w / 2 + rng.normal(0, 0.04) * w
  person_h = h * app['height'] * cam['scale'] * motion['scale']
  frames = []
  for f in range(t.length):
    x0 = int((motion['bg_x'] * (bw - w) + f * motion['bg_speed'] * w)) % (bw - w + 1)
    canvas = bg[:, x0:x0 + w].copy()
    cx = cx + motion['drift'] * w + rng.normal(0, 0.012) * w
    cx = float(np.clip(cx, 0.3 * w, 0.7 * w)) if not junk else cx
    phase = motion['phase'] + 2 * np.pi * f / motion['period']
    bob = abs(math.sin(phase)) * 0.012 * h + rng.normal(0, 0.006) * h
    feet_y = h * 0.985 - bob + motion['offset'][0] * h
    if show_person:
      render_person(canvas, app, cx=cx + motion['offset'][1] * w, feet_y=feet_y,
                    person_h=person_h, phase=phase, swing=motion['swing'],
                    facing=motion['facing'])
    if occ == 'pole':
      px = occ_x - f * motion['bg_speed'] * w
      _Painter(canvas).rect(0, h, px - occ_w / 2, px + occ_w / 2, occ_colour)
    elif occ == 'box':
      _Painter(canvas).rect(box_top, h, occ_x - occ_w * 2.5, occ_x + occ_w * 2.5, occ_colour)
    elif occ == 'passer':
      px = occ_x + passer_dir * (f - t.length / 2) * 0.03 * w
      render_person(canvas, passer_app, cx=px, feet_y=h * 1.02, person_h=h * 0.95,
                    phase=phase * 1.3, swing=0.1, facing='front')
    oy, ox = rng.integers(0, pad + 1, 2)
    frames.append(_apply_camera(canvas, cam, multiplier, lut,
                                noise_bank[oy:oy + h, ox:ox + w]))
  return frames


# ------------------------------------------------------------------------------------------------
# Writing the tree


def _savemat_bytes(key: str, array: np.ndarray) -> bytes:
  """A v5 .mat file whose header carries no timestamp, so the bytes are reproducible."""
  import scipy.io  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  scipy.io.savemat(buf, {key: array}, format='5', oned_as='row')
  data = bytearray(buf.getvalue())
  data[:116] = _MAT_HEADER.ljust(116, b' ')
  return bytes(data)


def _write_split(root: str, cfg: SyntheticConfig, split: str, tracklets: list[_Tracklet],
                 cameras: dict[int, dict]) -> list[str]:
  names = []
  base = os.path.join(root, f'bbox_{split}')
  for t in tracklets:
    folder = os.path.join(base, t.code)
    os.makedirs(folder, exist_ok=True)
    for f, img in enumerate(render_tracklet(cfg, t, cameras[t.cam]), 1):
      name = t.name(f)
      img.save(os.path.join(folder, name), format='JPEG', quality=cfg.quality)
      names.append(name)
  return names


def _info_array(tracklets: list[_Tracklet]) -> np.ndarray:
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
    raise FileExistsError(
        f'{root!r} already holds {present} but no synthetic-MARS marker '
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


def generate(root: str, **kwargs) -> dict[str, Any]:
  """Writes a synthetic MARS tree under `root` (replacing a previous synthetic one).

  Args:
    root: local directory (created if needed).
    **kwargs: SyntheticConfig fields (num_train_ids, num_test_ids, seed, height, width,
      num_cameras, min_tracklets, max_tracklets, min_len, median_len, max_len, ...).

  Returns:
    Summary dict: params, per-split ids/tracklets/frames, queries, root, seconds.

  Raises:
    FileExistsError: `root` holds bbox_*/info directories that this generator did not write.
  """
  cfg = SyntheticConfig(**kwargs)
  cfg.validate()
  t0 = time.perf_counter()
  root = os.path.abspath(os.path.expanduser(str(root)))
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
    names = _write_split(root, cfg, split, layout[split], cameras)
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
  return dict(summary, root=root, generated=True, seconds=round(time.perf_counter() - t0, 3))


def ensure(root: str, **kwargs) -> dict[str, Any]:
  """Returns the summary of the synthetic tree at `root`, generating it if absent/incomplete.

  A tree is reused only if its completion marker exists and records the same parameters;
  otherwise (half-written, other parameters) it is regenerated. Same kwargs as `generate`.
  """
  cfg = SyntheticConfig(**kwargs)
  cfg.validate()
  root = os.path.abspath(os.path.expanduser(str(root)))
  marker = _read_marker(root)
  if (marker is not None and marker.get('params') == dataclasses.asdict(cfg)
      and marker.get('format_version') == FORMAT_VERSION
      and not os.path.exists(os.path.join(root, PROGRESS_MARKER))):
    return dict(marker, root=root, generated=False, seconds=0.0)
  return generate(root, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m data_pipeline.synthetic',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--root', required=True, help='output directory (local)')
  parser.add_argument('--ids', type=int, default=SyntheticConfig.num_train_ids,
                      help='training identities')
  parser.add_argument('--test-ids', '--test_ids', type=int,
                      default=SyntheticConfig.num_test_ids, help='test identities')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--height', type=int, default=SyntheticConfig.height)
  parser.add_argument('--width', type=int, default=SyntheticConfig.width)
  parser.add_argument('--cameras', type=int, default=SyntheticConfig.num_cameras)
  parser.add_argument('--min-tracklets', '--min_tracklets', type=int,
                      default=SyntheticConfig.min_tracklets)
  parser.add_argument('--max-tracklets', '--max_tracklets', type=int,
                      default=SyntheticConfig.max_tracklets)
  parser.add_argument('--median-len', '--median_len', type=int,
                      default=SyntheticConfig.median_len)
  parser.add_argument('--max-len', '--max_len', type=int, default=SyntheticConfig.max_len)
  parser.add_argument('--quality', type=int, default=SyntheticConfig.quality)
  parser.add_argument('--force', action='store_true',
                      help='regenerate even if a complete tree with these parameters exists')
  args = parser.parse_args(argv)
  kwargs = dict(num_train_ids=args.ids, num_test_ids=args.test_ids, seed=args.seed,
                height=args.height, width=args.width, num_cameras=args.cameras,
                min_tracklets=args.min_tracklets, max_tracklets=args.max_tracklets,
                median_len=args.median_len, max_len=args.max_len, quality=args.quality)
  try:
    summary = (generate if args.force else ensure)(args.root, **kwargs)
  except (ValueError, FileExistsError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(json.dumps(summary))
  return 0


if __name__ == '__main__':
  sys.exit(main())
