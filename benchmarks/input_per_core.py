"""Training input per CPU core: an official-style PIL loader vs grl_jax's tf.data pipeline.

    python -m benchmarks.input_per_core [--root DIR] [--clips 192] [--batch 16] [--core N]

Both read the same synthetic MARS-format tree (data_pipeline.synthetic, 256 x 128 JPEG
frames, generated at --root if absent) for the GRL training recipe: 8-frame RRS clips,
clip-level horizontal flip, per-frame random erasing with p = 0.5, batches of 16 clips. Each
loader runs in a child process pinned to one core (`os.sched_setaffinity`, set before numpy,
PIL or TensorFlow is imported, so every thread they start shares that core), so the figures
are clips/s per core.

  official_style   the loading of the official GRL code (its video dataset class and
                   sequence transforms: scratch/GRL/reid/data/, reimplemented here, not
                   copied): per frame PIL open + convert('RGB'), resize when not 256 x 128, the
                   clip's flip, random erasing with a random colour, conversion to float CHW / 255
                   and per-channel (x - mean) / std normalisation; clips stacked into
                   float32[B, T, 3, H, W] (the DataLoader's collate)
  official_decode  the same loader stopped after PIL open + convert (what decoding alone costs)
  tfdata           data_pipeline.pipeline.train_iterator with the recipe's options,
                   config.data.threads = 1 (tf.data's private pool) and prefetch 2: uint8
                   [B, T, H, W, 3] (normalisation happens inside the jitted step)
  tfdata_no_aug    the same without flip and erasing (what decode + batching cost)
  tf_decode        where tf.data's time goes: frame files read + decoded alone
                   (tf.io.decode_image, as data_pipeline/pipeline/decode.py), 8 frames a clip
  tf_decode_fast   the same with tf.io.decode_jpeg(dct_method='INTEGER_FAST')

Prints one JSON line per loader and the per-core ratio tfdata / official_style.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

LOADERS = ('official_style', 'official_decode', 'tfdata', 'tfdata_no_aug', 'tf_decode',
           'tf_decode_fast')
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _index(root: str, ids: int):
  from data_pipeline import datasets  # pylint: disable=g-import-not-at-top
  from data_pipeline import synthetic  # pylint: disable=g-import-not-at-top
  synthetic.ensure(root, num_train_ids=ids, num_test_ids=4, height=256, width=128)
  return datasets.load('mars', root, 'torchreid').train


# ------------------------------------------------------------------------------------------------
# The official-style loader (numpy + PIL; what the official dataset class and transforms do)


def _rrs(n: int, t: int, rng) -> list[int]:
  """One random frame from each of t equal chunks of the tracklet (last frame repeated to fill
  the chunks), as the official restricted random sampling does."""
  import math  # pylint: disable=g-import-not-at-top
  per = 1 if n < t else math.ceil(n / t)
  padded = list(range(n)) + [n - 1] * (per * t - n)
  return [padded[s * per + int(rng.integers(per))] for s in range(t)]


def _erase(img, rng, p=0.5, sl=0.02, sh=0.2, ratio=0.3):
  """With probability p, paints a random-colour rectangle of area fraction U(sl, sh) and aspect
  U(ratio, 1/ratio) at a random position (retrying until it fits)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  if rng.uniform() > p:
    return img
  w, h = img.size
  while True:
    area = rng.uniform(sl, sh) * w * h
    aspect = rng.uniform(ratio, 1 / ratio)
    eh, ew = np.sqrt(area * aspect), np.sqrt(area / aspect)
    if ew >= w or eh >= h:
      continue
    x, y = rng.uniform(0, w - ew), rng.uniform(0, h - eh)
    if 0 < x and 0 < y and x + ew <= w and y + eh <= h:
      x1, y1 = int(np.ceil(x)), int(np.ceil(y))
      x2, y2 = int(np.floor(x1 + ew)), int(np.floor(y1 + eh))
      colour = tuple(int(c) for c in rng.integers(0, 256, 3))
      img = img.copy()
      img.paste(Image.new('RGB', (max(1, x2 - x1), max(1, y2 - y1)), colour), (x1, y1))
      return img


