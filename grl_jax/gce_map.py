r"""GRL's correlation-map picture: what GCE calls high- and low-correlation in each frame.

GCE (grl_jax/models/grl.py, class GCE) gives every position of a frame's feature map a weight
R = sigmoid(head([X ; G])) in (0, 1), from the frame feature X f[h, w, D] and the tracklet's
global feature G; the frame then splits into X^h = X * R (high correlation with the tracklet)
and X^l = X * (1 - R) (low). This module takes R out of a trained model and draws it.

    maps = correlation_maps(model, variables, clips)       # uint8[B, T, H, W, 3] -> f32[B, T, h, w]
    draw(clips[0], maps[0], 'gce.png', title='...')        # one tracklet; or all B as rows

    python -m grl_jax.gce_map --workdir=W --input=FOLDER [--output=F.png] [--step=N]

The CLI reads a tracklet folder of images, or a folder of at most 8 tracklet folders (one
picture row each; found at any depth as grl_jax/folders.py `list_tracklets` finds them), at the
checkpoint's resolution, takes the first clip of the checkpoint's test sampling
(data_pipeline/sampling.py `test_clips`), and writes the picture (default
`<W>/gce_map_<folder>_step<N>.png`). Any mistake (no checkpoint, not a GRL model, no frames) is
one line `python -m grl_jax.gce_map: error: ...` and exit status 1.

Picture (`draw`), per tracklet row, T frames side by side and three strips under a label line:
  frame   the frame as the model saw it (upscaled to at least MIN_HEIGHT pixels high);
  R       the map upsampled (bilinear) to the frame, coloured on the fixed scale [0, 1] of
          `COLORMAP` (dark blue 0 -> red 1), so frames and tracklets compare directly;
  split   the frame weighted as GCE weights the features: colour * R + dimmed grey * (1 - R),
          i.e. X^h shows in colour and X^l in grey, with the R = 0.5 contour (where a position
          goes more to X^h than to X^l) drawn in `CONTOUR_COLOR`.
A colour bar for R closes the picture.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from grl_jax import io
from grl_jax.errors import ConfigError, DatasetError

PROG = 'python -m grl_jax.gce_map'
MAX_ROWS = 8
MIN_HEIGHT = 128
PAD = 4
LABEL_H = 14
LEFT = 40           # strip names column
BAR_H = 10
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)
CONTOUR_COLOR = (255, 230, 0)
LOW_DIM = 0.35      # brightness of the grey that shows the X^l share
STRIPS = ('frame', 'R', 'split')

# R -> RGB anchors at evenly spaced values of [0, 1] (a blue-cyan-yellow-red ramp, linear in
# between); 256 entries after interpolation.
_ANCHORS = np.array([(20, 20, 110), (30, 80, 220), (40, 170, 230), (90, 210, 140),
                     (230, 220, 60), (245, 130, 30), (200, 20, 20)], np.float64)
COLORMAP = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)),
                               _ANCHORS[:, c]) for c in range(3)], -1).round().astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# The map


def _gce_params(variables: Mapping[str, Any]):
  return (variables.get('params') or {}).get('gce')


def check_has_gce(model, variables: Mapping[str, Any]) -> None:
  """ConfigError unless the model has a GCE module (GRL); the picture is GRL's only."""
  if _gce_params(variables) is None:
    raise ConfigError(f'the GCE correlation-map picture is for GRL only: model '
                      f'{type(model).__name__} has no GCE module (params {{gce: ...}}); use a '
                      "GRL checkpoint (config.model.name='grl')")


def _is_gce_call(module, method_name: str) -> bool:
  from grl_jax.models import grl  # pylint: disable=g-import-not-at-top
  return isinstance(module, grl.GCE) and method_name == '__call__'


