"""Tracklets from folders / CSVs (grl_jax/folders.py) and `extract --input` (grl_jax/offline.py):
discovery and natural order, pixels equal to the eval pipeline's, features equal to a dataset
split's extraction, and the user mistakes as one-line errors."""
from __future__ import annotations

import shutil

import jax
import numpy as np
from PIL import Image
import pytest

from grl_jax import folders
from grl_jax import offline
from grl_jax.errors import BadFrameError, DatasetError, GrlJaxError

H, W, T = 32, 16, 4
SIZES = ((32, 16), (40, 20), (29, 13))   # detector crops: sizes vary within a tracklet


def _write_dataset(root) -> str:
  """A custom CSV (query + gallery, no train) of 11-frame tracklets of mixed frame sizes and
  formats; frame files are numbered 1..11 so natural order differs from string order."""
  rows = ['path,pid,camid,tracklet,split']
  rng = np.random.default_rng(0)
  for pid in range(3):
    colour = rng.integers(0, 255, 3)
    for split, cam in (('query', 0), ('gallery', 1)):
      for f in range(1, 12):
        ext = ('jpg', 'png', 'JPEG')[f % 3]
        rel = f'{split}/{pid}_{cam}/{f}.{ext}'
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        h, w = SIZES[(f + pid) % 3]
        img = np.clip(colour + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / rel, format='JPEG' if ext != 'png' else 'PNG')
        rows.append(f'{rel},{pid},{cam},{split}{pid}_{cam},{split}')
  (root / 'dataset.csv').write_text('\n'.join(rows) + '\n')
  return str(root / 'dataset.csv')


def tiny_grl_checkpoint(tmp, csv: str, step: int = 3):
  """(config, workdir) of a randomly initialised tiny GRL (D = 128) over `csv`, dense test
  clips of T frames."""
  from configs import demo  # pylint: disable=g-import-not-at-top
  from grl_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from grl_jax.trainer import setup as setup_lib  # pylint: disable=g-import-not-at-top
  config = demo.get_config('ids=4')
  config.unlock()
  config.data.update(dict(dataset='custom', root=csv, protocol='torchreid', height=H, width=W,
                          seq_len=T, test_sampling='dense'))
  config.data.synthetic.enabled = False
  config.model.resnet_width = 4
  config.eval.batch_size = 4
  config.lock()
  setup = setup_lib.build(config, num_classes=3, steps_per_epoch=1, train=False)
  state = setup.init_state(0)
  work = tmp / 'w'
  checkpoint.write_variables(str(work), jax.device_get(state.variables), config, step=step,
                             extra_meta={'num_classes': 3})
  return config, str(work)


def as_folders(csv: str, out, split: str = 'query') -> dict[str, list[str]]:
  """Copies the `split` tracklets of `csv` into out/<id>/<cam name>/frame<i>.<ext> (spaces and
  unicode in the names, a two-level tree); returns {folder name: original frame paths}."""
  from data_pipeline.datasets import custom  # pylint: disable=g-import-not-at-top
  frames, pids, camids = custom.read_csv(csv)[split]
  names = {}
  for paths, pid, cam in zip(frames, pids, camids):
    name = f'person {pid}/caméra {cam}'
    (out / name).mkdir(parents=True)
    for i, p in enumerate(paths):
      shutil.copy(p, out / name / f'frame{i + 1}{p[p.rfind("."):]}')
    names[name] = list(paths)
  return names


