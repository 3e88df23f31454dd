"""The storage layer: one way to read and write files, whether local or remote (gs://, ...).

Everything the system writes into a workdir (config, metrics, evaluation JSON, pictures,
features) and reads back goes through here, over `etils.epath` (the library orbax uses for
checkpoints), so a local path and an object-store URL behave the same. Only this module asks
whether a path is remote.

gs:// goes through TensorFlow's GCS filesystem (etils.epath picks tf.io.gfile when TensorFlow
is installed), orbax's arrays through tensorstore's gcs driver, and `check_remote` through
google-cloud-storage (which orbax also needs for gs://). tests/gcs/ runs all three against an
emulator; tests/gcs/emulator.py says which environment variables point each one at it.
"""
from __future__ import annotations

import io as _io
import json
import os
from typing import Any, Optional

from etils import epath

from grl_jax.errors import StorageError


def is_remote(path: str) -> bool:
  """True for URLs with a scheme (gs://, s3://, ...), False for local paths."""
  return '://' in str(path)


def path(p: str) -> epath.Path:
  """`p` as an epath.Path; local paths are expanded (~) and made absolute."""
  if is_remote(p):
    return epath.Path(str(p))
  return epath.Path(os.path.abspath(os.path.expanduser(str(p))))


def normalize(p: str) -> str:
  """The canonical string form of a path (absolute for local ones)."""
  return str(path(p))


def join(base: str, *parts: str) -> str:
  return str(path(base).joinpath(*parts))


def exists(p: str) -> bool:
  return path(p).exists()


def isdir(p: str) -> bool:
  return path(p).is_dir()


def makedirs(p: str) -> str:
  check_remote(p)
  path(p).mkdir(parents=True, exist_ok=True)
  return normalize(p)


def listdir(p: str) -> list[str]:
  return sorted(c.name for c in path(p).iterdir())


def glob(base: str, pattern: str) -> list[str]:
  """Sorted paths under `base` matching the relative `pattern` ('*/*/x.jpg'); metacharacters in
  `base` itself are taken literally."""
  return sorted(str(c) for c in path(base).glob(pattern))


def rename(src: str, dst: str) -> None:
  """Moves `src` to `dst`, replacing it (atomic for local paths)."""
  path(src).replace(path(dst))


def remove(p: str) -> None:
  path(p).unlink()


def read_text(p: str) -> str:
  return path(p).read_text()


def read_bytes(p: str) -> bytes:
  return path(p).read_bytes()


def write_bytes(p: str, data: bytes) -> str:
  """Writes `data` to `p` (parents created) and returns the path."""
  target = path(p)
  target.parent.mkdir(parents=True, exist_ok=True)
  target.write_bytes(data)
  return str(target)


def write_text(p: str, text: str) -> str:
  return write_bytes(p, text.encode('utf-8'))


def write_json(p: str, obj: Any, indent: int = 1) -> str:
  return write_text(p, json.dumps(obj, indent=indent, sort_keys=False) + '\n')


def read_json(p: str) -> Any:
  return json.loads(read_text(p))


def save_npz(p: str, **arrays) -> str:
  """`np.savez` to any path (serialised in memory: object stores have no seekable writes)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  buffer = _io.BytesIO()
  np.savez(buffer, **arrays)
  return write_bytes(p, buffer.getvalue())


def save_png(p: str, image) -> str:
  """A PIL image as PNG at `p`."""
  buffer = _io.BytesIO()
  image.save(buffer, format='PNG')
  return write_bytes(p, buffer.getvalue())


class _RewriteFile:
  """Append emulation for object stores (objects cannot be appended to): keeps the text and
  rewrites the whole object on every flush."""

  def __init__(self, p: str):
    self.path = p
    self.text = read_text(p) if exists(p) else ''

  def write(self, text: str):
    self.text += text

  def flush(self):
    write_text(self.path, self.text)

  def close(self):
    self.flush()


def open_append(p: str):
  """A text file object appending to `p` (created if absent); `flush()` makes lines durable."""
  if is_remote(p):
    return _RewriteFile(p)
  makedirs(os.path.dirname(normalize(p)))
  return open(normalize(p), 'a')


_BUCKET_PROBLEMS: dict[str, Optional[str]] = {}


def check_remote(p: str, field: str = '') -> None:
  """Raises StorageError naming `p` (and `field`, e.g. 'config.data.root') when `p` is on gs://
  and its bucket does not exist, is not accessible or no credentials are found; no-op for
  other paths. One bounded request per bucket and process (the answer is cached), so a typo'd
  bucket is reported at start-up rather than after minutes of TensorFlow's retries."""
  p = str(p)
  if not p.startswith('gs://'):
    return
  bucket = p[len('gs://'):].split('/')[0]
  if bucket not in _BUCKET_PROBLEMS:
    _BUCKET_PROBLEMS[bucket] = _bucket_problem(bucket)
  problem = _BUCKET_PROBLEMS[bucket]
  if problem:
    raise StorageError(f'{field + "=" if field else ""}{p!r}: {problem}')


def _bucket_problem(bucket: str) -> Optional[str]:
  """Why gs://`bucket` cannot be used, or None."""
  if not bucket:
    return 'no bucket name; expected gs://BUCKET/path'
  try:
    # pylint: disable=g-import-not-at-top
    from google.api_core import exceptions as api_exceptions
    from google.auth import exceptions as auth_exceptions
    from google.cloud import storage
    from google.cloud.storage import retry as storage_retry
  except ImportError:
    return ('gs:// needs the google-cloud-storage package (orbax uses it for gs:// '
            'checkpoints): pip install -r requirements.txt')
  import logging  # pylint: disable=g-import-not-at-top
  auth_log = logging.getLogger('google.auth')
  level = auth_log.level
  # google-auth logs a warning for each credential source it fails to find; the one line
  # below says what matters.
  auth_log.setLevel(logging.ERROR)
  try:
    exists = storage.Client().bucket(bucket).exists(
        timeout=20, retry=storage_retry.DEFAULT_RETRY.with_timeout(30))
  except auth_exceptions.DefaultCredentialsError:
    return ('no Google Cloud credentials found; run `gcloud auth application-default login`, '
            'set GOOGLE_APPLICATION_CREDENTIALS to a key file, or run on a VM whose service '
            'account can read the bucket')
  except api_exceptions.Forbidden as e:
    return f'access to bucket gs://{bucket} is denied to these credentials ({e.message})'
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).strip().splitlines()[0] if str(e).strip() else ''
    return f'bucket gs://{bucket} cannot be reached ({type(e).__name__}: {first})'
  finally:
    auth_log.setLevel(level)
  if not exists:
    return f'bucket gs://{bucket} does not exist'
  return None
