"""Extraction throughput from a folder tree (`--mode=extract --input=DIR`, grl_jax/offline.py).

Writes a tree of `--tracklets` tracklet folders (two levels, `id<k>/cam<c>`) of `--frames`
JPEG frames each, `--size` pixels (default 128 x 64, MARS-like crops resized to the demo's
64 x 32), saves a randomly initialised demo GRL checkpoint (configs/demo.py, dense test clips
of 8 frames, eval batch 16) and times, in one process:
  list_tracklets        discovery of the tree (grl_jax/folders.py)
  extract_folders (CLI) what one `--mode=extract --input` pays after start-up: discovery,
                        restore, compilation of the eval step, extraction, writing the .npz
  folder_features cold  the pipeline + eval step of a freshly restored setup (compilation)
  folder_features warm  the same again: tf.data read/decode/resize + the eval step only
  API from folders      inference.Extractor.tracklet_features_from_folder per tracklet (eager
                        decode, no tf.data parallelism), warm
Rows report tracklets/s, clips/s (dense clips of 8 frames) and frames/s.

Usage (from the repository root):
  python -m benchmarks.extract_folders [--tracklets 200] [--frames 40] [--size 128x64]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def write_tree(root: str, tracklets: int, frames: int, size: tuple[int, int], seed: int = 0):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  h, w = size
  for t in range(tracklets):
    folder = os.path.join(root, f'id{t // 2}', f'cam{t % 2}')
    os.makedirs(folder)
    colour = rng.integers(0, 255, 3)
    for f in range(frames):
      img = np.clip(colour + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
      Image.fromarray(img).save(os.path.join(folder, f'{f + 1}.jpg'), quality=90)


def demo_checkpoint(workdir: str):
  import jax  # pylint: disable=g-import-not-at-top
  from configs import demo  # pylint: disable=g-import-not-at-top
  from grl_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from grl_jax.trainer import setup as setup_lib  # pylint: disable=g-import-not-at-top
  config = demo.get_config()
  config.unlock()
  config.data.test_sampling = 'dense'
  config.lock()
  setup = setup_lib.build(config, num_classes=48, steps_per_epoch=1, train=False)
  state = setup.init_state(0)
  checkpoint.write_variables(workdir, jax.device_get(state.variables), config, step=0,
                             extra_meta={'num_classes': 48})
  return config


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--tracklets', type=int, default=200)
  parser.add_argument('--frames', type=int, default=40)
  parser.add_argument('--size', default='128x64', help='H x W of the frame files')
  parser.add_argument('--api_tracklets', type=int, default=20,
                      help='tracklets timed through the Python API (0: skip)')
  args = parser.parse_args()
  size = tuple(int(v) for v in args.size.split('x'))
  from grl_jax import folders  # pylint: disable=g-import-not-at-top
  from grl_jax import inference  # pylint: disable=g-import-not-at-top
  from grl_jax import offline  # pylint: disable=g-import-not-at-top
  from data_pipeline import sampling  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    tree, work = os.path.join(tmp, 'tree'), os.path.join(tmp, 'w')
    t = time.perf_counter()
    write_tree(tree, args.tracklets, args.frames, size)
    print(f'wrote {args.tracklets} x {args.frames} frames of {size[0]}x{size[1]} in '
          f'{time.perf_counter() - t:.1f}s')
    config = demo_checkpoint(work)
    clips_each = sampling.num_test_clips('dense', args.frames, int(config.data.seq_len))
    n_frames = args.tracklets * args.frames

    def row(name, seconds, tracklets):
      clips = tracklets * clips_each
      print(f'{name:<24} {seconds:8.2f}s  {tracklets / seconds:8.1f} tracklets/s  '
            f'{clips / seconds:8.1f} clips/s  {tracklets * args.frames / seconds:9.1f} '
            'frames/s', flush=True)

    t = time.perf_counter()
    listed = folders.list_tracklets(tree)
    print(f'{"list_tracklets":<24} {time.perf_counter() - t:8.3f}s  ({len(listed)} tracklets, '
          f'{n_frames} frames)')
    t = time.perf_counter()
    offline.extract_folders(config, work, input=tree, output=os.path.join(tmp, 'f.npz'))
    row('extract_folders (CLI)', time.perf_counter() - t, args.tracklets)
    setup, variables, _ = offline.restore_for_inference(config, work)
    for name in ('folder_features cold', 'folder_features warm'):
      t = time.perf_counter()
      offline.folder_features(config, setup, variables, listed)
      row(name, time.perf_counter() - t, args.tracklets)
    if args.api_tracklets:
      extractor = inference.load(work)
      extractor.tracklet_features_from_folder(os.path.join(tree, listed[0][0]))  # compile
      t = time.perf_counter()
      for name, _ in listed[:args.api_tracklets]:
        extractor.tracklet_features_from_folder(os.path.join(tree, name))
      row('API from folders', time.perf_counter() - t, min(args.api_tracklets, len(listed)))


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  main()
