"""The run directory: created and probed for writability once, before anything expensive."""
from __future__ import annotations

import os
import socket

from grl_jax import io
from grl_jax.errors import WorkdirError


def prepare(workdir: str) -> str:
  """Creates `workdir` (local or remote) and checks it can be written; returns its canonical
  path. A workdir we cannot write is reported before any data is read or step compiled."""
  if not workdir:
    raise WorkdirError('--workdir is empty; give a directory for checkpoints and logs')
  path = io.normalize(workdir)
  probe = io.join(path, f'.write_test.{socket.gethostname()}.{os.getpid()}')
  try:
    io.makedirs(path)
    io.write_text(probe, 'ok')
    io.remove(probe)
  except OSError as e:
    raise WorkdirError(f'workdir {workdir!r} is not writable ({e.strerror or e}); choose '
                       'another --workdir') from e
  return path
