"""The tiny demo with its data root AND workdir on gs:// (the emulator of tests/gcs/emulator.py):
train, SIGKILL mid-run, resume to the same losses as an uninterrupted run of the same data on
local disk, eval, extract.

Every layer goes to the emulator: frames through tf.data's tf.io.read_file, the dataset index
and workdir files through grl_jax/io.py (tf.io.gfile), TensorBoard event files, orbax
checkpoints (tensorstore for arrays, tf.io.gfile for their metadata, google-cloud-storage for
the bucket query). The synthetic MARS tree is generated locally (the generator writes local
directories only) and copied into the bucket through grl_jax/io.py.
"""
from __future__ import annotations

import io as _io
import json
import re

import numpy as np
import pytest

from data_pipeline import synthetic
from grl_jax import checkpoint, io
from tests.faults import helpers as fh
from tests.gcs.conftest import upload_tree

pytestmark = pytest.mark.gcs

# 6 / 2 identities, with 4-10 frame tracklets (~330 files): every frame is a request.
SYNTHETIC = dict(num_train_ids=6, num_test_ids=2, height=32, width=16, min_len=4, median_len=6,
                 max_len=10)


@pytest.fixture(scope='module')
def gcs_data(gcs, tmp_path_factory):
  local = str(tmp_path_factory.mktemp('synthetic') / 'MARS')
  synthetic.generate(local, **SYNTHETIC)
  bucket = gcs.bucket('data')
  assert upload_tree(local, f'{bucket}/MARS') > 200
  return f'{bucket}/MARS', local


def _command(workdir: str, data: str, steps: int, *extra: str) -> list[str]:
  return fh.demo_command(workdir, f'--config.data.root={data}',
                         '--config.data.synthetic.enabled=false',
                         '--config.train.eval_at_start=false',
                         '--config.train.eval_every_epochs=0',    # evaluate at the end only
                         '--config.train.checkpoint_every_steps=2',
                         '--config.train.keep_checkpoints=2',
                         # fewer pictures in the final evaluation (the losses do not change)
                         '--config.evals.ranked_list.queries=1',
                         '--config.evals.gce_map.tracklets=1', *extra, steps=steps)


def _run(gcs, args: list[str], timeout: float = 400) -> str:
  rc, out = fh.Child(args, env=gcs.env()).finish(timeout)
  assert rc == 0, out
  return out


def _records(workdir: str, kind: str) -> dict[int, list[dict]]:
  """metrics.jsonl (read from gs://) by step, wall-clock fields dropped. A step logged by the
  killed run after its last checkpoint appears twice: once from it, once from the resumed run."""
  out: dict[int, list[dict]] = {}
  for line in io.read_text(io.join(workdir, 'metrics.jsonl')).splitlines():
    r = json.loads(line)
    if r['kind'] == kind:
      out.setdefault(r['step'], []).append({k: v for k, v in r.items() if k not in fh.TIMING})
  return out


def test_train_kill_resume_eval_extract_all_on_gcs(gcs, gcs_data, tmp_path, request):
  work = gcs.bucket('work') + '/run'
  gcs_data, local_data = gcs_data

  # 1. Train "forever"; SIGKILL once a checkpoint is committed in the bucket. Meanwhile (the
  # runs wait on the emulator much of the time) an uninterrupted run of `final` steps of the
  # same files on local disk: gs:// must change nothing.
  final = 8
  reference = str(tmp_path / 'reference')
  uninterrupted_run = fh.Child(_command(reference, local_data, final), env=gcs.env())
  request.addfinalizer(uninterrupted_run.kill)   # if the test fails before it ends
  child = fh.Child(_command(work, gcs_data, 100000), env=gcs.env())
  child.wait_for(lambda: checkpoint.complete_steps(io.join(work, 'checkpoints')), 400,
                 'a committed checkpoint on gs://', poll=0.2)
  child.kill()
  child.finish(60)
  saved = checkpoint.complete_steps(io.join(work, 'checkpoints'))
  assert saved and saved[-1] % 2 == 0 and saved[-1] < final, saved

  # 2. Resume to `final` steps.
  out = _run(gcs, _command(work, gcs_data, final))
  assert f'resumed from {work}/checkpoints/{saved[-1]}' in out, out
  assert f'step {final}/{final}' in out, out
  rc, out = uninterrupted_run.finish(400)
  assert rc == 0, out
  resumed, uninterrupted = _records(work, 'train'), _records(reference, 'train')
  assert sorted(uninterrupted) == list(range(1, final + 1))
  for step in range(1, final + 1):
    # Bit-identical on one machine: before the kill, and after the resume.
    assert resumed[step] and all(r == uninterrupted[step][0] for r in resumed[step]), step
  assert _records(work, 'eval')[final] == _records(reference, 'eval')[final]
  assert io.exists(io.join(work, f'ranked_list_step{final}.png'))
  assert io.listdir(io.join(work, 'tensorboard'))           # TensorBoard events on gs://
  assert io.exists(io.join(work, 'config.json'))
  assert checkpoint.complete_steps(io.join(work, 'checkpoints'))[-1] == final

  # 3. eval from the bucket (config from the checkpoint), result JSON written there.
  out = _run(gcs, [*fh.demo_command(work)[:4], '--mode=eval', f'--workdir={work}'])
  assert 'mAP' in out and f'step {final}' in out, out
  saved_eval = io.read_json(io.join(work, f'eval_step{final}.json'))
  np.testing.assert_allclose(saved_eval['reid']['mAP'],
                             _records(work, 'eval')[final][-1]['reid/mAP'], rtol=1e-5)

  # 4. extract to an .npz in the bucket.
  output = io.join(work, 'gallery.npz')
  _run(gcs, [*fh.demo_command(work)[:4], '--mode=extract', '--split=gallery',
             f'--workdir={work}', f'--output={output}'])
  npz = np.load(_io.BytesIO(io.read_bytes(output)))
  assert len(npz['pids']) == len(npz['features']) > 0
  assert re.fullmatch(r'float\d+', str(npz['features'].dtype))
