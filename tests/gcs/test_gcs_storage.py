"""grl_jax/io.py and the checkpoint folder helpers on gs:// (the emulator), in this process:
each operation the trainer, evaluators and checkpoints use, read back through another layer
where one exists (google-cloud-storage sees what tf.io.gfile wrote)."""
from __future__ import annotations

import io as _io

import numpy as np
import pytest
from PIL import Image

from grl_jax import checkpoint, io, reporting

pytestmark = pytest.mark.gcs


def test_io_operations_round_trip_on_gcs(gcs):
  from google.cloud import storage  # pylint: disable=g-import-not-at-top
  bucket = gcs.bucket('io')
  root = f'{bucket}/w'
  io.makedirs(io.join(root, 'sub'))
  io.write_json(io.join(root, 'config.json'), {'a': 1})
  assert io.read_json(io.join(root, 'config.json')) == {'a': 1}
  io.save_npz(io.join(root, 'f.npz'), features=np.arange(6, dtype=np.float32).reshape(2, 3))
  npz = np.load(_io.BytesIO(io.read_bytes(io.join(root, 'f.npz'))))
  np.testing.assert_array_equal(npz['features'], np.arange(6).reshape(2, 3))
  io.save_png(io.join(root, 'sub', 'p.png'), Image.new('RGB', (4, 3), (255, 0, 0)))
  with Image.open(_io.BytesIO(io.read_bytes(io.join(root, 'sub', 'p.png')))) as im:
    assert im.size == (4, 3) and im.getpixel((0, 0)) == (255, 0, 0)
  assert io.listdir(root) == ['config.json', 'f.npz', 'sub']
  assert io.isdir(io.join(root, 'sub')) and not io.isdir(io.join(root, 'f.npz'))
  assert io.glob(root, '*/*.png') == [f'{root}/sub/p.png']
  io.rename(io.join(root, 'f.npz'), io.join(root, 'g.npz'))
  assert not io.exists(io.join(root, 'f.npz')) and io.exists(io.join(root, 'g.npz'))
  io.remove(io.join(root, 'g.npz'))
  assert not io.exists(io.join(root, 'g.npz'))
  # Objects cannot be appended to: metrics.jsonl is rewritten whole at each flush, and a
  # resumed run's writer starts from what is there.
  for value in (1, 2):
    log = io.open_append(io.join(root, 'metrics.jsonl'))
    log.write(f'{{"step": {value}}}\n')
    log.flush()
    log.close()
  assert [r['step'] for r in reporting.read_jsonl(io.join(root, 'metrics.jsonl'))] == [1, 2]
  # Another client sees the same objects.
  names = {b.name for b in storage.Client().list_blobs(bucket[len('gs://'):], prefix='w/')}
  assert {'w/config.json', 'w/sub/p.png', 'w/metrics.jsonl'} <= names


def test_checkpoint_folders_on_gcs_keep_only_committed_steps(gcs):
  ckpts = gcs.bucket('ckpt') + '/checkpoints'
  io.write_text(io.join(ckpts, '4', 'commit_success.txt'), 'ok')
  io.write_text(io.join(ckpts, '4', 'train_state', 'x'), 'data')
  io.write_text(io.join(ckpts, '6', 'train_state', 'x'), 'half written')   # no marker
  assert checkpoint.complete_steps(ckpts) == [4]
  checkpoint._set_aside_incomplete(ckpts)  # pylint: disable=protected-access
  assert io.listdir(ckpts) == ['4', '6.incomplete-0']
  assert io.read_text(io.join(ckpts, '6.incomplete-0', 'train_state', 'x')) == 'half written'


def test_tensorboard_events_are_written_to_gcs(gcs):
  work = gcs.bucket('tb') + '/run'
  reporter = reporting.Reporter(work, total_steps=2, stream=_io.StringIO())
  reporter.write(1, 'train', {'loss': 2.5})
  reporter.close()
  events = io.listdir(io.join(work, 'tensorboard'))
  assert len(events) == 1 and events[0].startswith('events.out.tfevents.')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  values = [(v.tag, tf.make_ndarray(v.tensor).item())
            for e in tf.compat.v1.train.summary_iterator(io.join(work, 'tensorboard', events[0]))
            for v in e.summary.value]
  assert values == [('train/loss', 2.5)]
