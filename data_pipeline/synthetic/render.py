"""Rendering synthetic MARS frames: a shape painter, a walking person and a camera.

`render_tracklet` draws every frame of one planned tracklet on its camera's background, with
the identity's appearance and the tracklet's motion (data_pipeline/synthetic/appearance.py),
an optional occluder, then the camera's illumination, noise, gamma, resolution loss and blur.
Frames are float32[H, W, 3] while painted and PIL RGB images once the camera is applied.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageFilter

from data_pipeline.synthetic.appearance import identity_appearance, tracklet_motion
from data_pipeline.synthetic.planning import SyntheticConfig, Tracklet


class Painter:
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
  paint = Painter(canvas)
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


def render_tracklet(cfg: SyntheticConfig, t: Tracklet, cam: dict) -> list[Image.Image]:
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
      Painter(canvas).rect(0, h, px - occ_w / 2, px + occ_w / 2, occ_colour)
    elif occ == 'box':
      Painter(canvas).rect(box_top, h, occ_x - occ_w * 2.5, occ_x + occ_w * 2.5, occ_colour)
    elif occ == 'passer':
      px = occ_x + passer_dir * (f - t.length / 2) * 0.03 * w
      render_person(canvas, passer_app, cx=px, feet_y=h * 1.02, person_h=h * 0.95,
                    phase=phase * 1.3, swing=0.1, facing='front')
    oy, ox = rng.integers(0, pad + 1, 2)
    frames.append(_apply_camera(canvas, cam, multiplier, lut,
                                noise_bank[oy:oy + h, ox:ox + w]))
  return frames
