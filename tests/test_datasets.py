"""Dataset readers on tiny on-disk layouts (synthetic MARS; hand-built Duke/iLIDS/PRID/LS-VID/CSV).

Readers never decode images, so the hand-built trees hold empty files.
"""
import importlib
import json
import os
import shutil

import h5py
import numpy as np
import pytest
import scipy.io

from data_pipeline import datasets, synthetic
from data_pipeline.datasets import DatasetError, common, prid
from grl_jax import errors, schema

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

TINY = dict(num_train_ids=4, num_test_ids=6, height=64, width=32, median_len=6, max_len=14,
            min_tracklets=3, max_tracklets=5)


def touch(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  open(path, 'wb').close()


# ------------------------------------------------------------------------------------------------
# MARS


@pytest.fixture(scope='module')
def mars_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('mars'))
  synthetic.generate(root, **TINY)
  return root


def _mars_info(root):
  info = os.path.join(root, 'info')
  train = scipy.io.loadmat(os.path.join(info, 'tracks_train_info.mat'))['track_train_info']
  test = scipy.io.loadmat(os.path.join(info, 'tracks_test_info.mat'))['track_test_info']
  query = scipy.io.loadmat(os.path.join(info, 'query_IDX.mat'))['query_IDX'].ravel() - 1
  names = open(os.path.join(info, 'test_name.txt')).read().split()
  return train.astype(int), test.astype(int), query.astype(int), names


def test_mars_protocols(mars_root):
  train_info, test_info, query, names = _mars_info(mars_root)
  is_query = np.zeros(len(test_info), bool)
  is_query[query] = True
  torchreid_rows = np.flatnonzero(~is_query & (test_info[:, 2] != -1))
  expected = {
      'torchreid': torchreid_rows,
      'official': np.arange(len(test_info)),
      'cas': np.concatenate([query, torchreid_rows]),
  }
  for protocol, rows in expected.items():
    ds = datasets.load('mars', mars_root, protocol=protocol)
    assert ds.protocol == protocol
    np.testing.assert_array_equal(ds.query.pids, test_info[query, 2])
    np.testing.assert_array_equal(ds.query.camids, test_info[query, 3] - 1)
    np.testing.assert_array_equal(ds.gallery.pids, test_info[rows, 2])
    np.testing.assert_array_equal(ds.gallery.camids, test_info[rows, 3] - 1)
    np.testing.assert_array_equal(ds.gallery.lengths, test_info[rows, 1] - test_info[rows, 0] + 1)
    # Frames of a gallery tracklet are exactly its slice of the name list, in order.
    k = len(rows) // 2
    s, e = test_info[rows[k], :2]
    assert [os.path.basename(p) for p in ds.gallery.frames(k)] == names[s - 1:e]
    assert ds.gallery.frames(k)[0] == os.path.join(mars_root, 'bbox_test', names[s - 1][:4],
                                                   names[s - 1])
    qig = ds.meta['query_in_gallery']
    if protocol == 'torchreid':
      assert (qig == -1).all()
    else:
      np.testing.assert_array_equal(ds.gallery.pids[qig], ds.query.pids)
  # Train: relabelled 0..N-1, original pids kept in meta.
  ds = datasets.load('mars', mars_root)
  labels = ds.train.pids
  assert sorted(np.unique(labels)) == list(range(TINY['num_train_ids']))
  np.testing.assert_array_equal(ds.meta['train_pids'][labels], train_info[:, 2])
  assert ds.train.num_frames == (train_info[:, 1] - train_info[:, 0] + 1).sum()
  assert (test_info[:, 2] == -1).any() and (test_info[:, 2] == 0).any()


def test_mars_verify(mars_root, tmp_path):
  datasets.load('mars', mars_root, verify=True)  # every frame exists
  # A copy with one frame removed: index files and directories only.
  root = str(tmp_path / 'm')
  shutil.copytree(mars_root, root)
  _, _, _, names = _mars_info(root)
  victim = os.path.join(root, 'bbox_test', names[3][:4], names[3])
  os.remove(victim)
  datasets.load('mars', root)  # no check without verify
  with pytest.raises(DatasetError, match=names[3]):
    datasets.load('mars', root, verify=True)


