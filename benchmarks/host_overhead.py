"""Host overhead of the training loop: the real loop vs the same loop fed one cached device batch.

    python -m benchmarks.host_overhead [--cases demo,full] [--steps 30,3] [--reps 2] [--workdir DIR]

For each case it builds the trainer's pieces exactly as grl_jax/trainer/loop.py does (the
jitted, donated train step of grl_jax/trainer/setup.py; metrics fetched from the device only
every `log_every_steps`), on a synthetic MARS-format tree (data_pipeline.synthetic, generated
under --workdir if absent) read by the real tf.data input pipeline, and times the same number
of steps four ways:

  input_only      the host batches alone (tf.data: read, decode, augment), no step
  real_prefetch   the loop as it runs: host batches -> grl_jax/trainer/prefetch.py (2 batches
                  transferred ahead) -> step
  real_no_prefetch the same, each batch transferred right before its step
                  (`sharding.to_global`, the loop before prefetch.py)
  cached          one batch put on the device once and fed to every step: no input, no
                  transfer; what the step costs alone

(the three loops in turn, --reps rounds, the fastest round of each kept) and reports
host_bound = 1 - t(cached) / t(real_prefetch): the fraction of the loop's time
spent on something other than the step (input, transfer, dispatch), and the same from the
process's CPU time (host_cpu_share = 1 - cpu(cached) / cpu(real)), which other jobs on a shared
machine disturb far less than wall time. On this CPU the "device"
is the host: the tf.data threads share the cores with XLA's compute, so contention counts as
host overhead here; on a GPU the same loop overlaps them.

Cases: `demo` = configs/demo.py (reduced GRL, 16 clips x 8 x 64 x 32, float32); `full` = the
GRL recipe of configs/mars.py (ResNet-50, accel=cpu: float32) at 2 clips x 8 x 256 x 128 on a
256 x 128 synthetic tree. Prints one JSON line per (case, mode) and a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def _config(case: str):
  with_ids = dict(num_train_ids=16, num_test_ids=4)
  if case == 'demo':
    from configs import demo  # pylint: disable=g-import-not-at-top
    config = demo.get_config('model=grl')
  elif case == 'full':
    from configs import mars  # pylint: disable=g-import-not-at-top
    config = mars.get_config('model=grl,accel=cpu')
  else:
    raise ValueError(f'--cases: unknown case {case!r}; expected demo or full')
  with config.unlocked():
    config.data.root = ''
    config.data.synthetic.enabled = True
    for k, v in with_ids.items():
      config.data.synthetic[k] = v
    config.data.synthetic.height = int(config.data.height)
    config.data.synthetic.width = int(config.data.width)
    config.train.log_every_steps = 10 if case == 'demo' else 2
    config.train.num_steps = 10**6   # the host stream is bounded by the run's length
    if case == 'full':
      config.train.global_batch_size = 2
  return config


def _machine() -> str:
  model = platform.processor() or 'unknown CPU'
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      model = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    pass
  return f'{model}, {os.cpu_count()} cores'


def run_case(case: str, steps: int, workdir: str, reps: int = 2) -> list[dict]:
  import jax  # pylint: disable=g-import-not-at-top
  from grl_jax import sharding  # pylint: disable=g-import-not-at-top
  from grl_jax import validation  # pylint: disable=g-import-not-at-top
  from grl_jax.trainer import data as data_lib  # pylint: disable=g-import-not-at-top
  from grl_jax.trainer import prefetch  # pylint: disable=g-import-not-at-top
  from grl_jax.trainer import setup as setup_lib  # pylint: disable=g-import-not-at-top

  config = _config(case)
  validation.validate(config, device_count=jax.device_count(), process_count=1, mode='train')
  wd = os.path.join(workdir, case)
  t0 = time.perf_counter()
  data = data_lib.make_data(config, wd, 'train')
  data_s = time.perf_counter() - t0
  setup = setup_lib.build(config, num_classes=data.dataset.num_train_ids,
                          steps_per_epoch=data.steps_per_epoch)
  t0 = time.perf_counter()
  state = setup.init_state(int(config.seed))
  host = data.train_batches(0)
  first = next(host)
  state, m = setup.train_step(state, sharding.to_global(first, setup.mesh))   # compile
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  log_every = int(config.train.log_every_steps)
  b = int(data.global_batch_size)

  def loop(next_batch) -> tuple[float, float]:
    """(wall, CPU) seconds of `steps` loop iterations (CPU: every thread of this process)."""
    nonlocal state
    pending = []
    t, cpu = time.perf_counter(), time.process_time()
    for step in range(1, steps + 1):
      state, metrics = setup.train_step(state, next_batch())
      pending.append(metrics)
      if step % log_every == 0 or step == steps:   # the loop's only host syncs
        jax.device_get(pending)
        pending.clear()
    jax.block_until_ready(state)
    return time.perf_counter() - t, time.process_time() - cpu

  rows = []
  desc = {'case': case, 'batch': f'{b}x{config.data.seq_len}x{config.data.height}x'
          f'{config.data.width}', 'dtype': str(config.model.dtype), 'steps': steps,
          'log_every_steps': log_every}

  def record(mode, seconds, **extra):
    rows.append({**desc, 'mode': mode, 'seconds': seconds, 'steps_per_s': steps / seconds,
                 'clips_per_s': steps * b / seconds, **extra})
    print(json.dumps(rows[-1]), flush=True)

  # Input alone: after draining what tf.data prepared while the step compiled, the rate at
  # which it makes batches (wall) and the CPU it spends per batch (all threads).
  for _ in range(20):
    next(host)
  n_in = max(2 * steps, 40)
  t, cpu = time.perf_counter(), time.process_time()
  for _ in range(n_in):
    next(host)
  wall = time.perf_counter() - t
  rows.append({**desc, 'mode': 'input_only', 'steps': n_in, 'seconds': wall,
               'steps_per_s': n_in / wall, 'clips_per_s': n_in * b / wall,
               'cpu_s_per_batch': (time.process_time() - cpu) / n_in})
  print(json.dumps(rows[-1]), flush=True)

  # The three loops, `reps` times in turn (the machine may be shared): the fastest of each.
  cached = sharding.to_global(first, setup.mesh)
  it = prefetch.DevicePrefetch(host, setup.mesh)
  next(it)   # fill the prefetch queue outside the timing, as at any later step of a run
  modes = {'cached': lambda: cached, 'real_prefetch': lambda: next(it),
           'real_no_prefetch': lambda: sharding.to_global(next(host), setup.mesh)}
  times = {m: [] for m in modes}
  for _ in range(reps):
    for mode, fn in modes.items():
      times[mode].append(loop(fn))
  for mode, ts in times.items():
    best = min(ts)
    record(mode, best[0], cpu_seconds=best[1], all_seconds=[w for w, _ in ts],
           all_cpu_seconds=[c for _, c in ts])
  it.close()
  by = {r['mode']: r for r in rows}
  for r in rows:
    real = r['mode'].startswith('real')
    r['host_bound'] = 1.0 - by['cached']['seconds'] / r['seconds'] if real else None
    # The same from CPU time (all threads), which other jobs on the machine disturb less.
    r['host_cpu_share'] = (1.0 - by['cached']['cpu_seconds'] / r['cpu_seconds']) if real else None
    r['data_s'], r['compile_s'] = data_s, compile_s
  return rows


def markdown(rows: list[dict], versions: str, load: tuple) -> str:
  lines = [f'Machine: {_machine()} (`lscpu`: Intel(R) Xeon(R) Processor); {versions}; load '
           f'average {load[0]:.2f} before, {load[1]:.2f} after.', '',
           '| case | batch | mode | steps | s/step (wall) | clips/s | CPU s/step | host-bound '
           '(wall) | host share of CPU |', '|---|---|---|---|---|---|---|---|---|']
  pct = lambda x: '' if x is None else f'{100 * x:.1f}%'  # noqa: E731
  for r in rows:
    cpu = r.get('cpu_s_per_batch') or (r['cpu_seconds'] / r['steps'])
    lines.append(f"| {r['case']} | {r['batch']} | {r['mode']} | {r['steps']} | "
                 f"{r['seconds'] / r['steps']:.3f} | {r['clips_per_s']:.2f} | {cpu:.3f} | "
                 f"{pct(r['host_bound'])} | {pct(r['host_cpu_share'])} |")
  return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--cases', default='demo,full')
  p.add_argument('--steps', default='30,3', help='timed steps per mode, one per case')
  p.add_argument('--workdir', default='/tmp/grl_jax_host_overhead')
  p.add_argument('--reps', type=int, default=2, help='rounds of the three loops (fastest kept)')
  args = p.parse_args(argv)
  cases = [c for c in args.cases.split(',') if c]
  steps = [int(s) for s in args.steps.split(',')]
  steps += [steps[-1]] * (len(cases) - len(steps))
  load0 = os.getloadavg()[0]
  rows = []
  for case, n in zip(cases, steps):
    rows += run_case(case, n, args.workdir, args.reps)
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  versions = ', '.join(f'{k} {metadata.version(k)}' for k in ('jax', 'jaxlib', 'tensorflow-cpu'))
  print(markdown(rows, versions, (load0, os.getloadavg()[0])))
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