@pytest.fixture(scope='module')
def world(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('folders')
  csv = _write_dataset(tmp / 'data')
  config, work = tiny_grl_checkpoint(tmp, csv)
  names = as_folders(csv, tmp / 'tree')
  return dict(tmp=tmp, csv=csv, config=config, work=work, tree=str(tmp / 'tree'), names=names)


def test_list_tracklets_finds_nested_folders_in_natural_order(world):
  tracklets = folders.list_tracklets(world['tree'])
  assert [n for n, _ in tracklets] == sorted(world['names'])
  for name, paths in tracklets:
    assert [p.rsplit('/', 1)[1].split('.')[0] for p in paths] == [
        f'frame{i}' for i in range(1, 12)]   # frame10 after frame9
    assert all(p.startswith(world['tree'] + '/' + name + '/') for p in paths)


def test_natural_key_and_hidden_and_other_files(tmp_path):
  names = ['f10.jpg', 'F2.png', 'f1.jpg', 'f9.bmp', 'f01.jpg']
  assert sorted(names, key=folders.natural_key) == ['f01.jpg', 'f1.jpg', 'F2.png', 'f9.bmp',
                                                     'f10.jpg']
  (tmp_path / 't').mkdir()
  for n in ('2.JPG', '10.jpg', '._1.jpg', 'notes.txt'):
    (tmp_path / 't' / n).write_bytes(b'x')
  (tmp_path / '.hidden').mkdir()
  assert [p.rsplit('/', 1)[1] for p in folders.folder_frames(str(tmp_path / 't'))] == [
      '2.JPG', '10.jpg']
  # A folder holding images directly is itself a tracklet ('.').
  assert [n for n, _ in folders.list_tracklets(str(tmp_path / 't'))] == ['.']


def test_read_frames_equals_the_eval_pipeline(world):
  from data_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  from data_pipeline.index import TrackletIndex  # pylint: disable=g-import-not-at-top
  name, paths = folders.list_tracklets(world['tree'])[0]
  frames = folders.read_frames(world['tree'] + '/' + name, H, W)
  assert frames.shape == (11, H, W, 3) and frames.dtype == np.uint8
  # Sizes differ inside the tracklet; all come out H x W exactly as evaluation resizes them.
  index = TrackletIndex.from_lists([paths], [0], [0])
  opts = dict(world['config'].data)
  opts.update(seq_len=11, test_sampling='evenly')  # one clip holding every frame, in order
  batch = next(iter(pipeline.eval_iterator(index, opts, batch_size=1)))
  np.testing.assert_array_equal(frames, batch['frames'][0])
  np.testing.assert_array_equal(folders.read_frames(paths[:2], H, W), frames[:2])


def test_extract_from_folders_equals_extract_of_the_split(world, capsys):
  ref = np.load(offline.extract(world['config'], world['work'], split='query',
                                output=str(world['tmp'] / 'split.npz')))
  out = offline.extract_folders(world['config'], world['work'], input=world['tree'],
                                output=str(world['tmp'] / 'tree.npz'))
  got = np.load(out)
  assert '[extract] 3 tracklets (33 frames)' in capsys.readouterr().out
  first = {str(p): i for i, p in enumerate(ref['first_frame'])}
  rows = [first[world['names'][str(n)][0]] for n in got['names']]
  assert got['features'].shape == (3, ref['features'].shape[1]) and len(set(rows)) == 3
  np.testing.assert_allclose(got['features'], ref['features'][rows], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(got['num_frames'], [11, 11, 11])
  assert str(got['root']) == world['tree'] and int(got['step']) == 3
  assert str(got['descriptor_distance']) == 'dot'
  # The Python API on the same folders gives the same descriptors.
  from grl_jax import inference  # pylint: disable=g-import-not-at-top
  extractor = inference.load(world['work'])
  api = [extractor.tracklet_features_from_folder(world['tree'] + '/' + str(n))
         for n in got['names']]
  np.testing.assert_allclose(np.stack(api), got['features'], rtol=1e-5, atol=1e-5)
  # Frames in string order ('frame10' < 'frame2') would give other dense clips, other features.
  shuffled = [(n, sorted(p)) for n, p in folders.list_tracklets(world['tree'])]
  setup, variables, _ = offline.restore_for_inference(world['config'], world['work'])
  wrong = offline.folder_features(world['config'], setup, variables, shuffled)
  assert np.abs(wrong - got['features']).max() > 1e-3
  # A CSV input: every tracklet of every split, named by the CSV.
  z = np.load(offline.extract_folders(world['config'], world['work'], input=world['csv'],
                                      output=str(world['tmp'] / 'csv.npz')))
  assert list(z['names']) == ['query0_0', 'query1_0', 'query2_0', 'gallery0_1', 'gallery1_1',
                              'gallery2_1']
  np.testing.assert_array_equal(z['pids'], [0, 1, 2, 0, 1, 2])
  assert list(z['splits']) == ['query'] * 3 + ['gallery'] * 3
  np.testing.assert_allclose(z['features'][:3], ref['features'], rtol=1e-5, atol=1e-5)


def _error(fn, cls, *texts):
  with pytest.raises(cls) as e:
    fn()
  message = str(e.value)
  assert isinstance(e.value, GrlJaxError) and '\n' not in message, message
  for text in texts:
    assert text in message, (text, message)


def test_bad_input_is_one_line_naming_the_path(world, tmp_path):
  list_ = folders.list_tracklets
  _error(lambda: list_(str(tmp_path / 'nope')), DatasetError, 'nope', 'does not exist',
         'tracklet folders')
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'empty' / 'a' / 'b').mkdir(parents=True)
  _error(lambda: list_(str(tmp_path / 'empty' / 'a' / 'b')), DatasetError, 'no image files')
  (tmp_path / 'mixed' / 'p1').mkdir(parents=True)
  (tmp_path / 'mixed' / 'p2').mkdir()
  shutil.copy(world['names'][sorted(world['names'])[0]][0], tmp_path / 'mixed' / 'p1' / '1.jpg')
  (tmp_path / 'mixed' / 'p2' / 'x.txt').write_text('')
  _error(lambda: list_(str(tmp_path / 'mixed')), DatasetError, 'mixed/p2', 'no image files',
         'x.txt')
  (tmp_path / 'f.txt').write_text('')
  _error(lambda: list_(str(tmp_path / 'f.txt')), DatasetError, 'f.txt', 'is a file')
  # A corrupt frame: read_frames and extraction name the file.
  (tmp_path / 'mixed' / 'p2' / 'x.txt').unlink()
  good = (tmp_path / 'mixed' / 'p1' / '1.jpg').read_bytes()
  (tmp_path / 'mixed' / 'p2' / '7.jpg').write_bytes(good[:len(good) // 2])
  _error(lambda: folders.read_frames(str(tmp_path / 'mixed' / 'p2'), H, W), BadFrameError,
         'p2/7.jpg', 'truncated')
  _error(lambda: folders.read_frames([str(tmp_path / 'f.txt')], H, W), BadFrameError,
         'f.txt', 'not a JPEG/PNG/BMP')
  _error(lambda: offline.extract_folders(world['config'], world['work'],
                                         input=str(tmp_path / 'mixed'),
                                         output=str(tmp_path / 'o.npz')),
         BadFrameError, 'p2/7.jpg')
  # An output that cannot be written is reported before any compute.
  _error(lambda: offline.extract_folders(world['config'], world['work'], input=world['tree'],
                                         output=str(tmp_path / 'f.txt' / 'o.npz')),
         GrlJaxError, 'f.txt/o.npz', 'not writable')


def test_bmp_frames(world, tmp_path):
  name, paths = folders.list_tracklets(world['tree'])[0]
  (tmp_path / 'b' / 't').mkdir(parents=True)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for i, p in enumerate(paths):  # the pixels TF decodes (PIL's JPEG decoder rounds otherwise)
    pixels = tf.io.decode_image(open(p, 'rb').read(), channels=3).numpy()
    Image.fromarray(pixels).save(tmp_path / 'b' / 't' / f'{i}.bmp')
  frames = folders.read_frames(str(tmp_path / 'b' / 't'), H, W)
  # BMP is lossless: the same pixels, resized the same way.
  np.testing.assert_array_equal(frames, folders.read_frames(paths, H, W))
  z = np.load(offline.extract_folders(world['config'], world['work'], input=str(tmp_path / 'b'),
                                      output=str(tmp_path / 'b.npz')))
  ref = np.load(offline.extract_folders(world['config'], world['work'],
                                        input=world['tree'] + '/' + name,
                                        output=str(tmp_path / 'r.npz')))
  np.testing.assert_allclose(z['features'], ref['features'], rtol=1e-5, atol=1e-5)