def _write_mars(root, train_names, train_info, test_names, test_info, query,
                query_key='query_IDX'):
  info = os.path.join(root, 'info')
  os.makedirs(info, exist_ok=True)
  for sub in ('bbox_train', 'bbox_test'):
    os.makedirs(os.path.join(root, sub), exist_ok=True)
  with open(os.path.join(info, 'train_name.txt'), 'w') as f:
    f.write('\n'.join(train_names) + '\n')
  with open(os.path.join(info, 'test_name.txt'), 'w') as f:
    f.write('\n'.join(test_names) + '\n')
  scipy.io.savemat(os.path.join(info, 'tracks_train_info.mat'),
                   {'track_train_info': np.array(train_info, np.int32)})
  scipy.io.savemat(os.path.join(info, 'tracks_test_info.mat'),
                   {'track_test_info': np.array(test_info, np.int32)})
  scipy.io.savemat(os.path.join(info, 'query_IDX.mat'),
                   {query_key: np.array(query, np.uint16).reshape(1, -1)})


def _good_mars():
  train_names = ['0001C1T0001F001.jpg', '0001C1T0001F002.jpg', '0003C2T0001F001.jpg']
  train_info = [[1, 2, 1, 1], [3, 3, 3, 2]]
  test_names = ['00-1C1T0001F001.jpg', '0000C2T0001F001.jpg', '0002C1T0001F001.jpg',
                '0002C3T0001F001.jpg', '0002C3T0001F002.jpg']
  test_info = [[1, 1, -1, 1], [2, 2, 0, 2], [3, 3, 2, 1], [4, 5, 2, 3]]
  return train_names, train_info, test_names, test_info, [3]


def test_mars_hand_built(tmp_path):
  root = str(tmp_path)
  _write_mars(root, *_good_mars())
  ds = datasets.load('mars', root, protocol='torchreid')
  np.testing.assert_array_equal(ds.train.pids, [0, 1])
  np.testing.assert_array_equal(ds.train.camids, [0, 1])
  np.testing.assert_array_equal(ds.query.pids, [2])
  np.testing.assert_array_equal(ds.gallery.pids, [0, 2])        # junk dropped, query removed
  assert len(datasets.load('mars', root, protocol='official').gallery) == 4
  np.testing.assert_array_equal(datasets.load('mars', root, protocol='cas').gallery.pids,
                                [2, 0, 2])


@pytest.mark.parametrize('case, match', [
    ('missing_file', 'query_IDX.mat'),
    ('wrong_key', "query_IDX.mat.*'query_IDX'"),
    ('pid_disagrees', r"test_name.txt: line 5 '0004C3T0001F002.jpg'.*row 4"),
    ('cam_disagrees', r"train_name.txt: line 2 '0001C2T0001F002.jpg'.*row 1.*camera"),
    ('query_out_of_range', r'query_IDX.mat.*outside'),
    ('end_past_names', r'tracks_test_info.mat.*row 4'),
    ('wrong_shape', r'tracks_train_info.mat.*shape'),
    ('missing_bbox', 'bbox_test'),
])
def test_mars_malformed(tmp_path, case, match):
  root = str(tmp_path)
  train_names, train_info, test_names, test_info, query = _good_mars()
  key = 'query_IDX'
  if case == 'wrong_key':
    key = 'queryIDX'
  elif case == 'pid_disagrees':
    test_names[4] = '0004C3T0001F002.jpg'
  elif case == 'cam_disagrees':
    train_names[1] = '0001C2T0001F002.jpg'
  elif case == 'query_out_of_range':
    query = [5]
  elif case == 'end_past_names':
    test_info[3] = [4, 6, 2, 3]
  elif case == 'wrong_shape':
    train_info = [row[:3] for row in train_info]
  _write_mars(root, train_names, train_info, test_names, test_info, query, query_key=key)
  if case == 'missing_file':
    os.remove(os.path.join(root, 'info', 'query_IDX.mat'))
  if case == 'missing_bbox':
    os.rmdir(os.path.join(root, 'bbox_test'))
  with pytest.raises(DatasetError, match=match):
    datasets.load('mars', root)


