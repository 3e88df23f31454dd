r"""Device suite: every speed / memory figure of grl_jax on one accelerator, in one command.

Prints one JSON line per measurement (fields: benchmarks/device/common.py) and appends a dated
markdown table to benchmarks/RESULTS.md (`--no-record` skips it; `--out=FILE` also writes the
JSON lines to FILE). Measurements, in the order run:

  official_grl_train_{amp,fp32}   the official PyTorch GRL step (benchmarks/device/torch_grl.py),
                                  16 x 8 x 256 x 128, in a process of its own before any JAX work;
                                  skipped, with the reason, without scratch/GRL or torch;
                                  the child runs with scratch/GRL on its PYTHONPATH (the
                                  official code imports `reid` top-level; nothing edits sys.path)
  matmul_bf16_peak                a large bf16 matmul: the peak every utilisation is against
  grl_train_{bf16,f32}_recipe     full GRL (configs/mars.py:model=grl), 16 x 8 x 256 x 128
  grl_eval_extract                GRL eval step (descriptor extraction), eval batch 64, bf16
  evaluate_features               grl_jax.evaluation at MARS scale, cas: 1,980 x 11,310 x 2048
  {nvan,ste_nvan,iaunet}_train    the baselines' recipe steps (32 clips), bf16
  grl_train_{bf16,f32}_max        GRL at the largest batch that fits: doubling then bisection
                                  on XLA's compile-time memory analysis (nothing runs before
                                  the answer is known, so no OOM), then timed
  grl_train_bf16_unrolled         the bf16 recipe row with the TRL unrolled (trl_scan=False):
                                  scan or unrolled, which runs faster on this backend

On the GPU machine (H100 / H200; JAX there, no TensorFlow, no ml-collections), from the
repository root, with `carry: [".whl", "scratch/GRL"]` and a time limit of 600 s:

    pip install -q --no-index --no-deps --target /tmp/pylib .whl/*.whl && \
    PYTHONPATH=/tmp/pylib:. XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 PYTHONUNBUFFERED=1 \
    python3 -m benchmarks.device_suite --out=$OUT/device_suite.jsonl \
      --profile=$OUT/grl_profile.json && \
    cp benchmarks/RESULTS.md $OUT/

What travels: the working tree (this repo) plus two ignored folders: `.whl/` holding the
ml-collections wheel (made here with `pip download --no-deps --only-binary=:all:
--python-version 3.12 ml-collections==1.1.0 -d .whl`) and `scratch/GRL`, a copy of
flysnowtiger/GRL (`git -C <mirror> archive HEAD | tar -x -C scratch/GRL`). The suite keeps to
`--budget_s` (default 480 s: about 8 minutes): a measurement not started in time is reported as
skipped ('time budget'), and the largest-batch searches stop early with the best batch found.
Back here, `python -m benchmarks.device_suite --record_from=<the jsonl>` appends the table.
`--profile` traces a few more steps of the bf16 GRL recipe row and brings back where its device
time goes, op by op, with the trace and the optimised HLO (benchmarks/device/profile.py: three
files beside the JSON, under the device machine's limit of 8 files of 16 MiB).

`--smoke` runs each code path of the suite once at tiny sizes on the CPU (configs/demo.py's
reduced models: GRL at 4 clips x 2 frames x 64 x 32 in float32, STE-NVAN at 4 x 4, a 64 x 256
evaluation, a 256^2 matmul, the official rows only if scratch/GRL and torch (`--torch_python`)
exist). The rows that repeat another row's code with one config value changed (SMOKE_SAME_AS:
the bf16 GRL rows, NVAN, IAUnet) are reported as skipped; `--smoke_all` runs them too. Measured
on the 2-core Intel Xeon VM (jax 0.10.2, 2026-12-01, load average 4 from other jobs): 89 s of
CPU with a cold compile cache (94 s wall; two workers, so about 60 s on an idle machine), 31 s
of CPU and 46 s wall warm.
tests/test_device_suite.py runs it with TensorFlow blocked. Nothing on the suite's path imports
TensorFlow, data_pipeline.pipeline or grl_jax.reporting, nor any API that JAX 0.10 deprecates
(the GPU machine has JAX 0.11).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks.device import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OFFICIAL = ('official_grl_train_amp', 'official_grl_train_fp32')
# JAX measurements in run order (one worker process on a GPU): fixed-size rows first, then the
# largest-batch searches (the costliest, cut short by the budget), then the unrolled-TRL
# comparison, which no goal of the suite needs (it informs the choice of config.model.trl_scan).
JAX_ROWS = ('matmul_bf16_peak', 'grl_train_bf16_recipe', 'grl_train_f32_recipe',
            'grl_eval_extract', 'evaluate_features', 'nvan_train', 'ste_nvan_train',
            'iaunet_train', 'grl_train_bf16_max', 'grl_train_f32_max', 'grl_train_bf16_unrolled')
ALL_ROWS = OFFICIAL + JAX_ROWS
# --smoke runs each code path of the suite once: the rows below repeat another row's code with
# only a config value changed (dtype, model), and each costs a cold XLA:CPU compile of a whole
# train step (20-30 s of CPU), so they are reported as skipped unless --smoke_all.
SMOKE_SAME_AS = {'grl_train_bf16_recipe': 'grl_train_f32_recipe',
                 'grl_train_bf16_unrolled': 'grl_train_f32_recipe',
                 'grl_train_bf16_max': 'grl_train_f32_max',
                 'nvan_train': 'ste_nvan_train', 'iaunet_train': 'ste_nvan_train'}
# The row `--profile` traces: the bf16 recipe step; in a --smoke run without --smoke_all (which
# skips the bf16 rows) the float32 one.
PROFILE_ROW = {False: 'grl_train_bf16_recipe', True: 'grl_train_f32_recipe'}
# --smoke on two cores: two workers of about equal compile work. The GRL rows share one build
# and one initialiser (the search's first probe is the recipe's compile).
SMOKE_SPLIT = (('grl_train_f32_recipe', 'grl_train_f32_max', 'grl_eval_extract',
                'grl_train_bf16_recipe', 'grl_train_bf16_unrolled', 'grl_train_bf16_max'),
               ('matmul_bf16_peak', 'ste_nvan_train', 'evaluate_features', 'nvan_train',
                'iaunet_train'))


# ------------------------------------------------------------------------------------------------
# Worker: the JAX rows (imports JAX; the parent never does, so it never takes the GPU)


def _config(model: str, dtype: str, smoke: bool, trl_scan: bool = True):
  """configs/mars.py's recipe (accel=gpu), or configs/demo.py's reduction for --smoke;
  `trl_scan=False` unrolls GRL's TRL."""
  if smoke:
    from configs import demo  # pylint: disable=g-import-not-at-top
    config = demo.get_config(f'model={model},accel=cpu')
  else:
    from configs import mars  # pylint: disable=g-import-not-at-top
    config = mars.get_config(f'model={model},accel=gpu')
  with config.unlocked():
    config.model.dtype = dtype
    if not trl_scan:
      config.model.trl_scan = False
    if smoke:
      config.train.global_batch_size = 4
      config.eval.batch_size = 4
      # GRL: 2 frames (the TRL's unrolled FLOP count traces T steps); NVAN's temporal
      # reduction needs a multiple of 4.
      config.data.seq_len = 2 if model == 'grl' else 4
      if config.data.batch_sampler == 'pk':
        config.data.p, config.data.k = 2, 2
  return config


