"""Appearance models of synthetic MARS: identities, cameras and per-tracklet motion.

Each is a pure function of the seed and its key: numpy Generators are seeded per (id),
(camera) and (id, camera, tracklet), so one tracklet renders the same whatever else is
generated. The renderer (data_pipeline/synthetic/render.py) paints with these parameters.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from data_pipeline.synthetic.planning import Tracklet

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
  """Illumination, optics and a wide textured background of one camera.

  The background is float32[height, 3 * width, 3]; the other entries are scalars (or a float32[3]
  colour cast) that the renderer applies to every frame of the camera.
  """
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


def tracklet_motion(seed: int, t: Tracklet, junk: bool) -> dict[str, Any]:
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