def test_bad_arguments(tmp_path):
  with pytest.raises(DatasetError, match='unknown dataset'):
    datasets.load('market', str(tmp_path))
  with pytest.raises(DatasetError, match='does not exist'):
    datasets.load('mars', str(tmp_path / 'nope'))
  _write_mars(str(tmp_path), *_good_mars())
  with pytest.raises(DatasetError, match='protocol'):
    datasets.load('mars', str(tmp_path), protocol='market')
  with pytest.raises(DatasetError, match='split_id'):
    datasets.load('mars', str(tmp_path), split_id=3)


# ------------------------------------------------------------------------------------------------
# DukeMTMC-VideoReID


def _duke(root):
  # (split, pid, tracklet, camera, frame numbers, new name format?)
  spec = [('train', 5, 1, 2, [3, 1, 2], True), ('train', 5, 2, 3, [1, 2], False),
          ('train', 9, 1, 1, [1], True), ('query', 11, 1, 1, [2, 1], True),
          ('gallery', 11, 1, 1, [1, 2], True), ('gallery', 11, 2, 4, [1], True),
          ('gallery', 12, 1, 2, [1, 2, 3], False)]
  for split, pid, t, cam, frames, new in spec:
    for f in frames:
      name = (f'{pid:04d}_C{cam}_F{f:04d}_X{100 - f:05d}.jpg' if new
              else f'{pid:04d}C{cam}F{f:04d}X{100 - f:05d}.jpg')
      touch(os.path.join(root, 'DukeMTMC-VideoReID', split, f'{pid:04d}', f'{t:04d}', name))


def test_duke(tmp_path):
  _duke(str(tmp_path))
  ds = datasets.load('duke', str(tmp_path))  # finds the nested DukeMTMC-VideoReID/
  np.testing.assert_array_equal(ds.train.pids, [0, 0, 1])
  np.testing.assert_array_equal(ds.train.camids, [1, 2, 0])
  np.testing.assert_array_equal(ds.train.lengths, [3, 2, 1])
  assert [os.path.basename(p)[:13] for p in ds.train.frames(0)] == [
      '0005_C2_F0001', '0005_C2_F0002', '0005_C2_F0003']
  np.testing.assert_array_equal(ds.query.pids, [11])
  np.testing.assert_array_equal(ds.gallery.pids, [11, 11, 12])
  np.testing.assert_array_equal(ds.gallery.camids, [0, 3, 1])
  cas = datasets.load('duke', str(tmp_path), protocol='cas')
  np.testing.assert_array_equal(cas.gallery.pids, [11, 11, 11, 12])
  official = datasets.load('duke', str(tmp_path), protocol='official')
  np.testing.assert_array_equal(official.gallery.lengths, ds.gallery.lengths)


def test_duke_root_with_glob_characters(tmp_path):
  root = str(tmp_path / 'data[1]')
  _duke(root)
  ds = datasets.load('duke', root, verify=True)
  np.testing.assert_array_equal(ds.train.lengths, [3, 2, 1])
  assert ds.train.frames(0)[0].startswith(root)


def test_duke_mixed_camera(tmp_path):
  _duke(str(tmp_path))
  touch(os.path.join(tmp_path, 'DukeMTMC-VideoReID', 'gallery', '0012', '0001',
                     '0012_C5_F0009_X00001.jpg'))
  with pytest.raises(DatasetError, match=r'0012/0001.*cameras \[2, 5\]'):
    datasets.load('duke', str(tmp_path))