def run_worker(names: list[str], args) -> None:
  """Runs the JAX rows `names` in order, one JSON line each on stdout."""
  if args.smoke and 'xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
    # CPU smoke: XLA's cheapest codegen (compiles ~1.5x faster; smoke figures are not speeds).
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization_'
                               'level=0 --xla_llvm_disable_expensive_passes=true').strip()
  from benchmarks.device import jax_rows  # pylint: disable=g-import-not-at-top
  t_start = time.perf_counter()
  deadline = t_start + args.budget_left
  smoke = args.smoke
  classes = 8 if smoke else 625
  steps = args.steps or (2 if smoke else 10)
  benches = {}

  def bench(dtype, trl_scan=True):
    if (dtype, trl_scan) not in benches:
      benches[dtype, trl_scan] = jax_rows.TrainBench(_config('grl', dtype, smoke, trl_scan),
                                                     classes, smoke)
    return benches[dtype, trl_scan]

  for name in names:
    if time.perf_counter() > deadline:
      row = common.skipped_row(name, {'smoke': smoke},
                               f'time budget of {args.budget_s:.0f} s spent before it started')
    else:
      try:
        row = _one_row(name, jax_rows, bench, classes, steps, smoke, deadline, args)
      except Exception as e:  # pylint: disable=broad-except  (one failure must not end the run)
        row = common.skipped_row(name, {'smoke': smoke}, f'failed: {type(e).__name__}: '
                                 f'{str(e).splitlines()[0][:300] if str(e) else ""}')
    print(json.dumps(row), flush=True)
    print(f'[device_suite] {name}: done at {time.perf_counter() - t_start:.1f} s',
          file=sys.stderr, flush=True)


