"""Joining a multi-process run (multi-host TPU / GPU, launch/local_multiprocess.py) with bounded
waits, so that a peer that never connects, or dies mid-run, ends every other process within a
known time instead of leaving it blocked in a collective.

How the processes find each other:
* `GRL_JAX_COORDINATOR=host:port` with `GRL_JAX_NUM_PROCESSES`, `GRL_JAX_PROCESS_ID`: explicit
  (launch/local_multiprocess.py, any launcher that hands out ranks itself);
* else `GRL_JAX_DISTRIBUTED=1` (or `--distributed`): `jax.distributed.initialize` detects the
  cluster (Cloud TPU VMs and GKE TPU pods, Slurm, Open MPI);
* else one process, nothing to join.

The timeouts (seconds) are defined once, in TIMEOUTS, and every process must use the same values
(set the variables in the launcher, not per host):
* GRL_JAX_INIT_TIMEOUT: how long `initialize` waits for every process to connect;
* GRL_JAX_HEARTBEAT_TIMEOUT: a process that has sent no heartbeat for this long is dead; the
  coordinator then ends the other processes (JAX's "another task died" fatal error). A process
  blocked in a collective with a dead peer therefore exits within about this bound (plus the
  time the collective layer itself needs to notice a closed connection, usually less);
* GRL_JAX_SHUTDOWN_TIMEOUT: at exit, how long a finished process waits for the others at the
  shutdown barrier (process 0 may end later: it alone writes the logs and pictures).

`run_guarded` turns the error a survivor sees when a peer dies mid-collective (e.g. "Gloo
AllGather failed ... Connection reset by peer" on CPU) into one line naming the process and what
to do, and leaves at once: the normal exit would wait at the shutdown barrier for the dead peer
and then abort with a stack trace.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, TypeVar

from grl_jax.errors import ConfigError

T = TypeVar('T')

# name -> (environment variable, default seconds). The heartbeat default is below JAX's 100 s so
# a dead host is noticed within a minute; a live host's heartbeats come from a background thread,
# so long compilations or evaluations do not delay them.
TIMEOUTS = {
    'init': ('GRL_JAX_INIT_TIMEOUT', 300),
    'heartbeat': ('GRL_JAX_HEARTBEAT_TIMEOUT', 60),
    'shutdown': ('GRL_JAX_SHUTDOWN_TIMEOUT', 300),
}


def _int_env(name: str, default: int, minimum: int = 1, unit: str = '') -> int:
  raw = os.environ.get(name)
  if raw is None or raw == '':
    return default
  try:
    value = int(raw)
  except ValueError:
    value = minimum - 1
  if value < minimum:
    raise ConfigError(f'environment variable {name}={raw!r}: expected an integer >= {minimum}'
                      f'{unit}')
  return value


def timeouts() -> dict[str, int]:
  """{'init', 'heartbeat', 'shutdown'} -> seconds, from TIMEOUTS and the environment."""
  return {key: _int_env(var, default, unit=' (seconds)')
          for key, (var, default) in TIMEOUTS.items()}


def initialize_args(force: bool = False) -> dict | None:
  """The keyword arguments for `jax.distributed.initialize`, or None for a single process.

  `force` is the `--distributed` flag. Raises ConfigError for a malformed variable, before any
  connection is attempted."""
  coordinator = os.environ.get('GRL_JAX_COORDINATOR')
  if not coordinator and not (force or os.environ.get('GRL_JAX_DISTRIBUTED') == '1'):
    return None
  t = timeouts()
  args = dict(initialization_timeout=t['init'], heartbeat_timeout_seconds=t['heartbeat'],
              shutdown_timeout_seconds=t['shutdown'])
  if coordinator:
    if ':' not in coordinator:
      raise ConfigError(f'GRL_JAX_COORDINATOR={coordinator!r}: expected host:port')
    num = _int_env('GRL_JAX_NUM_PROCESSES', 0)
    if 'GRL_JAX_NUM_PROCESSES' not in os.environ or 'GRL_JAX_PROCESS_ID' not in os.environ:
      raise ConfigError('GRL_JAX_COORDINATOR is set: GRL_JAX_NUM_PROCESSES and '
                        'GRL_JAX_PROCESS_ID must be set too')
    pid = _int_env('GRL_JAX_PROCESS_ID', 0, minimum=0)
    if pid >= num:
      raise ConfigError(f'GRL_JAX_PROCESS_ID={pid}: expected 0 .. GRL_JAX_NUM_PROCESSES-1 = '
                        f'{num - 1}')
    args.update(coordinator_address=coordinator, num_processes=num, process_id=pid)
  return args


def initialize(force: bool = False) -> bool:
  """Joins the multi-process run described by the environment (see the module docstring);
  returns whether it did. Must run before anything touches a JAX device."""
  args = initialize_args(force)
  if args is None:
    return False
  import jax  # pylint: disable=g-import-not-at-top
  jax.distributed.initialize(**args)
  return True


# Lower-cased fragments of the runtime errors a process sees when another one is gone: a
# collective whose peer closed its connection, the coordination service's heartbeat / barrier
# verdicts, or the coordinator itself gone.
_PEER_LOST = ('gloo', 'connection reset', 'connection refused', 'connection closed',
              'broken pipe', 'socket closed', 'heartbeat', 'coordination service', 'barrier',
              'nccl', 'unavailable:', 'deadline_exceeded', 'deadline exceeded')


def peer_lost(error: BaseException) -> bool:
  """True when `error`, raised in a multi-process run, says another process is gone."""
  import jax  # pylint: disable=g-import-not-at-top
  if not jax.distributed.is_initialized() or jax.process_count() < 2:
    return False
  seen = set()
  while error is not None and id(error) not in seen:   # the error or what it was raised from
    seen.add(id(error))
    if isinstance(error, jax.errors.JaxRuntimeError):
      text = str(error).lower()
      if any(marker in text for marker in _PEER_LOST):
        return True
    error = error.__cause__ or error.__context__
  return False


def run_guarded(prog: str, fn: Callable[[], T], workdir: str = '') -> T:
  """`fn()`; if it fails because another process of the run is gone (`peer_lost`), prints one
  line `<prog>: error: ...` on stderr and ends this process with status 1 at once."""
  try:
    return fn()
  except Exception as e:  # pylint: disable=broad-except
    if not peer_lost(e):
      raise
    import jax  # pylint: disable=g-import-not-at-top
    first = ' '.join((str(e).strip().splitlines() or [''])[0].split())[:300]
    where = f' in {workdir}/checkpoints' if workdir else ''
    print(f'{prog}: error: process {jax.process_index()} of {jax.process_count()} lost contact '
          f'with the others ({type(e).__name__}: {first}); another process died or was '
          f'preempted (its log has the cause). Rerun the same command on every host: it '
          f'resumes from the last complete checkpoint{where}', file=sys.stderr, flush=True)
    sys.stdout.flush()
    # Not sys.exit: the exit handlers would wait at the shutdown barrier for the dead process.
    os._exit(1)  # pylint: disable=protected-access
