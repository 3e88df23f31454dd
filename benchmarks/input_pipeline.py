"""Throughput of the training input pipeline, loose JPEGs vs a packed dataset.

    python benchmarks/input_pipeline.py --root /tmp/synmars [--packed /tmp/synmars_pack]
        [--layout both|loose|packed] [--batch 16] [--seq_len 8] [--steps 200] [--warmup 20]
        [--erasing_prob 0.5] [--no_flip] [--pad_crop 0] [--threads 0] [--step_time_s 0.1]

Reads a MARS-layout tree at --root (a synthetic one is generated there with
`data_pipeline.synthetic` if absent and --root is local) and its pack at --packed (written with
`data_pipeline.pack` if absent; default <root>_pack). Either may be gs://. Then times --steps
batches of the GRL training recipe per layout, in this process: pair sampler, RRS, 256x128
frames, clip-consistent flip and per-frame random erasing, uint8 output (--eval: the evaluation
iterator over dense clips instead). The two layouts deliver the same bytes (checked on the
first batch). Prints one JSON line per layout: clips/s, frames/s, the process CPU time per clip
(every tf.data thread included), the load average before/after (the machine may be shared),
and `cores_per_device`: the host cores one accelerator needs to be fed at the full recipe
(16 clips x 8 frames per step per device) if its step takes --step_time_s seconds
(= cpu_s_per_clip x 16 / step_time_s). Needs the repo installed (`pip install -e .`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

RECIPE_CLIPS = 16  # clips per step per device in the full GRL recipe (16 x 8 frames 256x128)


def _ensure_tree(root: str, ids: int, height: int, width: int) -> None:
  from data_pipeline import synthetic  # pylint: disable=g-import-not-at-top
  from grl_jax import io  # pylint: disable=g-import-not-at-top
  if io.is_remote(root) or os.path.isdir(os.path.join(root, 'info')):
    return
  t0 = time.perf_counter()
  synthetic.ensure(root, num_train_ids=ids, num_test_ids=max(4, ids // 4), height=height,
                   width=width)
  print(f'generated synthetic MARS at {root} in {time.perf_counter() - t0:.1f}s')


def _ensure_pack(root: str, packed: str) -> None:
  from data_pipeline import datasets  # pylint: disable=g-import-not-at-top
  from data_pipeline import pack  # pylint: disable=g-import-not-at-top
  from grl_jax import io  # pylint: disable=g-import-not-at-top
  if io.exists(io.join(packed, 'dataset_info.json')):
    return
  t0 = time.perf_counter()
  summary = pack.pack(datasets.load('mars', root), packed, root=root)
  print(f'packed {root} -> {packed} in {time.perf_counter() - t0:.1f}s: {json.dumps(summary)}')


def _iterator(args, cfg, index, frames):
  from data_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  if args.eval:
    return pipeline.eval_iterator(index, cfg, batch_size=args.batch, frames=frames)
  return pipeline.train_iterator(index, cfg, global_batch_size=args.batch, seed=0,
                                 frames=frames)


def _time(it, args) -> dict:
  for _ in range(args.warmup):
    next(it)
  load_before = os.getloadavg()
  cpu0, t0 = time.process_time(), time.perf_counter()
  checksum = 0
  for _ in range(args.steps):
    batch = next(it)
    checksum += int(batch['frames'][:, :, ::64, ::32].sum())  # touch the data
  wall = time.perf_counter() - t0
  cpu = time.process_time() - cpu0
  it.close()  # a still-prefetching tf.data iterator can deadlock the interpreter's exit
  clips = args.steps * args.batch
  cpu_per_clip = cpu / clips
  return {
      'clips_per_s': round(clips / wall, 1),
      'frames_per_s': round(clips * args.seq_len / wall, 1),
      'ms_per_batch': round(1e3 * wall / args.steps, 2),
      'cpu_ms_per_clip': round(1e3 * cpu_per_clip, 3),
      'cores_per_device': round(cpu_per_clip * RECIPE_CLIPS / args.step_time_s, 3),
      'loadavg_before': [round(x, 2) for x in load_before],
      'loadavg_after': [round(x, 2) for x in os.getloadavg()],
      'bad_frames': it.bad_frames, 'checksum': checksum,
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--root', required=True)
  parser.add_argument('--packed', default='', help='pack of --root (default <root>_pack)')
  parser.add_argument('--layout', default='both', choices=('both', 'loose', 'packed'))
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
  parser.add_argument('--step_time_s', type=float, default=0.1,
                      help='assumed accelerator step time of the full recipe (16 clips/device)')
  parser.add_argument('--eval', action='store_true',
                      help='time eval_iterator (dense clips of the train split, no augmentation)')
  args = parser.parse_args(argv)
  packed = args.packed or args.root.rstrip('/') + '_pack'

  _ensure_tree(args.root, args.ids, args.height, args.width)
  from configs import base  # pylint: disable=g-import-not-at-top
  from data_pipeline import datasets  # pylint: disable=g-import-not-at-top
  from data_pipeline import pack  # pylint: disable=g-import-not-at-top
  from data_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  cfg = base.base_config().data  # every field from the one set of defaults, then the flags
  cfg.update(dict(
      height=args.height, width=args.width, seq_len=args.seq_len, train_sampling='rrs',
      test_sampling='rrs_test', batch_sampler=args.sampler, flip=not args.no_flip,
      erasing_prob=args.erasing_prob, erasing_mode=args.erasing_mode, pad_crop=args.pad_crop,
      strict=False, prefetch=args.prefetch, threads=args.threads))
  if args.eval:
    cfg.test_sampling = 'dense'
  layouts = ('loose', 'packed') if args.layout == 'both' else (args.layout,)
  sources = {}
  if 'loose' in layouts:
    sources['loose'] = (datasets.load('mars', args.root, 'torchreid').train, None)
  if 'packed' in layouts:
    _ensure_pack(args.root, packed)
    sources['packed'] = (pack.load_dataset(packed, dataset='mars').train,
                         pack.PackedFrames(packed))
  if len(sources) == 2:  # the same bytes either way
    first = [next(_iterator(args, cfg, ix, fr))['frames'] for ix, fr in sources.values()]
    assert first[0].tobytes() == first[1].tobytes(), 'loose and packed batches differ'
  if args.eval:
    index = next(iter(sources.values()))[0]
    args.steps = min(args.steps, pipeline.num_eval_batches(index, cfg, args.batch) - args.warmup)
  for layout, (index, frames) in sources.items():
    result = {'layout': layout, 'source': packed if frames is not None else args.root}
    result.update(_time(_iterator(args, cfg, index, frames), args))
    result.update({
        'step_time_s_assumed': args.step_time_s, 'cpus': os.cpu_count(),
        'machine': platform.machine(), 'tracklets': len(index),
        'frames_on_disk': index.num_frames,
        'config': {k: v for k, v in vars(args).items() if k not in ('root', 'packed')}})
    if frames is not None:
      result['records_read'] = frames.records_read
    print(json.dumps(result))
  return 0


if __name__ == '__main__':
  sys.exit(main())
