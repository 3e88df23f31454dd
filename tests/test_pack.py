"""Packed datasets (data_pipeline/pack/): the TFDS directory, byte-identical streams and
training, resumable and atomic packing, and the one-line refusals of a wrong or half pack.

Trees are tiny: a synthetic MARS tree (data_pipeline.synthetic, 32x16 frames) and a custom CSV
tree of 16x8 JPEGs (with one PNG and one truncated JPEG, which both runs must replace alike).
"""
import json
import os

import numpy as np
from PIL import Image
import pytest

from configs import base
from data_pipeline import datasets
from data_pipeline import pack
from data_pipeline import pipeline
from data_pipeline import synthetic
from data_pipeline.pack import cli as pack_cli
from data_pipeline.pack import format as fmt
from grl_jax import errors
from grl_jax import io
from grl_jax import reporting
from grl_jax import validation
from tests import helpers as c


@pytest.fixture(scope='module')
def mars(tmp_path_factory):
  """(root, pack dir) of a tiny synthetic MARS tree packed in shards of 5 tracklets."""
  root = str(tmp_path_factory.mktemp('mars'))
  synthetic.ensure(root, num_train_ids=4, num_test_ids=3, height=32, width=16, max_len=12,
                   median_len=6)
  out = str(tmp_path_factory.mktemp('packs') / 'mars')
  summary = pack_cli.main(['--dataset=mars', f'--root={root}', f'--output={out}',
                           '--tracklets_per_shard=5'])
  assert summary['shards_written'] > 3 and summary['shards_skipped'] == 0
  return root, out


