"""Throughput of the training input pipeline (data_pipeline.pipeline.train_iterator).

    python benchmarks/input_pipeline.py --root /tmp/synmars [--batch 16] [--seq_len 8]
        [--steps 200] [--warmup 20] [--erasing_prob 0.5] [--no_flip] [--pad_crop 0]

Reads a MARS-layout tree at --root (a synthetic one is generated there with
`data_pipeline.synthetic` if absent), then times --steps batches of the GRL training recipe:
pair sampler, RRS, 256x128 frames, clip-consistent flip and per-frame random erasing, uint8
output (--eval: the evaluation iterator over dense clips instead). Prints clips/s, frames/s,
the load average before/after (the machine may be shared) and the process CPU time per clip.
Needs the repo installed (`pip install -e .`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def _load_train_index(root: str, ids: int, height: int, width: int):
  from data_pipeline import datasets  # pylint: disable=g-import-not-at-top
  from data_pipeline import synthetic  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(os.path.join(root, 'info')):
    t0 = time.perf_counter()
    synthetic.ensure(root, num_train_ids=ids, num_test_ids=max(4, ids // 4), height=height,
                     width=width)
    print(f'generated synthetic MARS at {root} in {time.perf_counter() - t0:.1f}s')
  return datasets.load('mars', root, 'torchreid').train


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--root', required=True)
  parser.add_argument('--ids', type=int, default=32, help='train ids if generating')
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--seq_len', type=int, default=8)
  parser.add_argument('--height', type=int, default=256)
  parser.add_argument('--width', type=int, default=128)
  parser.add_argument('--steps', type=int, default=200)
  parser.add_argument('--warmup', type=int, default=20)
  parser.add_argument('--erasing_prob', type=float, default=0.5)
  parser.add_argument('--erasing_mode', default='frame')
  parser.add_argument('--no_flip', action='store_true')
  parser.add_argument('--pad_crop', type=int, default=0)
  parser.add_argument('--sampler', default='pair')
  parser.add_argument('--prefetch', type=int, default=2)
  parser.add_argument('--threads', type=int, default=0)
  parser.add_argument('--eval', action='store_true',
                      help='time eval_iterator (dense clips of the train split, no augmentation)')
  args = parser.parse_args(argv)

  index = _load_train_index(args.root, args.ids, args.height, args.width)
  from configs import base  # pylint: disable=g-import-not-at-top
  from data_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  cfg = base.base_config().data  # every field from the one set of defaults, then the flags
  cfg.update(dict(
      height=args.height, width=args.width, seq_len=args.seq_len, train_sampling='rrs',
      test_sampling='rrs_test', batch_sampler=args.sampler, flip=not args.no_flip,
      erasing_prob=args.erasing_prob, erasing_mode=args.erasing_mode, pad_crop=args.pad_crop,
      strict=False, prefetch=args.prefetch, threads=args.threads))
  if args.eval:
    cfg.test_sampling = 'dense'
    it = pipeline.eval_iterator(index, cfg, batch_size=args.batch)
    args.steps = min(args.steps, pipeline.num_eval_batches(index, cfg, args.batch) - args.warmup)
  else:
    it = pipeline.train_iterator(index, cfg, global_batch_size=args.batch, seed=0)
  load_before = os.getloadavg()
  for _ in range(args.warmup):
    next(it)
  cpu0, t0 = time.process_time(), time.perf_counter()
  checksum = 0
  for _ in range(args.steps):
    batch = next(it)
    checksum += int(batch['frames'][:, :, ::64, ::32].sum())  # touch the data
  wall = time.perf_counter() - t0
  cpu = time.process_time() - cpu0
  it.close()  # a still-prefetching tf.data iterator can deadlock the interpreter's exit
  clips = args.steps * args.batch
  result = {
      'clips_per_s': round(clips / wall, 1),
      'frames_per_s': round(clips * args.seq_len / wall, 1),
      'ms_per_batch': round(1e3 * wall / args.steps, 2),
      'cpu_ms_per_clip': round(1e3 * cpu / clips, 3),
      'loadavg_before': [round(x, 2) for x in load_before],
      'loadavg_after': [round(x, 2) for x in os.getloadavg()],
      'cpus': os.cpu_count(),
      'machine': platform.machine(),
      'tracklets': len(index), 'frames_on_disk': index.num_frames,
      'bad_frames': it.bad_frames,
      'config': {k: v for k, v in vars(args).items() if k != 'root'},
      'checksum': checksum,
  }
  print(json.dumps(result))
  return 0


if __name__ == '__main__':
  sys.exit(main())