def _one_row(name, jax_rows, bench, classes, steps, smoke, deadline, args):
  if name == 'matmul_bf16_peak':
    return jax_rows.matmul_peak_row(256 if smoke else 8192, 4 if smoke else 20)
  if name.startswith('grl_train_') and name.endswith(('_recipe', '_unrolled')):
    b = bench('bfloat16' if '_bf16_' in name else 'float32', not name.endswith('_unrolled'))
    profile = args.profile if name == PROFILE_ROW[smoke and not args.smoke_all] else None
    return b.run(name, int(b.config.train.global_batch_size), steps, profile_file=profile)
  if name.startswith('grl_train_') and name.endswith('_max'):
    b = bench('bfloat16' if '_bf16_' in name else 'float32')
    start = int(b.config.train.global_batch_size)
    limit = None
    if smoke or jax_rows.device_memory() is None:
      # No allocator limit on the CPU: 1.2 x the recipe step's need, so the search runs.
      limit = 1.2 * jax_rows.step_bytes(b.compile(start)[0])
    return jax_rows.search_row(b, name, start, steps, limit_bytes=limit,
                               headroom=args.headroom, resolution=4 if smoke else 16,
                               max_probes=3 if smoke else 8, deadline=deadline)
  if name == 'grl_eval_extract':
    # Smoke: the dtype of the GRL rows run (one build and initialiser for all of them).
    b = bench('float32' if smoke and not args.smoke_all else 'bfloat16')
    return jax_rows.eval_extract_row(b, int(b.config.eval.batch_size), steps)
  if name == 'evaluate_features':
    return jax_rows.evaluation_row(smoke, repeats=1 if smoke else 2)
  if name.endswith('_train'):
    model = name[:-len('_train')]
    tb = jax_rows.TrainBench(_config(model, 'bfloat16', smoke), classes, smoke)
    return tb.run(name, int(tb.config.train.global_batch_size), steps)
  raise ValueError(f'unknown measurement {name!r}')


# ------------------------------------------------------------------------------------------------
# Parent: the official rows, the workers, utilisation, output