def test_duke_pid_directory_mismatch(tmp_path):
  _duke(str(tmp_path))
  touch(os.path.join(tmp_path, 'DukeMTMC-VideoReID', 'train', '0009', '0001',
                     '0008_C1_F0002_X00001.jpg'))
  with pytest.raises(DatasetError, match='0008_C1_F0002'):
    datasets.load('duke', str(tmp_path))


# ------------------------------------------------------------------------------------------------
# iLIDS-VID


def _ilids(root, ls_set, persons=(1, 2, 3, 5), key='ls_set'):
  for cam in (1, 2):
    for p in persons:
      for f in (10, 9, 100):  # numeric frame order differs from lexicographic
        touch(os.path.join(root, 'i-LIDS-VID', 'sequences', f'cam{cam}', f'person{p:03d}',
                           f'cam{cam}_person{p:03d}_{f}.png'))
  path = os.path.join(root, 'train-test people splits', 'train_test_splits_ilidsvid.mat')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  scipy.io.savemat(path, {key: np.array(ls_set, np.float64)})


def test_ilids_split_convention(tmp_path):
  _ilids(str(tmp_path), [[4, 1, 2, 3], [2, 3, 1, 4]])
  ds = datasets.load('ilids', str(tmp_path), split_id=0)
  # First half of row 0 = indices 4, 1 -> person005, person001 are TEST.
  np.testing.assert_array_equal(ds.query.pids, [1, 5])
  np.testing.assert_array_equal(ds.query.camids, [0, 0])
  np.testing.assert_array_equal(ds.gallery.pids, [1, 5])
  np.testing.assert_array_equal(ds.gallery.camids, [1, 1])
  np.testing.assert_array_equal(ds.train.pids, [0, 0, 1, 1])
  np.testing.assert_array_equal(ds.meta['train_pids'], [2, 3])
  assert [os.path.basename(p) for p in ds.query.frames(0)] == [
      'cam1_person001_9.png', 'cam1_person001_10.png', 'cam1_person001_100.png']
  ds1 = datasets.load('ilids', str(tmp_path), split_id=1)
  np.testing.assert_array_equal(ds1.query.pids, [2, 3])
  with pytest.raises(DatasetError, match='split_id'):
    datasets.load('ilids', str(tmp_path), split_id=2)


@pytest.mark.parametrize('ls_set, key, match', [
    ([[1, 2, 3, 9]], 'ls_set', 'outside'),
    ([[1, 2, 3, 4]], 'splits', "'ls_set'"),
    ([[1, 2, 3]], 'ls_set', 'shape'),
])
def test_ilids_malformed(tmp_path, ls_set, key, match):
  _ilids(str(tmp_path), ls_set, key=key)
  with pytest.raises(DatasetError, match=f'train_test_splits_ilidsvid.mat.*{match}'):
    datasets.load('ilids', str(tmp_path))


# ------------------------------------------------------------------------------------------------
# PRID-2011


def _prid(root, n=6):
  for cam in ('cam_a', 'cam_b'):
    for p in list(range(1, n + 1)) + ([201, 202] if cam == 'cam_a' else [201]):
      for f in (2, 1):
        touch(os.path.join(root, 'prid_2011', 'multi_shot', cam, f'person_{p:04d}',
                           f'{f:04d}.png'))


def test_prid_splits_stable(tmp_path):
  root = str(tmp_path)
  _prid(root)
  ds = datasets.load('prid', root, split_id=3)
  split_file = os.path.join(root, 'splits_prid2011.json')
  assert ds.meta['splits_file'] == split_file
  splits = json.load(open(split_file))
  assert len(splits) == 10
  for s in splits:
    assert sorted(s['train'] + s['test']) == [1, 2, 3, 4, 5, 6]  # 201, 202 never used
    assert len(s['test']) == 3
  assert len({tuple(s['test']) for s in splits}) > 1
  np.testing.assert_array_equal(ds.query.pids, splits[3]['test'])
  np.testing.assert_array_equal(ds.query.camids, 0)
  np.testing.assert_array_equal(ds.gallery.camids, 1)
  np.testing.assert_array_equal(ds.meta['train_pids'], splits[3]['train'])
  # Same splits from the documented seed, and the file is read back (not regenerated).
  assert prid.make_splits([1, 2, 3, 4, 5, 6]) == splits
  splits[3] = {'train': [1, 2], 'test': [5, 6]}
  json.dump(splits, open(split_file, 'w'))
  again = datasets.load('prid', root, split_id=3)
  np.testing.assert_array_equal(again.query.pids, [5, 6])
  assert [os.path.basename(p) for p in again.query.frames(0)] == ['0001.png', '0002.png']
  splits[3] = {'train': [1, 2], 'test': [7]}
  json.dump(splits, open(split_file, 'w'))
  with pytest.raises(DatasetError, match='splits_prid2011.json'):
    datasets.load('prid', root, split_id=3)


