"""gs:// mistakes are one line naming the path, before anything is compiled: a missing bucket
(workdir, data root), a missing folder in an existing bucket, no credentials at all, and the
synthetic generator asked to write to a URL."""
from __future__ import annotations

import subprocess
import sys

import pytest

from data_pipeline import synthetic
from grl_jax import io
from grl_jax.errors import ConfigError, StorageError
from tests import helpers as c
from tests.gcs import emulator

pytestmark = pytest.mark.gcs

_DEMO = ('--config=configs/demo.py:ids=6,test_ids=4,steps=2', '--config.data.height=32',
         '--config.data.width=16', '--config.data.seq_len=4', '--config.model.resnet_width=4')


def _one_line_error(env: dict, *args: str) -> str:
  proc = subprocess.run([sys.executable, '-m', 'grl_jax.main', *_DEMO, *args], cwd=c.REPO,
                        env=env, capture_output=True, text=True, timeout=120)
  out = proc.stdout + proc.stderr
  line = c.one_line_error_output(proc.returncode, out)
  assert '[init]' not in out, out
  return line


def test_missing_bucket_or_folder_is_named_before_compiling(gcs, tmp_path):
  line = _one_line_error(gcs.env(), '--workdir=gs://no-such-bucket-w/run')
  assert "'gs://no-such-bucket-w/run'" in line and 'bucket gs://no-such-bucket-w does not exist' \
      in line and '--workdir' in line, line

  remote_root = ('--config.data.synthetic.enabled=false',)
  line = _one_line_error(gcs.env(), *remote_root, '--config.data.root=gs://no-such-bucket-d/MARS',
                         f'--workdir={tmp_path}/w')
  assert "config.data.root='gs://no-such-bucket-d/MARS'" in line, line
  assert 'bucket gs://no-such-bucket-d does not exist' in line, line

  # The demo generates its dataset into <workdir>/data: not into a bucket.
  bucket = gcs.bucket('demo')
  line = _one_line_error(gcs.env(), f'--workdir={bucket}/run')
  assert f"synthetic root '{bucket}/run/data': expected a local directory" in line, line

  bucket = gcs.bucket('empty')
  line = _one_line_error(gcs.env(), *remote_root, f'--config.data.root={bucket}/MARS',
                         f'--workdir={tmp_path}/w')
  assert f"config.data.root='{bucket}/MARS' does not exist" in line and 'bbox_train' in line, line


def test_no_credentials_is_one_line(gcs, tmp_path):
  """No emulator variables, no key file, no gcloud config, not on GCE: google-auth finds no
  credentials and says so at once (the emulator is not involved; `gcs` only orders the test
  with the others and makes sure this process's own variables are not inherited)."""
  env = c.subprocess_env()
  for name in (*emulator.env(gcs.info), 'GOOGLE_APPLICATION_CREDENTIALS', 'CLOUDSDK_CONFIG'):
    env.pop(name, None)
  env.update(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / 'gcloud'), NO_GCE_CHECK='true')
  line = _one_line_error(env, '--workdir=gs://some-bucket/run')
  assert "'gs://some-bucket/run'" in line and 'no Google Cloud credentials found' in line, line


def test_check_remote_accepts_a_bucket_and_ignores_local_paths(gcs, tmp_path):
  bucket = gcs.bucket('ok')
  io.check_remote(f'{bucket}/anything')          # exists: no error
  io.check_remote(str(tmp_path / 'local'))       # not remote: nothing to check
  with pytest.raises(StorageError, match=r"config.data.root='gs://': no bucket name"):
    io.check_remote('gs://', 'config.data.root')


def test_synthetic_generator_refuses_a_url_in_one_line(gcs):
  bucket = gcs.bucket('synthetic')
  with pytest.raises(ConfigError, match='expected a local directory'):
    synthetic.generate(f'{bucket}/MARS', num_train_ids=2, num_test_ids=2)
  assert not io.exists(f'{bucket}/MARS')
