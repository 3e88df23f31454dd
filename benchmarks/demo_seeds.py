"""The demo's result over seeds and float-rounding perturbations: mean +- spread of its mAP.

    python -m benchmarks.demo_seeds [--seeds 0 1 2] [--variants scan unrolled]
    python -m benchmarks.demo_seeds --model=nvan            # a baseline demo (no TRL variants)
    python -m benchmarks.demo_seeds --share_data -- --config.optim.lr=2e-3   # extra overrides

Each run is the README's demo command, `python -m grl_jax.main --config=configs/demo.py:model=M
--workdir=W --config.seed=S`, in a fresh workdir under --root (so it generates its synthetic
data, evaluates the untrained model, trains and evaluates, exactly as a user's first run), plus
`--config.model.trl_scan=False` for the `unrolled` variant of GRL: the TRL recurrence written out
step by step instead of as an `nn.scan` (grl_jax/models/trl.py), the same maths with the float
sums in another order. `--share_data` generates the dataset once (the first run) and points the
other runs at it, which saves the generation time on a slow machine; the wall times of those
runs then exclude generation (the first run's includes it).

The figures are read back from each workdir's metrics.jsonl (grl_jax/reporting.py): the last
`kind: eval` record's `reid/mAP` and `reid/rank1` (the trained model) and the step-0 record
(the untrained one); steps/s is the number of training steps over the time between the first
and the last training record (start-up, the first compilation and the untrained evaluation are
left out; the periodic evaluations in between, a few seconds each, are in).

Output, JSON lines on stdout: one per run ({model, variant, seed, mAP, rank1, untrained_mAP,
wall_s, steps, steps_per_s, load_before, load_after}), then one summary per variant and one over
all runs ({..., n, mAP_mean, mAP_spread, rank1_mean, rank1_spread, wall_s_max}) where spread =
max |x - mean| over the runs (the issue's "each within +-3 points of the mean"). Percentages.
Exit status 1 if a run fails (its log is kept in its workdir as demo.log).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from grl_jax import io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {'scan': [], 'unrolled': ['--config.model.trl_scan=False']}


def read_metrics(workdir: str) -> dict:
  """Trained / untrained mAP and rank-1 (percent), step count and training steps/s of a run."""
  records = [json.loads(line) for line in io.read_text(io.join(workdir, 'metrics.jsonl'))
             .splitlines() if line.strip()]
  evals = [r for r in records if r.get('kind') == 'eval' and 'reid/mAP' in r]
  train = [r for r in records if r.get('kind') == 'train']
  if not evals or not train:
    raise RuntimeError(f'{workdir}/metrics.jsonl has no eval or no train records')
  first = [r for r in evals if r['step'] == 0]
  steps_per_s = float('nan')
  if len(train) > 1 and train[-1]['time'] > train[0]['time']:
    steps_per_s = (train[-1]['step'] - train[0]['step']) / (train[-1]['time'] - train[0]['time'])
  return {'mAP': round(100 * evals[-1]['reid/mAP'], 2),
          'rank1': round(100 * evals[-1]['reid/rank1'], 2),
          'untrained_mAP': round(100 * first[0]['reid/mAP'], 2) if first else None,
          'steps': int(evals[-1]['step']), 'steps_per_s': round(steps_per_s, 3)}


def run_one(model: str, variant: str, seed: int, workdir: str, data_root: str | None,
            extra: list[str]) -> dict:
  """Runs the demo command once (fresh workdir) and returns its figures."""
  if io.exists(workdir):
    subprocess.run(['rm', '-rf', workdir], check=True)
  io.makedirs(workdir)
  cmd = [sys.executable, '-m', 'grl_jax.main', f'--config=configs/demo.py:model={model}',
         f'--workdir={workdir}', f'--config.seed={seed}'] + VARIANTS[variant]
  if data_root:
    cmd.append(f'--config.data.root={data_root}')
  cmd += extra
  load_before = os.getloadavg()[0]
  start = time.perf_counter()
  with open(os.path.join(workdir, 'demo.log'), 'w') as log:
    rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
  wall = time.perf_counter() - start
  if rc:
    raise RuntimeError(f'run failed (exit {rc}): {" ".join(cmd)}; log: {workdir}/demo.log')
  out = {'model': model, 'variant': variant, 'seed': seed}
  out.update(read_metrics(workdir))
  out.update(wall_s=round(wall, 1), load_before=round(load_before, 2),
             load_after=round(os.getloadavg()[0], 2))
  return out


def summarise(runs: list[dict], **labels) -> dict:
  """Mean and spread (max |x - mean|) of mAP and rank-1 over `runs`."""
  out = dict(labels, n=len(runs))
  for key in ('mAP', 'rank1'):
    xs = [r[key] for r in runs]
    mean = sum(xs) / len(xs)
    out[f'{key}_mean'] = round(mean, 2)
    out[f'{key}_spread'] = round(max(abs(x - mean) for x in xs), 2)
  out['wall_s_max'] = max(r['wall_s'] for r in runs)
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='grl', choices=('grl', 'nvan', 'ste_nvan', 'iaunet'))
  parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  parser.add_argument('--variants', nargs='+', choices=tuple(VARIANTS), default=None,
                      help='GRL: scan unrolled (default both); baselines: scan only')
  parser.add_argument('--root', default='/tmp/demo_seeds', help='parent of the run workdirs')
  parser.add_argument('--share_data', action='store_true',
                      help='generate the dataset in the first run only and reuse it')
  parser.add_argument('extra', nargs='*', help='further overrides for every run, after --')
  args = parser.parse_args(argv)
  variants = args.variants or (['scan', 'unrolled'] if args.model == 'grl' else ['scan'])
  if args.model != 'grl' and variants != ['scan']:
    parser.error('--variants: only GRL has a TRL to unroll')
  runs, data_root = [], None
  for variant in variants:
    for seed in args.seeds:
      workdir = os.path.join(args.root, f'{args.model}_{variant}_seed{seed}')
      run = run_one(args.model, variant, seed, workdir, data_root, args.extra)
      if args.share_data and data_root is None:
        data_root = os.path.join(workdir, 'data')
      runs.append(run)
      print(json.dumps(run), flush=True)
  for variant in variants:
    print(json.dumps(summarise([r for r in runs if r['variant'] == variant],
                               model=args.model, variant=variant)))
  if len(variants) > 1:
    print(json.dumps(summarise(runs, model=args.model, variant='all')))


if __name__ == '__main__':
  try:
    main()
  except RuntimeError as e:
    print(f'demo_seeds: error: {e}', file=sys.stderr)
    sys.exit(1)