def official_clip(paths, t: int, rng, decode_only: bool, height=256, width=128):
  """float32[T, 3, H, W] (normalised) of one clip, or the list of PIL frames if decode_only."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  frames = [Image.open(paths[i]).convert('RGB') for i in _rrs(len(paths), t, rng)]
  if decode_only:
    return frames
  frames = [f if f.size == (width, height) else f.resize((width, height), Image.BILINEAR)
            for f in frames]
  if rng.uniform() < 0.5:
    frames = [f.transpose(Image.FLIP_LEFT_RIGHT) for f in frames]
  frames = [_erase(f, rng) for f in frames]
  out = []
  for f in frames:
    # ToTensor: bytes -> HWC uint8 -> CHW -> float / 255; then per-channel normalisation.
    x = np.frombuffer(f.tobytes(), np.uint8).reshape(height, width, 3).transpose(2, 0, 1)
    x = x.astype(np.float32) / 255.0
    for c in range(3):
      x[c] -= MEAN[c]
      x[c] /= STD[c]
    out.append(x)
  return np.stack(out)


def run_official(index, clips: int, batch: int, t: int, decode_only: bool) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  paths_of = lambda row: index.frame_paths[  # noqa: E731
      index.starts[row]:index.starts[row] + index.lengths[row]]

  def one_batch():
    rows = rng.integers(0, len(index), batch)
    got = [official_clip(paths_of(r), t, rng, decode_only) for r in rows]
    return got if decode_only else np.stack(got)

  one_batch()   # warm the page cache and PIL's plugins
  n = -(-clips // batch)
  cpu, t0 = time.process_time(), time.perf_counter()
  for _ in range(n):
    one_batch()
  return {'seconds': time.perf_counter() - t0, 'cpu_seconds': time.process_time() - cpu,
          'clips': n * batch}


# ------------------------------------------------------------------------------------------------
# grl_jax's tf.data pipeline


def run_tfdata(index, clips: int, batch: int, t: int, augment: bool) -> dict:
  from configs import base  # pylint: disable=g-import-not-at-top
  from data_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  cfg = base.get_config('mars', 'grl').data     # the GRL recipe's data options
  cfg.update(dict(seq_len=t, threads=1, prefetch=2))
  if not augment:
    cfg.update(dict(flip=False, erasing_prob=0.0))
  it = pipeline.train_iterator(index, cfg, global_batch_size=batch, seed=0)
  for _ in range(3):   # warm-up: graph tracing, page cache, the prefetch buffer filling
    next(it)
  n = -(-clips // batch)
  cpu, t0 = time.process_time(), time.perf_counter()
  for _ in range(n):
    b = next(it)
  out = {'seconds': time.perf_counter() - t0, 'cpu_seconds': time.process_time() - cpu,
         'clips': n * batch, 'shape': list(b['frames'].shape), 'dtype': str(b['frames'].dtype)}
  it.close()
  return out


def run_tf_decode(index, clips: int, t: int, fast: bool) -> dict:
  """Frame files read + decoded by tf.data alone (no plan, augmentation or batching of clips)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  paths = [str(p) for p in rng.choice(np.asarray(index.frame_paths), (clips + 16) * t)]

  def decode(path):
    data = tf.io.read_file(path)
    if fast:
      return tf.io.decode_jpeg(data, channels=3, dct_method='INTEGER_FAST')
    return tf.io.decode_image(data, channels=3, expand_animations=False)

  opts = tf.data.Options()
  opts.threading.private_threadpool_size = 1
  ds = (tf.data.Dataset.from_tensor_slices(paths).map(decode, num_parallel_calls=1)
        .batch(t).prefetch(2).with_options(opts))
  it = iter(ds)
  for _ in range(16):
    next(it)
  cpu, t0 = time.process_time(), time.perf_counter()
  for _ in range(clips):
    next(it)
  return {'seconds': time.perf_counter() - t0, 'cpu_seconds': time.process_time() - cpu,
          'clips': clips}


def child(loader: str, args) -> None:
  os.sched_setaffinity(0, {args.core})   # before numpy / PIL / TF start their threads
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  index = _index(args.root, args.ids)
  if loader.startswith('official'):
    r = run_official(index, args.clips, args.batch, args.seq_len, loader == 'official_decode')
  elif loader.startswith('tf_decode'):
    r = run_tf_decode(index, args.clips, args.seq_len, loader == 'tf_decode_fast')
  else:
    r = run_tfdata(index, args.clips, args.batch, args.seq_len, loader == 'tfdata')
  r.update(loader=loader, core=args.core, affinity=sorted(os.sched_getaffinity(0)),
           clips_per_s=r['clips'] / r['seconds'],
           frames_per_s=r['clips'] * args.seq_len / r['seconds'],
           cpu_ms_per_clip=1e3 * r['cpu_seconds'] / r['clips'],
           # > 1: threads used more than the one core's time (impossible when pinned)
           cpu_over_wall=r['cpu_seconds'] / r['seconds'], loadavg=os.getloadavg()[0])
  print(json.dumps(r), flush=True)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--root', default='/tmp/grl_jax_input_per_core')
  p.add_argument('--ids', type=int, default=32, help='training identities if generating')
  p.add_argument('--clips', type=int, default=192)
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--seq_len', type=int, default=8)
  p.add_argument('--core', type=int, default=max(os.sched_getaffinity(0)))
  p.add_argument('--loaders', default=','.join(LOADERS))
  p.add_argument('--child', default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.child:
    child(args.child, args)
    return 0
  _index(args.root, args.ids)   # generate once, before any timing
  rows = {}
  for loader in [x for x in args.loaders.split(',') if x]:
    cmd = [sys.executable, '-m', 'benchmarks.input_per_core', f'--child={loader}',
           f'--root={args.root}', f'--ids={args.ids}', f'--clips={args.clips}',
           f'--batch={args.batch}', f'--seq_len={args.seq_len}', f'--core={args.core}']
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rows[loader] = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(rows[loader]), flush=True)
  if 'tfdata' in rows and 'official_style' in rows:
    print(json.dumps({'tfdata_over_official_per_core':
                      rows['tfdata']['clips_per_s'] / rows['official_style']['clips_per_s']}))
  return 0


if __name__ == '__main__':
  sys.exit(main())
