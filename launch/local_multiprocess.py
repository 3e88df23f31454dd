r"""Runs N grl_jax processes on this machine, as N hosts of a cluster would (the rehearsal of a
multi-host launch, and what the multi-process tests use).

    python launch/local_multiprocess.py --processes=2 --devices_per_process=1 --timeout=900 -- \
        --config=configs/demo.py --workdir=workdir/demo_mp
    python launch/local_multiprocess.py --dry-run -- --config=configs/demo.py --workdir=w

Each process gets `GRL_JAX_COORDINATOR=127.0.0.1:<free port>`, `GRL_JAX_NUM_PROCESSES`,
`GRL_JAX_PROCESS_ID` (grl_jax/distributed.py then calls `jax.distributed.initialize` with them,
with the timeouts defined there; GRL_JAX_*_TIMEOUT variables set here reach every process) and
`XLA_FLAGS=--xla_force_host_platform_device_count=<devices_per_process>` CPU devices. Output of
process i is prefixed with `[pi]`; the launcher's own lines with `[launch]`: each process's pid
when it starts, and its exit status and time when it ends.

When one process fails, the others are killed at once (as `srun --kill-on-bad-exit` does), or,
with `--peer_grace=S`, left S seconds to end by themselves, which is what a cluster without such
a launcher relies on (tests/test_multihost_faults.py). The exit status is the first non-zero
one (124 when --timeout ran out). `--dry-run` prints each process's environment and command.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _pump(proc: subprocess.Popen, prefix: str):
  for line in proc.stdout:
    sys.stdout.write(f'{prefix} {line}')
    sys.stdout.flush()


def _say(msg: str):
  print(f'[launch] {msg}', flush=True)


def commands(args: list[str], processes: int, devices_per_process: int,
             module: str = 'grl_jax.main', port: int | None = None
             ) -> list[tuple[dict[str, str], list[str]]]:
  """[(the variables process i adds to the environment, its argv)] for i in 0..processes-1."""
  port = port or free_port()
  out = []
  for i in range(processes):
    env = {'GRL_JAX_COORDINATOR': f'127.0.0.1:{port}', 'GRL_JAX_NUM_PROCESSES': str(processes),
           'GRL_JAX_PROCESS_ID': str(i), 'TF_CPP_MIN_LOG_LEVEL': '2',
           'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices_per_process}'}
    out.append((env, [sys.executable, '-m', module, *args]))
  return out


def _describe(status: int) -> str:
  if status < 0:
    return f'status {status} ({signal.Signals(-status).name})'
  return f'status {status}'


def launch(args: list[str], processes: int, devices_per_process: int, timeout: float,
           module: str = 'grl_jax.main', peer_grace: float = 0.0) -> int:
  t0 = time.time()
  procs = []
  for i, (extra, argv) in enumerate(commands(args, processes, devices_per_process, module)):
    procs.append(subprocess.Popen(argv, cwd=REPO, env={**os.environ, **extra},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    _say(f'p{i} pid {procs[-1].pid}')
  pumps = [threading.Thread(target=_pump, args=(p, f'[p{i}]'), daemon=True)
           for i, p in enumerate(procs)]
  for t in pumps:
    t.start()
  deadline = t0 + timeout
  ended: dict[int, float] = {}
  status = 0
  kill_at = None
  try:
    while len(ended) < len(procs):
      for i, p in enumerate(procs):
        if i not in ended and p.poll() is not None:
          ended[i] = time.time() - t0
          _say(f'p{i} exited with {_describe(p.returncode)} after {ended[i]:.1f}s')
      failed = [procs[i].returncode for i in sorted(ended, key=ended.get)
                if procs[i].returncode != 0]
      if failed and not status:
        status = failed[0]
        kill_at = time.time() + peer_grace
      now = time.time()
      if len(ended) < len(procs) and (now > deadline or (kill_at is not None and now > kill_at)):
        if now > deadline:
          status = status or 124
        break
      time.sleep(0.2)
  finally:
    for i, p in enumerate(procs):
      if p.poll() is None:
        _say(f'killing p{i} (pid {p.pid})')
        p.kill()
    for p in procs:
      p.wait()
    for t in pumps:
      t.join(timeout=5)
  return status or next((p.returncode for p in procs if p.returncode), 0)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--processes', type=int, default=2)
  parser.add_argument('--devices_per_process', type=int, default=1)
  parser.add_argument('--timeout', type=float, default=1800, help='seconds for the whole run')
  parser.add_argument('--peer_grace', type=float, default=0.0,
                      help='seconds the others may take to exit by themselves after one fails')
  parser.add_argument('--module', default='grl_jax.main')
  parser.add_argument('--dry-run', '--dry_run', dest='dry_run', action='store_true',
                      help='print the commands, run nothing')
  parser.add_argument('args', nargs=argparse.REMAINDER, help='arguments after -- go to the module')
  ns = parser.parse_args()
  args = ns.args[1:] if ns.args[:1] == ['--'] else ns.args
  if ns.dry_run:
    for extra, argv in commands(args, ns.processes, ns.devices_per_process, ns.module):
      print(' '.join([f'{k}={shlex.quote(v)}' for k, v in extra.items()] +
                     [shlex.quote(a) for a in argv]))
    return 0
  return launch(args, ns.processes, ns.devices_per_process, ns.timeout, ns.module,
                ns.peer_grace)


if __name__ == '__main__':
  sys.exit(main())