def _official_rows(args, budget_left: float) -> list[dict]:
  grl_dir = os.path.join(ROOT, args.grl_dir) if not os.path.isabs(args.grl_dir) else args.grl_dir
  config = {'smoke': args.smoke, 'grl_dir': args.grl_dir}
  if not os.path.isfile(os.path.join(grl_dir, 'reid', 'models', 'grl_model.py')):
    return [common.skipped_row(n, config, f'no copy of flysnowtiger/GRL at {args.grl_dir} '
                               '(see this script\'s docstring)') for n in OFFICIAL]
  probe = subprocess.run([args.torch_python, '-c', 'import torch'], capture_output=True,
                         text=True, cwd=ROOT)
  if probe.returncode:
    why = (probe.stderr.strip().splitlines() or ['?'])[-1][:200]
    return [common.skipped_row(n, config, f'torch not importable by {args.torch_python}: {why}')
            for n in OFFICIAL]
  cmd = [args.torch_python, '-m', 'benchmarks.device.torch_grl', f'--grl_dir={grl_dir}']
  if args.smoke:
    cmd.append('--smoke')
  # The official code imports `reid` / `utils` top-level: its folder goes on the child's
  # PYTHONPATH (ahead of the repo, which holds neither name), cwd stays the repo root.
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(
      p for p in (grl_dir, ROOT, os.environ.get('PYTHONPATH', '')) if p)
  rows = _run_child(cmd, timeout=min(budget_left, 300 if args.smoke else 240), env=env)
  got = {r['name'] for r in rows}
  rows += [common.skipped_row(n, config, 'the official run ended without this row (timeout '
                              'or crash; see stderr)') for n in OFFICIAL if n not in got]
  return rows


def _run_child(cmd: list[str], timeout: float, env: dict | None = None) -> list[dict]:
  """Runs a child that prints JSON rows; stderr passes through. Rows printed before a timeout
  or a crash are kept."""
  rows = []
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
  try:
    out, _ = proc.communicate(timeout=max(1.0, timeout))
  except subprocess.TimeoutExpired:
    proc.kill()
    out, _ = proc.communicate()
  for line in (out or '').splitlines():
    if line.startswith('{'):
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        pass
  return rows


def _worker_cmd(names, args, budget_left: float) -> list[str]:
  cmd = [sys.executable, '-m', 'benchmarks.device_suite', '--worker', ','.join(names),
         f'--budget_left={budget_left:.1f}', f'--budget_s={args.budget_s}',
         f'--headroom={args.headroom}', f'--steps={args.steps}']
  if args.profile:
    cmd.append(f'--profile={os.path.abspath(args.profile)}')
  return cmd + (['--smoke'] if args.smoke else []) + (['--smoke_all'] if args.smoke_all else [])


def _jax_rows(args, names: list[str], budget_left: float) -> list[dict]:
  if args.smoke and args.jobs > 1:
    groups = [[n for n in g if n in names] for g in SMOKE_SPLIT]
  else:
    groups = [list(names)]
  groups = [g for g in groups if g]
  procs = [subprocess.Popen(_worker_cmd(g, args, budget_left), cwd=ROOT, stdout=subprocess.PIPE,
                            text=True) for g in groups]
  rows = []
  for g, proc in zip(groups, procs):
    try:
      out, _ = proc.communicate(timeout=budget_left + 120)
    except subprocess.TimeoutExpired:
      proc.kill()
      out, _ = proc.communicate()
    got = [json.loads(line) for line in (out or '').splitlines() if line.startswith('{')]
    done = {r['name'] for r in got}
    rows += got + [common.skipped_row(n, {'smoke': args.smoke}, f'the JAX worker ended '
                                      f'(exit {proc.returncode}) before this row')
                   for n in g if n not in done]
  return rows


def finish(rows: list[dict]) -> list[dict]:
  """Adds utilisation against the run's measured bf16 matmul peak; orders rows as ALL_ROWS."""
  peak = next((r['tflops_per_s'] for r in rows
               if r['name'] == 'matmul_bf16_peak' and not r.get('skipped')), None)
  for r in rows:
    if r['name'] != 'matmul_bf16_peak':
      common.add_utilisation(r, peak)
  order = {n: i for i, n in enumerate(ALL_ROWS)}
  return sorted(rows, key=lambda r: order.get(r['name'], len(order)))


