r"""Runs N grl_jax processes on this machine, as N hosts of a cluster would (for testing).

    python launch/local_multiprocess.py --processes=2 --devices_per_process=1 --timeout=900 -- \
        --config=configs/demo.py --workdir=workdir/demo_mp

Each process gets `GRL_JAX_COORDINATOR=127.0.0.1:<free port>`, `GRL_JAX_NUM_PROCESSES`,
`GRL_JAX_PROCESS_ID` (grl_jax.main then calls `jax.distributed.initialize` with them) and
`XLA_FLAGS=--xla_force_host_platform_device_count=<devices_per_process>` CPU devices. Output of
process i is prefixed with `[pi]`. If one process fails (or a peer never connects, which makes
JAX abort after its initialisation timeout) the others are killed; the exit status is the first
non-zero one.
"""
from __future__ import annotations

import argparse
import os
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


def launch(args: list[str], processes: int, devices_per_process: int, timeout: float,
           module: str = 'grl_jax.main') -> int:
  port = free_port()
  procs = []
  for i in range(processes):
    env = dict(os.environ)
    env.update(GRL_JAX_COORDINATOR=f'127.0.0.1:{port}', GRL_JAX_NUM_PROCESSES=str(processes),
               GRL_JAX_PROCESS_ID=str(i), GRL_JAX_INIT_TIMEOUT=str(int(min(timeout, 300))),
               TF_CPP_MIN_LOG_LEVEL='2',
               XLA_FLAGS=f'--xla_force_host_platform_device_count={devices_per_process}')
    procs.append(subprocess.Popen([sys.executable, '-m', module, *args], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  pumps = [threading.Thread(target=_pump, args=(p, f'[p{i}]'), daemon=True)
           for i, p in enumerate(procs)]
  for t in pumps:
    t.start()
  deadline = time.time() + timeout
  status = 0
  try:
    while any(p.poll() is None for p in procs):
      failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
      if failed or time.time() > deadline:
        status = failed[0] if failed else 124
        break
      time.sleep(0.5)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
    for p in procs:
      p.wait()
    for t in pumps:
      t.join(timeout=5)
  if status == 0:
    status = next((p.returncode for p in procs if p.returncode), 0)
  return status


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--processes', type=int, default=2)
  parser.add_argument('--devices_per_process', type=int, default=1)
  parser.add_argument('--timeout', type=float, default=1800, help='seconds for the whole run')
  parser.add_argument('--module', default='grl_jax.main')
  parser.add_argument('args', nargs=argparse.REMAINDER, help='arguments after -- go to the module')
  ns = parser.parse_args()
  args = ns.args[1:] if ns.args[:1] == ['--'] else ns.args
  return launch(args, ns.processes, ns.devices_per_process, ns.timeout, ns.module)


if __name__ == '__main__':
  sys.exit(main())