@functools.lru_cache(maxsize=8)
def _map_fn(model):
  """Jitted (variables, uint8 clips) -> R f32[B, T, h, w], cached per model (Linen modules are
  hashable dataclasses, so a rebuilt equal model reuses the compiled function)."""
  import jax  # pylint: disable=g-import-not-at-top
  from grl_jax.trainer.step import normalize_frames  # pylint: disable=g-import-not-at-top

  def fn(variables, clips):
    # The model is applied unchanged; only the GCE call's third output, R (after its sigmoid,
    # exactly the weight of X^h = X * R), is kept (XLA drops the rest). Captured at the GCE
    # rather than read from outputs['correlation_map'], so it stays the tensor GCE multiplies
    # with whatever the model chooses to return.
    _, state = model.apply(variables, normalize_frames(clips), train=False,
                           capture_intermediates=_is_gce_call)
    # intermediates: {<path to the GCE>: {'__call__': (outputs of each call,)}}.
    found = jax.tree.leaves(state['intermediates'], is_leaf=lambda x: isinstance(x, tuple))
    calls = [call for per_module in found for call in per_module]
    if len(calls) != 1:
      raise ValueError(f'gce_map: expected one GCE call in {type(model).__name__}, found '
                       f'{len(calls)}')
    return calls[0][2].astype(np.float32)

  return jax.jit(fn)


def correlation_maps(model, variables: Mapping[str, Any], clips) -> np.ndarray:
  """GCE's correlation maps R of clips in eval mode.

  Args:
    model: a GRL Linen module (grl_jax/models/grl.py); anything else is a ConfigError.
    variables: its {'params', 'batch_stats'} (numpy or jax arrays).
    clips: uint8[B, T, H, W, 3] RGB at the model's resolution (ImageNet-normalised here with
      grl_jax.trainer.step.normalize_frames, as inference does).
  Returns:
    float32[B, T, h, w] in (0, 1): h x w is the feature map (H / 16 x W / 16 with GRL's
    last stride 1).
  """
  check_has_gce(model, variables)
  clips = np.asarray(clips)
  if clips.ndim != 5 or clips.shape[-1] != 3 or clips.dtype != np.uint8:
    raise ValueError(f'gce_map: clips must be uint8 [B, T, H, W, 3], got {clips.dtype} '
                     f'{clips.shape}')
  variables = {k: v for k, v in variables.items() if k in ('params', 'batch_stats') and v}
  return np.asarray(_map_fn(model)(variables, clips))


# ----------------------------------------------------------------------------------------------
# The picture


def display_size(height: int, width: int) -> tuple[int, int]:
  """(height, width) a frame is drawn at: an integer upscale to >= MIN_HEIGHT pixels high."""
  s = max(1, math.ceil(MIN_HEIGHT / height))
  return height * s, width * s


def picture_size(rows: int, frames: int, height: int, width: int,
                 title: bool = False) -> tuple[int, int]:
  """(height, width) in pixels of a `draw` picture of rows x frames frames of height x width."""
  fh, fw = display_size(height, width)
  row_h = LABEL_H + len(STRIPS) * (fh + PAD)
  top = PAD + (LABEL_H if title else 0)
  return (top + rows * row_h + LABEL_H + BAR_H + PAD + LABEL_H,
          LEFT + frames * (fw + PAD) + PAD)


def colorize(values: np.ndarray) -> np.ndarray:
  """float[...] in [0, 1] (clipped) -> uint8[..., 3] through COLORMAP."""
  idx = np.clip(np.round(np.asarray(values, np.float64) * 255), 0, 255).astype(np.int64)
  return COLORMAP[idx]


def upsample(m: np.ndarray, height: int, width: int) -> np.ndarray:
  """float[h, w] -> float32[height, width], bilinear (PIL)."""
  im = Image.fromarray(np.asarray(m, np.float32), 'F')
  return np.asarray(im.resize((width, height), Image.BILINEAR), np.float32)


def split_image(frame: np.ndarray, r: np.ndarray) -> np.ndarray:
  """uint8[H, W, 3] frame, float[H, W] R -> uint8[H, W, 3]: colour * R + dim grey * (1 - R),
  with the R = 0.5 contour in CONTOUR_COLOR."""
  f = frame.astype(np.float32)
  grey = LOW_DIM * f.mean(-1, keepdims=True)
  rr = np.clip(r, 0, 1)[..., None]
  out = f * rr + grey * (1 - rr)
  high = r >= 0.5
  edge = np.zeros_like(high)
  edge[1:] |= high[1:] != high[:-1]
  edge[:, 1:] |= high[:, 1:] != high[:, :-1]
  out[edge] = CONTOUR_COLOR
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
  if frame.shape[:2] == (height, width):
    return frame
  return np.asarray(Image.fromarray(frame, 'RGB').resize((width, height), Image.NEAREST))