def test_prid_read_only_root_uses_cache(tmp_path, monkeypatch):
  root = str(tmp_path / 'data')
  _prid(root)
  monkeypatch.setenv('GRL_JAX_CACHE', str(tmp_path / 'cache'))
  real_write = common.write_text

  def refuse_root(path, text):
    if path.startswith(root):
      raise PermissionError(path)
    real_write(path, text)

  monkeypatch.setattr(common, 'write_text', refuse_root)
  ds = datasets.load('prid', root)
  assert ds.meta['splits_file'].startswith(str(tmp_path / 'cache'))
  assert not os.path.exists(os.path.join(root, 'splits_prid2011.json'))
  again = datasets.load('prid', root)
  assert again.meta['splits_file'] == ds.meta['splits_file']
  np.testing.assert_array_equal(again.query.pids, ds.query.pids)


# ------------------------------------------------------------------------------------------------
# LS-VID


def _lsvid(root, query):
  lines = {'train': [], 'test': []}
  # (split, pid, tracklet, camera, frames)
  for split, pid, t, cam, n in [('train', 7, 1, 2, 3), ('train', 7, 2, 5, 2),
                                ('train', 9, 1, 1, 2), ('test', 20, 1, 3, 2),
                                ('test', 20, 2, 12, 4), ('test', 21, 1, 3, 1)]:
    prefix = f'{pid:04d}_{t:04d}_{cam:02d}'
    for f in range(n, 0, -1):
      touch(os.path.join(root, f'tracklet_{split}', f'{pid:04d}', f'{prefix}_{f:05d}.jpg'))
    lines[split].append(f'tracklet_{split}/{pid:04d}/{prefix} {pid}')
  os.makedirs(os.path.join(root, 'list_sequence'))
  for split in lines:
    with open(os.path.join(root, 'list_sequence', f'list_seq_{split}.txt'), 'w') as f:
      f.write('\n'.join(lines[split]) + '\n')
  path = os.path.join(root, 'test', 'data', 'info_test.mat')
  os.makedirs(os.path.dirname(path))
  # MATLAB v7.3 = HDF5 with a 512-byte user block; MATLAB doubles, stored 1×K.
  with h5py.File(path, 'w', userblock_size=512) as f:
    f['query'] = np.array(query, np.float64).reshape(1, -1)


def test_lsvid(tmp_path):
  _lsvid(str(tmp_path), [2])
  ds = datasets.load('lsvid', str(tmp_path))
  np.testing.assert_array_equal(ds.train.pids, [0, 0, 1])
  np.testing.assert_array_equal(ds.train.camids, [1, 4, 0])
  np.testing.assert_array_equal(ds.train.lengths, [3, 2, 2])
  assert os.path.basename(ds.train.frames(0)[0]) == '0007_0001_02_00001.jpg'
  np.testing.assert_array_equal(ds.query.pids, [20])
  np.testing.assert_array_equal(ds.query.camids, [11])
  np.testing.assert_array_equal(ds.gallery.lengths, [2, 1])
  np.testing.assert_array_equal(datasets.load('lsvid', str(tmp_path), 'cas').gallery.lengths,
                                [4, 2, 1])
  np.testing.assert_array_equal(
      datasets.load('lsvid', str(tmp_path), 'official').gallery.lengths, [2, 4, 1])


