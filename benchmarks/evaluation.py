"""Benchmark of grl_jax.evaluation at MARS scale (and larger galleries).

A random problem with MARS's structure: 12,180 test tracklets of 625 ids over 6 cameras, 870
junk (pid -1) and distractors (pid 0); 1,980 queries. Gallery per protocol:
  official  all 12,180 test tracklets (queries and junk included)
  cas       1,980 queries + 9,330 = 11,310
  torchreid 9,330 (queries and junk removed)
`--gallery_scale s` multiplies the test set (ids, distractors, junk) by s, e.g. 10 -> 113,100
'cas' gallery. Descriptors are 2,048-d: an id centre plus noise, so the metrics are not trivial.

Each (protocol, scale) runs in its own subprocess so that its peak RSS is its own. Reported:
'baseline' = resident size just before evaluation (Python/JAX runtime + generated features);
'peak during evaluate_features' = VmHWM after resetting it (/proc/self/clear_refs) before the
evaluation, so generation transients are excluded; 'process ru_maxrss' = the whole process
(generation and the two-step distmat path included).

Usage:
  python benchmarks/evaluation.py                        # the three protocols at MARS scale
  python benchmarks/evaluation.py --gallery_scale 5 10 --protocols cas
  python -m benchmarks.evaluation --reference           # + the torchreid-style loop, 1980x9330
                                                         # (run from the repository root: the
                                                         # loop lives in tests/test_evaluation.py)
  python benchmarks/evaluation.py --memmap --protocols official --repeats 1
      # 1,980 queries x a 500,000 x 2,048 float32 gallery (3.8 GiB) written to a temporary .npy
      # and evaluated through np.load(..., mmap_mode='r'); --memmap_rows N changes the size,
      # --cold evicts the file from the page cache first, --top_k K also times top_k.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NUM_TEST = 12180
NUM_JUNK = 870
NUM_DISTRACTORS = 2000
NUM_IDS = 625
NUM_CAMS = 6
NUM_QUERIES = 1980
DIM = 2048
NOISE = 3.2


def _rss_mib() -> float:
  """Peak resident set size of this process so far."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_peak_rss() -> bool:
  """Resets the kernel's VmHWM (peak RSS) so a phase's own peak can be read; False if denied."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def _vm_hwm_mib() -> float:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmHWM'):
        return int(line.split()[1]) / 1024.0
  return float('nan')


def _current_rss_mib() -> float:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def make_problem(protocol: str, scale: int, seed: int = 0):
  """Returns (qf, gf, q_pids, g_pids, q_camids, g_camids), float32 features [N, DIM]."""
  rng = np.random.default_rng(seed)
  n_test, n_junk, n_dis = NUM_TEST * scale, NUM_JUNK * scale, NUM_DISTRACTORS * scale
  n_ids = NUM_IDS * scale
  n_real = n_test - n_junk - n_dis
  pids = np.concatenate([rng.integers(1, n_ids + 1, n_real), np.zeros(n_dis, np.int64),
                         -np.ones(n_junk, np.int64)])
  camids = rng.integers(0, NUM_CAMS, n_test)
  # Queries: real-id tracklets whose id also appears under another camera.
  real = np.nonzero(pids > 0)[0]
  cams_of = {}
  for i in real:
    cams_of.setdefault(pids[i], set()).add(camids[i])
  eligible = np.array([i for i in real if len(cams_of[pids[i]]) > 1])
  q_rows = np.sort(rng.choice(eligible, NUM_QUERIES, replace=False))
  rest = np.setdiff1d(np.arange(n_test), q_rows)
  if protocol == 'official':
    g_rows = np.arange(n_test)
  elif protocol == 'cas':
    g_rows = np.concatenate([q_rows, rest[pids[rest] != -1]])
  else:
    g_rows = rest[pids[rest] != -1]
  # Features: unit id centres + isotropic noise of norm ~NOISE (in 2,048-d the distances
  # concentrate, so the noise must dominate for the ranking to be imperfect); junk and
  # distractors get their own random direction. Generated in row blocks (no big temporaries).
  centres = rng.standard_normal((n_ids + 1, DIM), dtype=np.float32)
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)

  def feats(rows):
    out = np.empty((len(rows), DIM), np.float32)
    for s in range(0, len(rows), 8192):
      r = rows[s:s + 8192]
      block = rng.standard_normal((len(r), DIM), dtype=np.float32)
      block *= np.float32(NOISE / np.sqrt(DIM))
      own = pids[r] > 0
      block[own] += centres[pids[r][own]]
      block[~own] += rng.standard_normal((int((~own).sum()), DIM),
                                         dtype=np.float32) / np.float32(np.sqrt(DIM))
      out[s:s + len(r)] = block
    return out

  return (feats(q_rows), feats(g_rows), pids[q_rows], pids[g_rows], camids[q_rows],
          camids[g_rows])


def run_one(protocol: str, scale: int, repeats: int) -> dict:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import jax  # noqa: F401  (the runtime belongs in the baseline)
  from grl_jax import evaluation as ev
  problem = make_problem(protocol, scale)
  qf, gf = problem[:2]
  baseline = _current_rss_mib()
  process_peak_before = _rss_mib()
  phase_peak_ok = _reset_peak_rss()
  times, dist_times, eval_times = [], [], []
  result = None
  for _ in range(repeats):
    t0 = time.perf_counter()
    result = ev.evaluate_features(*problem, metric='euclidean', protocol=protocol)
    times.append(time.perf_counter() - t0)
  fused_peak = _vm_hwm_mib() if phase_peak_ok else _rss_mib()
  # The two-step path (full distmat, then evaluate) for the split of the time.
  for _ in range(repeats if scale == 1 else 0):
    t0 = time.perf_counter()
    d = ev.pairwise_distance(qf, gf, 'euclidean')
    t1 = time.perf_counter()
    ev.evaluate(d, *problem[2:], protocol=protocol)
    t2 = time.perf_counter()
    dist_times.append(t1 - t0)
    eval_times.append(t2 - t1)
    del d
  return {
      'protocol': protocol, 'scale': scale, 'num_query': int(qf.shape[0]),
      'num_gallery': int(gf.shape[0]), 'times_s': times,
      'distance_times_s': dist_times, 'evaluate_times_s': eval_times,
      'baseline_rss_mib': baseline, 'peak_rss_evaluate_features_mib': fused_peak,
      'peak_is_phase_only': phase_peak_ok, 'process_peak_before_mib': process_peak_before,
      'peak_rss_mib': _rss_mib(), 'mAP': result['mAP'], 'rank1': result['rank1'],
      'num_valid_queries': result['num_valid_queries'],
  }


def write_memmap_problem(path: str, num_gallery: int, seed: int = 0) -> None:
  """Writes gallery features f32[num_gallery, DIM] to `path` (.npy) and labels to path.npz.

  MARS proportions (junk 7%, distractors 16%, ~19.5 tracklets per id, 6 cameras); the 1,980
  queries are separate samples of ids that appear under at least two gallery cameras. Rows
  are generated and written in blocks with plain file writes, so this process stays small.
  """
  rng = np.random.default_rng(seed)
  n_junk = int(num_gallery * NUM_JUNK / NUM_TEST)
  n_dis = int(num_gallery * NUM_DISTRACTORS / NUM_TEST)
  n_real = num_gallery - n_junk - n_dis
  n_ids = max(1, round(NUM_IDS * num_gallery / NUM_TEST))
  g_pids = np.concatenate([rng.integers(1, n_ids + 1, n_real), np.zeros(n_dis, np.int64),
                           -np.ones(n_junk, np.int64)])
  g_camids = rng.integers(0, NUM_CAMS, num_gallery)
  real = g_pids > 0
  cams = np.zeros((n_ids + 1, NUM_CAMS), bool)
  cams[g_pids[real], g_camids[real]] = True
  eligible = np.nonzero(cams.sum(1) > 1)[0]
  q_pids = np.sort(rng.choice(eligible, NUM_QUERIES, replace=len(eligible) < NUM_QUERIES))
  q_camids = rng.integers(0, NUM_CAMS, NUM_QUERIES)
  centres = rng.standard_normal((n_ids + 1, DIM), dtype=np.float32)
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  scale = np.float32(NOISE / np.sqrt(DIM))

  def feats(pids):
    block = rng.standard_normal((len(pids), DIM), dtype=np.float32)
    block *= scale
    own = pids > 0
    block[own] += centres[pids[own]]
    block[~own] += rng.standard_normal((int((~own).sum()), DIM),
                                       dtype=np.float32) / np.float32(np.sqrt(DIM))
    return block

  with open(path, 'wb') as f:
    np.lib.format.write_array_header_2_0(
        f, {'descr': '<f4', 'fortran_order': False, 'shape': (num_gallery, DIM)})
    for s in range(0, num_gallery, 8192):
      f.write(feats(g_pids[s:s + 8192]).tobytes())
  np.savez(path + '.npz', qf=feats(q_pids), q_pids=q_pids, q_camids=q_camids, g_pids=g_pids,
           g_camids=g_camids)


def _evict_page_cache(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
  finally:
    os.close(fd)


def run_memmap(protocol: str, path: str, repeats: int, cold: bool, k: int) -> dict:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import jax  # noqa: F401  (the runtime belongs in the baseline)
  from grl_jax import evaluation as ev
  labels = np.load(path + '.npz')
  gf = np.load(path, mmap_mode='r')
  args = (labels['qf'], gf, labels['q_pids'], labels['g_pids'], labels['q_camids'],
          labels['g_camids'])
  baseline = _current_rss_mib()
  phase_peak_ok = _reset_peak_rss()
  times, result, topk_times = [], None, []
  for _ in range(repeats):
    if cold:
      _evict_page_cache(path)
    t0 = time.perf_counter()
    result = ev.evaluate_features(*args, metric='euclidean', protocol=protocol)
    times.append(time.perf_counter() - t0)
  for _ in range(repeats if k else 0):
    if cold:
      _evict_page_cache(path)
    t0 = time.perf_counter()
    ev.top_k(args[0], gf, k, 'euclidean')
    topk_times.append(time.perf_counter() - t0)
  return {
      'protocol': protocol, 'num_query': int(args[0].shape[0]), 'num_gallery': int(gf.shape[0]),
      'times_s': times, 'top_k_times_s': topk_times, 'baseline_rss_mib': baseline,
      'peak_rss_mib': _vm_hwm_mib() if phase_peak_ok else _rss_mib(),
      'peak_is_phase_only': phase_peak_ok, 'process_peak_mib': _rss_mib(),
      'mAP': result['mAP'], 'rank1': result['rank1'], 'mINP': result['mINP'],
      'num_valid_queries': result['num_valid_queries'],
  }


def main_memmap(args) -> None:
  import tempfile
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'}
  with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
    path = os.path.join(tmp, 'gallery.npy')
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, '--write_memmap', path, str(args.memmap_rows)],
                   check=True, env=env)
    print(f'wrote {args.memmap_rows} x {DIM} float32 ({os.path.getsize(path) / 2**30:.2f} GiB) '
          f'to {path} in {time.perf_counter() - t0:.1f} s', flush=True)
    for protocol in args.protocols:
      cmd = [sys.executable, __file__, '--memmap_child', protocol, path, '--repeats',
             str(args.repeats), '--top_k', str(args.top_k)] + (['--cold'] if args.cold else [])
      out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
      r = json.loads(out.stdout.strip().splitlines()[-1])
      topk = ''
      if r['top_k_times_s']:
        topk = f" | top_k({args.top_k}) {', '.join(f'{t:.1f}' for t in r['top_k_times_s'])} s"
      print(f"{protocol:9s} memmap {r['num_query']}x{r['num_gallery']}"
            f"{' (cold page cache)' if args.cold else ''}: evaluate_features "
            f"{', '.join(f'{t:.1f}' for t in r['times_s'])} s (first includes jit){topk} | RSS "
            f"baseline {r['baseline_rss_mib']:.0f} MiB, peak during evaluation "
            f"{r['peak_rss_mib']:.0f} MiB"
            f"{'' if r['peak_is_phase_only'] else ' (process peak: VmHWM reset denied)'} | "
            f"mAP {r['mAP']:.4f} R1 {r['rank1']:.4f} mINP {r['mINP']:.4f} valid "
            f"{r['num_valid_queries']}", flush=True)


def run_reference() -> dict:
  from grl_jax import evaluation as ev
  from tests.test_evaluation import torchreid_reference
  problem = make_problem('torchreid', 1)
  d = ev.pairwise_distance(problem[0], problem[1], 'euclidean')
  t0 = time.perf_counter()
  _, m_ap, _, _ = torchreid_reference(d, *problem[2:], 50)
  t1 = time.perf_counter()
  r = ev.evaluate(d, *problem[2:], protocol='torchreid')
  t2 = time.perf_counter()
  return {'reference_loop_s': t1 - t0, 'vectorised_s': t2 - t1,
          'abs_mAP_difference': abs(m_ap - r['mAP']), 'num_gallery': int(d.shape[1])}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--protocols', nargs='+', default=['torchreid', 'cas', 'official'])
  parser.add_argument('--gallery_scale', nargs='+', type=int, default=[1])
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--reference', action='store_true')
  parser.add_argument('--memmap', action='store_true',
                      help='evaluate a gallery written to a temporary .npy, memory-mapped')
  parser.add_argument('--memmap_rows', type=int, default=500_000)
  parser.add_argument('--cold', action='store_true', help='evict the .npy from the page cache')
  parser.add_argument('--top_k', type=int, default=0, help='also time top_k with this k')
  parser.add_argument('--tmpdir', default=None, help='where the temporary .npy goes')
  parser.add_argument('--child', nargs=2, metavar=('PROTOCOL', 'SCALE'), help=argparse.SUPPRESS)
  parser.add_argument('--memmap_child', nargs=2, help=argparse.SUPPRESS)
  parser.add_argument('--write_memmap', nargs=2, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(run_one(args.child[0], int(args.child[1]), args.repeats)))
    return
  if args.write_memmap:
    write_memmap_problem(args.write_memmap[0], int(args.write_memmap[1]))
    return
  if args.memmap_child:
    print(json.dumps(run_memmap(args.memmap_child[0], args.memmap_child[1], args.repeats,
                                args.cold, args.top_k)))
    return
  if args.memmap:
    print(f'load average before: {os.getloadavg()}  cpus: {os.cpu_count()}')
    main_memmap(args)
    print(f'load average after: {os.getloadavg()}')
    return
  print(f'load average before: {os.getloadavg()}  cpus: {os.cpu_count()}')
  for scale in args.gallery_scale:
    for protocol in args.protocols:
      cmd = [sys.executable, __file__, '--child', protocol, str(scale), '--repeats',
             str(args.repeats)]
      out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                           env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
      r = json.loads(out.stdout.strip().splitlines()[-1])
      times = ', '.join(f'{t:.2f}' for t in r['times_s'])
      split = ''
      if r['distance_times_s']:
        split = (f" | distmat {min(r['distance_times_s']):.2f} s + evaluate "
                 f"{min(r['evaluate_times_s']):.2f} s")
      print(f"{protocol:9s} x{scale:<2d} {r['num_query']}x{r['num_gallery']}: "
            f"evaluate_features {times} s (first includes jit){split} | RSS baseline "
            f"{r['baseline_rss_mib']:.0f} MiB, peak during evaluate_features "
            f"{r['peak_rss_evaluate_features_mib']:.0f} MiB"
            f"{'' if r['peak_is_phase_only'] else ' (process peak: VmHWM reset denied)'}, "
            f"process ru_maxrss {r['peak_rss_mib']:.0f} MiB | mAP {r['mAP']:.4f} "
            f"R1 {r['rank1']:.4f} valid {r['num_valid_queries']}", flush=True)
  if args.reference:
    r = run_reference()
    print(f"torchreid reference loop 1980x{r['num_gallery']}: {r['reference_loop_s']:.2f} s vs "
          f"vectorised evaluate {r['vectorised_s']:.2f} s (|dmAP| {r['abs_mAP_difference']:.1e})")
  print(f'load average after: {os.getloadavg()}')


if __name__ == '__main__':
  main()