def _as_rows(frames, maps) -> tuple[np.ndarray, np.ndarray]:
  frames, maps = np.asarray(frames), np.asarray(maps, np.float32)
  if frames.ndim == 4 and maps.ndim == 3:
    frames, maps = frames[None], maps[None]
  if (frames.ndim != 5 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or maps.ndim != 4
      or frames.shape[:2] != maps.shape[:2]):
    raise ValueError(f'gce_map.draw: expected frames uint8[T, H, W, 3] with maps [T, h, w] (or '
                     f'[R, T, ...] for R rows), got frames {frames.dtype} {frames.shape} and '
                     f'maps {maps.shape}')
  if not 1 <= len(frames) <= MAX_ROWS or frames.shape[1] == 0:
    raise ValueError(f'gce_map.draw: 1..{MAX_ROWS} rows of >= 1 frame expected, got '
                     f'{frames.shape[:2]}')
  return frames, maps


def draw(frames, maps, path: str, title: str | None = None,
         labels: Sequence[str] | None = None) -> str:
  """Writes the correlation-map picture (module docstring) as a PNG; returns its path.

  Args:
    frames: uint8[T, H, W, 3] of one tracklet, or uint8[R, T, H, W, 3] for R <= 8 rows.
    maps: the matching R, float[T, h, w] or float[R, T, h, w] (`correlation_maps`).
    path: PNG path, local or gs:// (grl_jax/io.py; parent folders are created).
    title: text over the picture.
    labels: per row, text on its label line (default 'tracklet <i>'); R's range is appended.
  Returns:
    The written path. The picture is `picture_size(R, T, H, W, title is not None)`.
  """
  frames, maps = _as_rows(frames, maps)
  rows, t, h, w = frames.shape[:4]
  fh, fw = display_size(h, w)
  height, width = picture_size(rows, t, h, w, title is not None)
  canvas = np.full((height, width, 3), BACKGROUND, np.uint8)
  texts = []
  y = PAD
  if title is not None:
    texts.append(((LEFT, y), title))
    y += LABEL_H
  for i in range(rows):
    label = labels[i] if labels else f'tracklet {i}'
    texts.append(((LEFT, y + 1), f'{label}   R in [{maps[i].min():.2f}, {maps[i].max():.2f}]'))
    y += LABEL_H
    for k, name in enumerate(STRIPS):
      texts.append(((2, y + k * (fh + PAD) + fh // 2 - 5), name))
    for j in range(t):
      x = LEFT + j * (fw + PAD)
      frame = _resize(frames[i, j], fh, fw)
      r = upsample(maps[i, j], fh, fw)
      for k, panel in enumerate((frame, colorize(r), split_image(frame, r))):
        y0 = y + k * (fh + PAD)
        canvas[y0:y0 + fh, x:x + fw] = panel
    y += len(STRIPS) * (fh + PAD)
  # Colour bar of R over the frame columns, labelled 0, 0.5, 1.
  texts.append(((LEFT, y + 1), 'R = GCE correlation (X^h = X * R, X^l = X * (1 - R));  '
                'contour: R = 0.5'))
  y += LABEL_H
  bar_w = width - LEFT - PAD
  canvas[y:y + BAR_H, LEFT:LEFT + bar_w] = colorize(np.linspace(0, 1, bar_w))[None]
  for v in (0.0, 0.5, 1.0):
    texts.append(((LEFT + round(v * (bar_w - 1)) - (12 if v == 1 else 0), y + BAR_H + 2),
                  f'{v:g}'))
  image = Image.fromarray(canvas, 'RGB')
  pen = ImageDraw.Draw(image)
  for xy, text in texts:
    pen.text(xy, text, fill=TEXT_COLOR)
  return io.save_png(str(path), image)


# ----------------------------------------------------------------------------------------------
# Command line


def input_tracklets(folder: str) -> list[tuple[str, list[str]]]:
  """[(name, frame paths)] of --input: the folder itself if it holds frames, else each tracklet
  folder under it (grl_jax/folders.py `list_tracklets`), at most MAX_ROWS."""
  from grl_jax import folders  # pylint: disable=g-import-not-at-top
  tracklets = folders.list_tracklets(folder)
  if len(tracklets) > MAX_ROWS:
    raise DatasetError(f'--input={folder}: {len(tracklets)} tracklets; at most {MAX_ROWS} (one '
                       'picture row each): pass a folder with fewer tracklet folders')
  base = folder.rstrip('/').rsplit('/', 1)[-1] or folder
  return [(base if name == '.' else name, paths) for name, paths in tracklets]


def _flag_values():
  from absl import flags  # pylint: disable=g-import-not-at-top
  fv = flags.FlagValues()
  flags.DEFINE_string('workdir', None, 'Training workdir or grl_jax.convert output (GRL).',
                      flag_values=fv)
  flags.DEFINE_string('input', None, 'A tracklet folder of images, or a folder of up to '
                      f'{MAX_ROWS} tracklet folders (one row each).', flag_values=fv)
  flags.DEFINE_string('output', None, 'PNG path (default <workdir>/gce_map_<input>_step<N>.png).',
                      flag_values=fv)
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: latest).', flag_values=fv)
  flags.DEFINE_bool('help', False, 'Show this help.', flag_values=fv)
  return fv


def run(argv: Sequence[str]) -> str | None:
  """Parses argv (without the program name), draws, writes; returns the PNG path.

  Raises the user-facing errors (GrlJaxError, absl flags.Error) instead of exiting.
  """
  from grl_jax import cli  # pylint: disable=g-import-not-at-top
  fv = _flag_values()
  if not cli.tool_flags_ok(fv, fv([PROG, *argv]), doc=__doc__, required=('workdir', 'input'),
                           example='--workdir=workdir/demo --input=FOLDER_OF_FRAMES'):
    return None
  from data_pipeline import sampling  # pylint: disable=g-import-not-at-top
  from grl_jax import folders  # pylint: disable=g-import-not-at-top
  from grl_jax import inference  # pylint: disable=g-import-not-at-top
  workdir, folder = fv['workdir'].value, fv['input'].value.rstrip('/')
  extractor = inference.load(workdir, fv['step'].value)
  try:
    check_has_gce(extractor.model, extractor.variables)
  except ConfigError as e:
    raise ConfigError(f'--workdir={workdir}: {e}') from None
  data = extractor.config['data']
  height, width = int(data['height']), int(data['width'])
  clips, labels = [], []
  for name, paths in input_tracklets(folder):
    # The first test clip, as evaluation samples it; only its frames are decoded.
    first = sampling.test_clips(extractor.test_sampling, len(paths), extractor.seq_len)[0]
    clips.append(folders.read_frames([paths[i] for i in first], height, width))
    labels.append(f'{name} ({len(paths)} frames)')
  clips = np.stack(clips)
  step = int(extractor.meta.get('step', fv['step'].value or 0))
  maps = correlation_maps(extractor.model, extractor.variables, clips)
  output = fv['output'].value or io.join(
      workdir, f'gce_map_{folder.rsplit("/", 1)[-1] or "input"}_step{step}.png')
  path = draw(clips, maps, output, title=f'GCE correlation maps: {workdir}, step {step}',
              labels=labels)
  print(f'[gce_map] {len(clips)} tracklet(s) x {clips.shape[1]} frames, R in '
        f'[{maps.min():.3f}, {maps.max():.3f}] -> {path}')
  return path


def main(argv: Sequence[str] | None = None) -> str | None:
  """`run`, with a user mistake printed as one line `<PROG>: error: ...` and exit status 1."""
  from grl_jax import cli  # pylint: disable=g-import-not-at-top
  return cli.tool_main(PROG, run, argv)


if __name__ == '__main__':
  main()
