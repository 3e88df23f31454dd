"""The GCS emulator for tests/gcs/ (tests/gcs/emulator.py), one per pytest process.

`gcs` (session fixture) starts it, points this process at it (os.environ, so in-process
tf.io.gfile / tensorstore / google-cloud-storage calls reach it) and yields a `Gcs` handle whose
`env()` is the environment for child processes and whose `bucket()` makes a fresh bucket.
The emulator is stopped at the end (it keeps nothing on disk).
"""
from __future__ import annotations

import concurrent.futures
import itertools
import json
import os
import urllib.request

import pytest

from grl_jax import io
from tests import helpers as c
from tests.gcs import emulator


def upload_tree(local: str, remote: str) -> int:
  """Copies every file under `local` to the same relative path under `remote` through
  grl_jax/io.py (8 at a time: each object is a few round trips); returns the file count."""
  files = [os.path.join(r, f) for r, _, names in os.walk(local) for f in names]

  def put(path):
    with open(path, 'rb') as f:
      io.write_bytes(io.join(remote, os.path.relpath(path, local)), f.read())
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    list(pool.map(put, files))
  return len(files)


class Gcs:
  """A running emulator: its info, the variables that point at it, new buckets."""

  def __init__(self, info: dict):
    self.info = info
    self.vars = emulator.env(info)
    self._names = itertools.count()

  def env(self, **extra) -> dict:
    """Environment for a child process (tests.helpers.subprocess_env + the emulator's)."""
    env = c.subprocess_env()
    env.update(self.vars)
    env.update(extra)
    return env

  def bucket(self, prefix: str = 'b') -> str:
    """Creates a bucket with a name unique to this session; returns gs://<name>."""
    name = f'{prefix}-{os.getpid()}-{next(self._names)}'
    request = urllib.request.Request(
        f'http://127.0.0.1:{self.info["http_port"]}/storage/v1/b?project=test',
        data=json.dumps({'name': name}).encode(),
        headers={'Content-Type': 'application/json'})
    with urllib.request.urlopen(request, timeout=30) as response:
      assert response.status == 200, response.read()
    return f'gs://{name}'


@pytest.fixture(scope='session')
def gcs(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp('gcs_emulator'))
  proc, info = emulator.start(folder)
  saved = {k: os.environ.get(k) for k in emulator.env(info)}
  os.environ.update(emulator.env(info))
  try:
    yield Gcs(info)
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    emulator.stop(proc, info)