def test_lsvid_query_out_of_range(tmp_path):
  _lsvid(str(tmp_path), [2, 4])
  with pytest.raises(DatasetError, match=r'info_test.mat.*outside'):
    datasets.load('lsvid', str(tmp_path))


# ------------------------------------------------------------------------------------------------
# custom CSV


def _csv(root, rows, header='path,pid,camid,tracklet,split,frame'):
  with open(os.path.join(root, 'dataset.csv'), 'w') as f:
    f.write(header + '\n' + '\n'.join(rows) + '\n')


def test_custom(tmp_path):
  rows = ['a/2.jpg,7,0,t1,train,2', 'a/1.jpg,7,0,t1,train,1', 'b/1.jpg,30,1,t2,train,1',
          'q/1.jpg,4,0,q,query,1', 'g/1.jpg,4,1,g1,gallery,5', '/abs/x.jpg,-1,2,g2,gallery,1',
          'a/3.jpg,7,0,t1,train,3']
  _csv(str(tmp_path), rows)
  ds = datasets.load('custom', str(tmp_path))
  assert list(ds.train.frames(0)) == [os.path.join(tmp_path, 'a', f'{i}.jpg') for i in (1, 2, 3)]
  np.testing.assert_array_equal(ds.train.pids, [0, 1])
  np.testing.assert_array_equal(ds.meta['train_pids'], [7, 30])
  np.testing.assert_array_equal(ds.gallery.pids, [4, -1])
  assert ds.gallery.frames(1)[0] == '/abs/x.jpg'
  cas = datasets.load('custom', str(tmp_path / 'dataset.csv'), protocol='cas')
  np.testing.assert_array_equal(cas.gallery.pids, [4, 4, -1])


@pytest.mark.parametrize('rows, header, match', [
    (['a.jpg,1,0,t,train,1', 'b.jpg,x,0,t,train,2'], None, 'line 3.*pid'),
    (['a.jpg,1,0,t,train,1', 'b.jpg,1,1,t,train,2'], None, 'line 3.*line 2'),
    (['a.jpg,1,0,t,test,1'], None, 'line 2.*split'),
    (['a.jpg,1,0,t,query,1', 'b.jpg,1,0,t,query,1'], None, 'line 3.*repeats frame 1'),
    (['a.jpg,1,0,t,query'], 'path,pid,camid,tracklet,split,frame', 'line 2.*5 fields'),
    (['a.jpg,1,0,t,query'], 'path,pid,cam,tracklet,split', 'line 1.*header'),
    (['a.jpg,1,0,t,train'], 'path,pid,camid,tracklet,split', "no 'query'"),
])
def test_custom_malformed(tmp_path, rows, header, match):
  if header is None:
    _csv(str(tmp_path), rows + ['q.jpg,1,0,q,query,1', 'g.jpg,1,1,g,gallery,1'])
  else:
    _csv(str(tmp_path), rows, header)
  with pytest.raises(DatasetError, match=f'dataset.csv.*{match}'):
    datasets.load('custom', str(tmp_path))


def test_custom_empty_train(tmp_path):
  """Only query/gallery rows: an evaluation-only dataset, in every protocol and with verify."""
  for f in ('q/1.jpg', 'q/2.jpg', 'g/1.jpg', 'g/2.jpg'):
    touch(os.path.join(tmp_path, f))
  _csv(str(tmp_path), ['q/2.jpg,4,0,q,query', 'q/1.jpg,4,0,q,query', 'g/1.jpg,4,1,g1,gallery',
                       'g/2.jpg,-1,2,g2,gallery'], header='path,pid,camid,tracklet,split')
  for protocol in schema.PROTOCOLS:
    ds = datasets.load('custom', str(tmp_path), protocol=protocol, verify=True)
    assert len(ds.train) == 0 and ds.train.num_frames == 0 and not datasets.has_train(ds)
    assert len(ds.meta['train_pids']) == 0
    np.testing.assert_array_equal(ds.query.pids, [4])
    assert [os.path.basename(p) for p in ds.query.frames(0)] == ['2.jpg', '1.jpg']
  np.testing.assert_array_equal(datasets.load('custom', str(tmp_path)).gallery.pids, [4, -1])
  assert datasets.has_train(datasets.load('custom', str(tmp_path / 'dataset.csv'))) is False