def _custom_tree(root):
  """A custom CSV tree: 4 train ids x 3 tracklets, 2 test ids in query and gallery."""
  rng = np.random.default_rng(0)
  rows = ['path,pid,camid,tracklet,split']
  def tracklet(split, pid, cam, name, n):
    for f in range(n):
      ext = 'png' if (pid, cam, f) == (1, 0, 1) else 'jpg'
      rel = f'{split}/{pid}_{name}_{f}.{ext}'
      os.makedirs(os.path.join(root, split), exist_ok=True)
      img = rng.integers(0, 255, (c.TOY_H, c.TOY_W, 3), dtype=np.uint8)
      Image.fromarray(img).save(os.path.join(root, rel))
      rows.append(f'{rel},{pid},{cam},{pid}_{name},{split}')
  for pid in range(4):
    for k in range(3):
      tracklet('train', pid, k % 2, f't{k}', 2 + (pid + k) % 4)
  for pid in (10, 11):
    tracklet('query', pid, 0, 'q', 3)
    tracklet('gallery', pid, 1, 'g', 4)
  # A truncated JPEG: both runs must replace it by the same neighbour.
  bad = os.path.join(root, 'train', '2_t1_0.jpg')
  data = open(bad, 'rb').read()
  open(bad, 'wb').write(data[:len(data) // 2])
  with open(os.path.join(root, 'dataset.csv'), 'w') as f:
    f.write('\n'.join(rows) + '\n')
  return root


@pytest.fixture(scope='module')
def custom(tmp_path_factory):
  root = _custom_tree(str(tmp_path_factory.mktemp('custom')))
  out = str(tmp_path_factory.mktemp('packs') / 'custom')
  pack_cli.main(['--dataset=custom', f'--root={root}', f'--output={out}',
                 '--tracklets_per_shard=4'])
  return root, out


def _data_cfg(**kw):
  cfg = base.base_config().data
  cfg.update(dict(height=32, width=16, seq_len=4, erasing_prob=0.5, pad_crop=2, flip=True,
                  test_sampling='dense', prefetch=1))
  cfg.update(kw)
  return cfg


def _same_index(a, b):
  for f in ('starts', 'lengths', 'pids', 'camids'):
    np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


@pytest.mark.parametrize('which', ['mars', 'custom'])
def test_pack_is_a_tfds_dataset_of_the_original_bytes(which, mars, custom):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  root, out = {'mars': mars, 'custom': custom}[which]
  loose = datasets.load(which, root)
  builder = tfds.builder_from_directory(out)
  assert set(builder.info.splits) == {'train', 'query', 'gallery'}
  test, query_rows, galleries = loose.test_split()
  assert builder.info.splits['train'].num_examples == len(loose.train)
  assert builder.info.splits['query'].num_examples == len(query_rows)
  assert (builder.info.splits['query'].num_examples +
          builder.info.splits['gallery'].num_examples) == len(test)
  assert builder.info.file_format.value == 'array_record'
  source = builder.as_data_source('train')
  for i in (0, len(loose.train) - 1):
    rec = source[i]
    paths = loose.train.frames(i)
    assert rec['frames'] == [open(p, 'rb').read() for p in paths]  # no re-encode
    assert [n.decode() for n in rec['frame_names']] == [os.path.relpath(p, root) for p in paths]
    assert (rec['pid'], rec['camid']) == (loose.train.pids[i], loose.train.camids[i])
  q = builder.as_data_source('query')[0]
  assert q['pid'] == test.pids[query_rows[0]] and q['row'] == query_rows[0]
  # The Dataset rebuilt from the pack's metadata composes every protocol as the reader does.
  for protocol in loose.protocols:
    packed = pack.load_dataset(out, dataset=which, protocol=protocol)
    ref = datasets.load(which, root, protocol=protocol)
    for split in ('train', 'query', 'gallery', 'test'):
      _same_index(getattr(ref, split), getattr(packed, split))
    np.testing.assert_array_equal(packed.query_rows, ref.query_rows)
    np.testing.assert_array_equal(packed.meta['query_in_gallery'], ref.meta['query_in_gallery'])
    for k, v in ref.meta.items():  # the reader's facts, arrays as arrays
      if isinstance(v, np.ndarray):
        assert packed.meta[k].dtype == v.dtype
        np.testing.assert_array_equal(packed.meta[k], v)
      else:
        assert packed.meta[k] == v, k
    for p in ref.protocols:
      np.testing.assert_array_equal(packed.gallery_rows[p], ref.gallery_rows[p])
  # Other readers of frame paths (ranked-list pictures, GCE maps) read packed frames through
  # the storage layer as they read files.
  for i in (0, len(test) - 1):
    for vp, fp in zip(packed.test.frames(i), test.frames(i)):
      assert io.read_bytes(vp) == open(fp, 'rb').read()


@pytest.mark.parametrize('which', ['mars', 'custom'])
def test_packed_streams_are_byte_identical(which, mars, custom):
  root, out = {'mars': mars, 'custom': custom}[which]
  loose, packed = datasets.load(which, root), pack.load_dataset(out, dataset=which)
  frames = pack.PackedFrames(out)
  cfg = _data_cfg()
  kw = dict(global_batch_size=4, seed=7, start_step=2, num_steps=3)
  a = list(pipeline.train_iterator(loose.train, cfg, **kw))
  b = list(pipeline.train_iterator(packed.train, cfg, frames=frames, **kw))
  assert len(a) == len(b) == 3
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      assert x[k].dtype == y[k].dtype and x[k].tobytes() == y[k].tobytes(), k
  # A process of two reads only the records of its own rows, and gets the same slice.
  frames2 = pack.PackedFrames(out)
  half = next(pipeline.train_iterator(packed.train, cfg, process_index=1, process_count=2,
                                      frames=frames2, **kw))
  assert half['frames'].tobytes() == a[0]['frames'][2:].tobytes()
  assert frames2.records_read <= 2 + 2 * cfg.seq_len  # its rows (+ neighbours of bad frames)
  sub = loose.test.subset(np.arange(len(loose.test))[::2])  # evaluators pass subsets
  psub = packed.test.subset(np.arange(len(packed.test))[::2])
  for x, y in zip(pipeline.eval_iterator(sub, cfg, batch_size=8),
                  pipeline.eval_iterator(psub, cfg, batch_size=8, frames=frames)):
    assert x['frames'].tobytes() == y['frames'].tobytes()
    np.testing.assert_array_equal(x['tracklet'], y['tracklet'])
  if which == 'custom':  # every train frame once: the truncated JPEG is replaced alike
    ia = pipeline.eval_iterator(loose.train, cfg, batch_size=8)
    ib = pipeline.eval_iterator(packed.train, cfg, batch_size=8, frames=frames)
    for x, y in zip(ia, ib):
      assert x['frames'].tobytes() == y['frames'].tobytes()
    assert ia.bad_frames == ib.bad_frames > 0 and len(ib.stats.files) == 1


def test_records_are_read_by_byte_range_across_block_headers(tmp_path):
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  from data_pipeline.pack import writer  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  examples = [rng.bytes(int(n)) for n in rng.integers(50, 150_000, 24)]  # ~1.8 MB: 28 blocks
  target = str(tmp_path / 'shard')
  size, offsets = writer._write_shard(target, examples)  # pylint: disable=protected-access
  assert size == os.path.getsize(target) and len(offsets) == len(examples)
  assert json.load(open(target + fmt.OFFSETS_SUFFIX)) == offsets
  reader = array_record_module.ArrayRecordReader(target)  # a valid ArrayRecord file
  assert reader.read(list(range(len(examples)))) == examples
  with open(target, 'rb') as f:
    for ex, (offset, length) in zip(examples, offsets):
      assert fmt.read_logical(f, offset, length) == ex


def test_two_training_steps_give_equal_losses(custom, tmp_path):
  from grl_jax.trainer import loop  # pylint: disable=g-import-not-at-top
  root, out = custom
  losses = {}
  for name, packed in (('loose', ''), ('packed', out)):
    config = c.toy_config(root, train__num_steps=2, train__log_every_steps=1,
                          data__packed=packed, data__erasing_prob=0.5)
    loop.train_and_evaluate(config, str(tmp_path / name))
    records = reporting.read_jsonl(str(tmp_path / name / 'metrics.jsonl'))
    losses[name] = [r['loss'] for r in records if r['kind'] == 'train']
  assert len(losses['loose']) == 2 and losses['loose'] == losses['packed']


def test_resumable_and_never_complete_when_half_written(mars, tmp_path, monkeypatch):
  from data_pipeline.pack import writer  # pylint: disable=g-import-not-at-top
  root = mars[0]
  out = str(tmp_path / 'p')
  written = []

  def stop_after_two(path):
    written.append(path)
    if len(written) == 2:
      raise KeyboardInterrupt  # a kill mid-pack
  dataset = datasets.load('mars', root)
  with pytest.raises(KeyboardInterrupt):
    writer.pack(dataset, out, root=root, tracklets_per_shard=5, on_shard=stop_after_two)
  assert not os.path.exists(os.path.join(out, fmt.INFO_FILE))
  with pytest.raises(errors.DatasetError, match='half-written') as e:
    pack.load_dataset(out, dataset='mars')
  assert out in str(e.value) and '\n' not in str(e.value)
  config = c.toy_config(root, data__packed=out, data__dataset='mars')
  with pytest.raises(errors.ConfigError, match='half-written'):
    validation.check_data_root(config)
  mtimes = {p: os.stat(p).st_mtime_ns for p in written}
  summary = writer.pack(dataset, out, root=root, tracklets_per_shard=5)
  assert summary['shards_skipped'] == 2 and {p: os.stat(p).st_mtime_ns for p in written} == mtimes
  assert not [n for n in os.listdir(out) if '.tmp' in n]
  ref = sorted(n for n in os.listdir(mars[1]) if 'array_record' in n)
  assert sorted(n for n in os.listdir(out) if 'array_record' in n) == ref
  for n in ref:  # the resumed pack is the uninterrupted one
    assert open(os.path.join(out, n), 'rb').read() == open(os.path.join(mars[1], n), 'rb').read()
  with pytest.raises(errors.DatasetError, match='already holds a complete pack'):
    writer.pack(dataset, out, root=root, tracklets_per_shard=5)
  with pytest.raises(errors.DatasetError, match='other input'):  # another plan, same dir
    os.remove(os.path.join(out, fmt.INFO_FILE))
    writer.pack(dataset, out, root=root, tracklets_per_shard=4)


def test_wrong_pack_is_one_line_naming_path_and_expectation(mars, custom, tmp_path):
  root, out = mars
  config = c.toy_config(root, data__packed=out, data__dataset='duke')
  with pytest.raises(errors.ConfigError) as e:
    validation.check_data_root(config)
  msg = str(e.value)
  assert out in msg and "'mars'" in msg and "expected dataset 'duke'" in msg and '\n' not in msg
  # Another pack format version.
  old = str(tmp_path / 'old')
  os.makedirs(old)
  for n in os.listdir(custom[1]):
    with open(os.path.join(custom[1], n), 'rb') as src, open(os.path.join(old, n), 'wb') as dst:
      dst.write(src.read())
  info = json.load(open(os.path.join(old, fmt.INFO_FILE)))
  info['version'] = '0.9.0'
  json.dump(info, open(os.path.join(old, fmt.INFO_FILE), 'w'))
  with pytest.raises(errors.DatasetError, match=f'format 0.9.0; expected .* format '
                     f'{fmt.FORMAT_VERSION}'):
    pack.load_dataset(old, dataset='custom')
  config = c.toy_config(root, data__packed=str(tmp_path / 'nowhere'))
  with pytest.raises(errors.ConfigError, match='does not exist'):
    validation.check_data_root(config)
  config = c.toy_config(root, data__packed=root, data__dataset='mars')  # a loose tree
  with pytest.raises(errors.ConfigError, match='not a packed dataset'):
    validation.check_data_root(config)
  # --protocols keeps only some galleries; another protocol is refused before compiling.
  only_cas = str(tmp_path / 'cas')
  pack_cli.main(['--dataset=custom', f'--root={custom[0]}', f'--output={only_cas}',
                 '--protocols=cas'])
  config = c.toy_config(custom[0], data__packed=only_cas, data__protocol='torchreid')
  with pytest.raises(errors.ConfigError, match=r"holds the protocols \['cas'\]; expected"):
    validation.check_data_root(config)
  assert pack.load_dataset(only_cas, dataset='custom', protocol='cas').protocol == 'cas'


def test_cli_errors_are_one_line(tmp_path, capsys):
  for argv, words in ((['--dataset=nope', '--root=/x', f'--output={tmp_path}/o'], '--dataset'),
                      (['--dataset=mars', f'--root={tmp_path}/none', f'--output={tmp_path}/o'],
                       'does not exist'),
                      (['--dataset=mars', f'--root={tmp_path}'], '--output is required')):
    with pytest.raises(SystemExit) as e:
      pack_cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and err.startswith('pack: error:') and words in err
    assert '\n' not in err
