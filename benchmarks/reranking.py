"""Benchmark of grl_jax.reranking at MARS scale against torchreid's numpy re_ranking.

Problem: 1,980 queries x 11,310 gallery ('cas' gallery size), 2,048-d random Gaussian
descriptors; the three euclidean distance matrices come from grl_jax.evaluation.pairwise_distance
(not timed). k1=20, k2=6, lambda=0.3. Rows, one process:
  grl_jax re_ranking           cold (first call: compilation included) and warm
  grl_jax re_ranking_features  warm (distances computed on the device, twice)
  torchreid re_ranking         when the file exists (default
                               scratch/deep-person-reid/torchreid/utils/rerank.py, loaded by
                               path: torchreid itself is not imported), else skipped with why
Peak RSS = VmHWM after resetting it (/proc/self/clear_refs) before the call, minus the resident
size before it: the call's own transient host memory. Agreement with torchreid is reported as
the max |difference| and the number of entries over 1e-5; random 2,048-d distances crowd into a
narrow range, so a few rows hold exact float32 ties among their nearest neighbours, which
numpy's (unstable) argsort orders arbitrarily and grl_jax by index.

Usage (from the repository root):
  python -m benchmarks.reranking [--torchreid PATH] [--block_size 512]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import time

import numpy as np

from benchmarks.evaluation import _reset_peak_rss as _reset_peak

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TORCHREID = os.path.join(ROOT, 'scratch', 'deep-person-reid', 'torchreid', 'utils',
                                 'rerank.py')


def _status_mib(field: str) -> float:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(field):
        return int(line.split()[1]) / 1024.0
  return float('nan')


def measure(fn, *args, **kwargs):
  """(result, seconds, transient peak MiB over the resident size before the call)."""
  before = _status_mib('VmRSS')
  ok = _reset_peak()
  t = time.perf_counter()
  out = fn(*args, **kwargs)
  dt = time.perf_counter() - t
  peak = _status_mib('VmHWM') - before if ok else float('nan')
  return out, dt, peak


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--torchreid', default=DEFAULT_TORCHREID)
  parser.add_argument('--block_size', type=int, default=512)
  parser.add_argument('--queries', type=int, default=1980)
  parser.add_argument('--gallery', type=int, default=11310)
  parser.add_argument('--dim', type=int, default=2048)
  args = parser.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  from grl_jax import reranking  # pylint: disable=g-import-not-at-top
  from grl_jax.evaluation import pairwise_distance  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  f = rng.standard_normal((args.queries + args.gallery, args.dim)).astype(np.float32)
  qf, gf = f[:args.queries], f[args.queries:]
  mats = tuple(pairwise_distance(a, b) for a, b in ((qf, gf), (qf, qf), (gf, gf)))
  print(f'# {args.queries} x {args.gallery}, D={args.dim}, block_size={args.block_size}, '
        f'jax {jax.__version__} on {jax.devices()[0].platform}, numpy {np.__version__}')
  print('| function | seconds | peak RSS over baseline (MiB) |')
  print('|---|---|---|')
  rows = []
  out, dt, peak = measure(reranking.re_ranking, *mats, block_size=args.block_size)
  rows.append(('grl_jax re_ranking, cold (with compilation)', dt, peak))
  out, dt, peak = measure(reranking.re_ranking, *mats, block_size=args.block_size)
  rows.append(('grl_jax re_ranking, warm', dt, peak))
  warm = dt
  _, dt, peak = measure(reranking.re_ranking_features, qf, gf, 'euclidean',
                        block_size=args.block_size)
  _, dt, peak = measure(reranking.re_ranking_features, qf, gf, 'euclidean',
                        block_size=args.block_size)
  rows.append(('grl_jax re_ranking_features, warm (distances included)', dt, peak))
  for name, dt, peak in rows:
    print(f'| {name} | {dt:.2f} | {peak:.0f} |')

  if not os.path.exists(args.torchreid):
    print(f'| torchreid re_ranking | skipped: {args.torchreid} not found (fetch '
          'KaiyangZhou/deep-person-reid into scratch/) | |')
    return
  spec = importlib.util.spec_from_file_location('torchreid_rerank', args.torchreid)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  ref, dt, peak = measure(module.re_ranking, *mats)
  print(f'| torchreid re_ranking (numpy) | {dt:.2f} | {peak:.0f} |')
  diff = np.abs(out - ref)
  print(f'speed-up (warm) {dt / warm:.1f}x; max |grl_jax - torchreid| {diff.max():.2e}, '
        f'entries > 1e-5: {int((diff > 1e-5).sum())} of {diff.size} '
        f'(in {int((diff > 1e-5).any(axis=1).sum())} queries)')


if __name__ == '__main__':
  main()
