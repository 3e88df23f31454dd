"""Packed shards on gs:// (the emulator of tests/gcs/emulator.py): `python -m data_pipeline.pack`
writes the pack straight into the bucket, TFDS loads it from there, and the training stream read
from it is byte-identical to the stream read from the loose local files; a half-written pack on
gs:// is refused by the start-up validator in one line."""
from __future__ import annotations

import pytest

from configs import base
from data_pipeline import datasets
from data_pipeline import pack
from data_pipeline import pipeline
from data_pipeline import synthetic
from data_pipeline.pack import cli as pack_cli
from grl_jax import io
from grl_jax import validation
from grl_jax.errors import ConfigError

pytestmark = pytest.mark.gcs


def test_pack_to_gcs_and_stream_from_it(gcs, tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  root = str(tmp_path / 'MARS')
  synthetic.ensure(root, num_train_ids=4, num_test_ids=3, height=32, width=16, max_len=10,
                   median_len=6)
  out = gcs.bucket('packs') + '/mars'
  summary = pack_cli.main(['--dataset=mars', f'--root={root}', f'--output={out}',
                           '--tracklets_per_shard=5'])
  assert summary['shards_written'] > 2
  assert io.exists(io.join(out, 'dataset_info.json'))
  loose = datasets.load('mars', root)
  builder = tfds.builder_from_directory(out)
  assert builder.info.splits['train'].num_examples == len(loose.train)

  packed = pack.load_dataset(out, dataset='mars')
  cfg = base.base_config().data
  cfg.update(dict(height=32, width=16, seq_len=4, erasing_prob=0.5, pad_crop=2, flip=True,
                  prefetch=1))
  common = dict(global_batch_size=4, seed=3, num_steps=3)
  a = list(pipeline.train_iterator(loose.train, cfg, **common))
  b = list(pipeline.train_iterator(packed.train, cfg, frames=pack.PackedFrames(out), **common))
  assert len(a) == len(b) == 3
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for key in x:
      assert x[key].tobytes() == y[key].tobytes(), key

  # The same pack without its completion marker looks half-written: refused before compiling.
  half = gcs.bucket('half') + '/mars'
  for name in io.listdir(out):
    if name != 'dataset_info.json' and not io.isdir(io.join(out, name)):
      io.write_bytes(io.join(half, name), io.read_bytes(io.join(out, name)))
  config = base.get_config('mars', 'grl')
  config.data.packed = half
  with pytest.raises(ConfigError, match=r"config.data.packed='gs://.*half-written"):
    validation.check_data_root(config)