def _fmt(x, spec='.3g'):
  return '' if x is None else format(x, spec)


def markdown(rows: list[dict], command: str) -> str:
  """The dated RESULTS.md section for `rows`."""
  live = [r for r in rows if not r.get('skipped')]
  device = next((r['device'] for r in live if r['name'] == 'matmul_bf16_peak'),
                next((r['device'] for r in live if r.get('device')), 'unknown device'))
  smoke = any(r['config'].get('smoke') for r in rows)
  versions = []
  for pkg in ('jax', 'jaxlib', 'flax', 'optax', 'numpy'):
    try:
      from importlib import metadata  # pylint: disable=g-import-not-at-top
      versions.append(f'{pkg} {metadata.version(pkg)}')
    except Exception:  # pylint: disable=broad-except
      pass
  torch_v = next((r['config'].get('torch') for r in live if r['config'].get('torch')), None)
  if torch_v:
    versions.append(f'torch {torch_v}')
  title = 'CPU smoke run (tiny sizes; not GPU figures)' if smoke else device
  lines = [f'## Device suite (`benchmarks/device_suite.py`): {title}, {common.DATE}', '',
           f'Device: {device}. {", ".join(versions)}. Command: `{command}`. Memory: XLA memory '
           'analysis of the compiled step (JAX rows); official rows: torch.cuda.max_memory_allocated '
           '(GPU) or the process\'s peak RSS (CPU). Utilisation is against the bf16 matmul peak '
           'measured in the same run.', '',
           '| measurement | dtype | batch | clips/s | step s | compile s | memory GiB | '
           'FLOP/step | TFLOP/s | utilisation | note |', '|---|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    c = r['config']
    note = r.get('skipped') or ''
    if r['name'] == 'evaluate_features' and not note:
      note = (f"{c.get('num_query')} x {c.get('num_gallery')} x {c.get('dim')}, "
              f"{_fmt(r.get('queries_per_s'), '.0f')} queries/s")
    if r.get('search_probes') and not r.get('skipped'):
      note = (f"searched {[p[0] for p in r['search_probes']]} against "
              f"{r['search_limit_gib']:.3g} GiB" + (f", stopped: {r['search_stopped']}"
                                                    if r.get('search_stopped') else ''))
    if r.get('profile_categories') and not r.get('skipped'):
      shares = ', '.join(f'{k} {100 * v:.0f}%' for k, v in r['profile_categories'].items())
      note = (f"profiled: device busy {100 * r['profile_busy_fraction']:.0f}% of the wall "
              f"time; {shares}")
    elif r.get('profile_error'):
      note = f"profile failed: {r['profile_error']}"
    util = '' if r.get('utilisation') is None else f"{100 * r['utilisation']:.1f}%"
    lines.append(f"| {r['name']} | {c.get('dtype', '')} | {c.get('batch', c.get('n', ''))} | "
                 f"{_fmt(r['clips_per_s'], '.1f')} | {_fmt(r['step_s'], '.4g')} | "
                 f"{_fmt(r['compile_s'], '.1f')} | {_fmt(r['peak_memory_gib'], '.2f')} | "
                 f"{_fmt(r['flops_per_step'], '.3e')} | {_fmt(r['tflops_per_s'], '.3g')} | "
                 f"{util} | {note} |")
  return '\n'.join(lines) + '\n'


def record(rows: list[dict], command: str, path: str) -> None:
  with open(path, 'a', encoding='utf-8') as f:
    f.write('\n' + markdown(rows, command))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--smoke', action='store_true', help='tiny sizes on the CPU (about a minute)')
  p.add_argument('--smoke_all', action='store_true',
                 help='with --smoke: also the rows that repeat another row\'s code (SMOKE_SAME_AS)')
  p.add_argument('--no-record', dest='record', action='store_false',
                 help='do not append the table to benchmarks/RESULTS.md')
  p.add_argument('--out', default=None, help='also write the JSON lines to this file')
  p.add_argument('--only', default='', help='comma-separated measurement names (default all)')
  p.add_argument('--budget_s', type=float, default=None,
                 help='wall-time budget (default 480 s; smoke 600 s)')
  p.add_argument('--headroom', type=float, default=0.9,
                 help='fraction of the free device memory the largest batch may need')
  p.add_argument('--steps', type=int, default=0, help='timed steps per row (0: 10, smoke 2)')
  p.add_argument('--jobs', type=int, default=0,
                 help='parallel JAX workers (smoke only; 0: 2 for --smoke, else 1)')
  p.add_argument('--grl_dir', default='scratch/GRL', help='copy of flysnowtiger/GRL')
  p.add_argument('--profile', default=None,
                 help='trace the GRL recipe step (PROFILE_ROW) and write its summary to this '
                      'JSON file, the trace and the HLO beside it (benchmarks/device/profile.py)')
  p.add_argument('--torch_python', default=sys.executable,
                 help='Python with torch for the official rows')
  p.add_argument('--results', default=os.path.join(ROOT, 'benchmarks', 'RESULTS.md'))
  p.add_argument('--record_from', default=None,
                 help='append the table of an earlier run\'s JSON lines file and exit')
  p.add_argument('--worker', default=None, help=argparse.SUPPRESS)
  p.add_argument('--budget_left', type=float, default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.budget_s is None:
    args.budget_s = 600.0 if args.smoke else 480.0
  if args.worker is not None:
    args.budget_left = args.budget_left if args.budget_left is not None else args.budget_s
    run_worker([n for n in args.worker.split(',') if n], args)
    return 0
  if args.record_from:
    with open(args.record_from, encoding='utf-8') as f:
      rows = [json.loads(line) for line in f if line.startswith('{')]
    record(finish(rows), f'(recorded from {os.path.basename(args.record_from)})', args.results)
    return 0
  names = [n for n in args.only.split(',') if n] or list(ALL_ROWS)
  unknown = sorted(set(names) - set(ALL_ROWS))
  if unknown:
    p.error(f'--only: unknown measurement(s) {unknown}; known: {list(ALL_ROWS)}')
  args.jobs = args.jobs or (2 if args.smoke else 1)
  t0 = time.perf_counter()
  left = lambda: args.budget_s - (time.perf_counter() - t0)  # noqa: E731
  args.smoke_all = args.smoke_all and args.smoke
  rows = []
  if args.smoke and not args.smoke_all:
    rows += [common.skipped_row(n, {'smoke': True}, f'smoke: same code as {SMOKE_SAME_AS[n]} '
                                'with one config value changed (--smoke_all runs it)')
             for n in names if n in SMOKE_SAME_AS]
    names = [n for n in names if n not in SMOKE_SAME_AS]
  if any(n in OFFICIAL for n in names):
    rows += [r for r in _official_rows(args, left()) if r['name'] in names]
  jax_names = [n for n in JAX_ROWS if n in names]
  if jax_names:
    rows += _jax_rows(args, jax_names, max(1.0, left()))
  rows = finish(rows)
  for r in rows:
    print(json.dumps(r), flush=True)
  if args.out:
    with open(args.out, 'w', encoding='utf-8') as f:
      f.writelines(json.dumps(r) + '\n' for r in rows)
  if args.record:
    record(rows, 'python -m benchmarks.device_suite ' + ' '.join(sys.argv[1:] if argv is None
                                                                  else argv), args.results)
  print(f'[device_suite] {len(rows)} rows, {sum(1 for r in rows if r.get("skipped"))} skipped, '
        f'{time.perf_counter() - t0:.0f} s', file=sys.stderr)
  return 0


if __name__ == '__main__':
  sys.exit(main())