@pytest.mark.parametrize('empty_info', [np.zeros((0, 4), np.int32), np.zeros((0, 0))])
def test_mars_empty_train(tmp_path, empty_info):
  root = str(tmp_path)
  _, _, test_names, test_info, query = _good_mars()
  _write_mars(root, [], [], test_names, test_info, query)
  scipy.io.savemat(os.path.join(root, 'info', 'tracks_train_info.mat'),
                   {'track_train_info': empty_info})
  ds = datasets.load('mars', root, protocol='cas')
  assert not datasets.has_train(ds) and ds.train.pids.shape == (0,)
  np.testing.assert_array_equal(ds.gallery.pids, [2, 0, 2])


def test_duke_lsvid_prid_empty_train(tmp_path):
  duke = str(tmp_path / 'duke')
  _duke(duke)
  train_dir = os.path.join(duke, 'DukeMTMC-VideoReID', 'train')
  shutil.rmtree(train_dir)
  os.makedirs(train_dir)
  ds = datasets.load('duke', duke)
  assert not datasets.has_train(ds) and len(ds.query) == 1 and len(ds.gallery) == 3
  shutil.rmtree(os.path.join(duke, 'DukeMTMC-VideoReID', 'query'))
  os.makedirs(os.path.join(duke, 'DukeMTMC-VideoReID', 'query'))
  with pytest.raises(DatasetError, match='no frames found under .*query'):
    datasets.load('duke', duke)  # query and gallery stay required

  lsvid = str(tmp_path / 'lsvid')
  _lsvid(lsvid, [2])
  open(os.path.join(lsvid, 'list_sequence', 'list_seq_train.txt'), 'w').close()
  shutil.rmtree(os.path.join(lsvid, 'tracklet_train'))
  ds = datasets.load('lsvid', lsvid)
  assert not datasets.has_train(ds) and len(ds.query) == 1 and len(ds.gallery) == 2
  open(os.path.join(lsvid, 'list_sequence', 'list_seq_test.txt'), 'w').close()
  with pytest.raises(DatasetError, match='list_seq_test.txt.*lists no tracklets'):
    datasets.load('lsvid', lsvid)

  root = str(tmp_path / 'prid')
  _prid(root)
  with open(os.path.join(root, 'splits_prid2011.json'), 'w') as f:
    json.dump([{'train': [], 'test': [1, 2, 3]}], f)
  ds = datasets.load('prid', root)
  assert not datasets.has_train(ds)
  np.testing.assert_array_equal(ds.query.pids, [1, 2, 3])
  with open(os.path.join(root, 'splits_prid2011.json'), 'w') as f:
    json.dump([{'train': [1, 2], 'test': []}], f)
  with pytest.raises(DatasetError, match="'test' must be a non-empty list"):
    datasets.load('prid', root)


def test_root_help_for_every_dataset():
  for name in schema.DATASETS:
    text = datasets.root_help(name)
    assert text == importlib.import_module(f'data_pipeline.datasets.{name}').ROOT_HELP
    assert text and '\n' not in text
    assert ('dataset.csv' if name == 'custom' else '<root>/') in text
  assert 'info/{train_name.txt' in datasets.root_help('mars')
  with pytest.raises(DatasetError, match="unknown dataset 'market'"):
    datasets.root_help('market')


def test_enums_and_errors_come_from_grl_jax():
  assert datasets.NAMES is schema.DATASETS and datasets.PROTOCOLS is schema.PROTOCOLS
  assert datasets.DatasetError is errors.DatasetError is common.DatasetError
  assert issubclass(DatasetError, errors.GrlJaxError) and issubclass(DatasetError, ValueError)
