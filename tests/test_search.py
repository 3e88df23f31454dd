"""`--mode=extract --input` then `--mode=search` (grl_jax/search.py): the printed top-k is the
model's descriptor-distance ranking, the picture is drawn, gallery frames that are gone and
features of another dimension are one-line reports."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from grl_jax import offline
from grl_jax import search
from grl_jax import visualize
from grl_jax.errors import DatasetError
from tests import helpers as c
from tests.test_folders import _write_dataset, as_folders, tiny_grl_checkpoint


def _main(*args):
  proc = subprocess.run([sys.executable, '-m', 'grl_jax.main', *args], cwd=c.REPO,
                        env=c.subprocess_env(), capture_output=True, text=True, timeout=600)
  return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope='module')
def world(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('search')
  csv = _write_dataset(tmp / 'data')
  config, work = tiny_grl_checkpoint(tmp, csv)
  as_folders(csv, tmp / 'gallery', 'gallery')
  as_folders(csv, tmp / 'queries', 'query')
  # The gallery through the command line (no --config: the checkpoint's), the queries in-process.
  npz = str(tmp / 'g.npz')
  rc, out = _main('--mode=extract', f'--workdir={work}', f'--input={tmp / "gallery"}',
                  f'--output={npz}')
  assert rc == 0 and '[extract] 3 tracklets' in out, out
  queries = np.load(offline.extract_folders(config, work, input=str(tmp / 'queries'),
                                            output=str(tmp / 'q.npz')))
  return dict(tmp=tmp, config=config, work=work, gallery=str(tmp / 'gallery'),
              queries=str(tmp / 'queries'), npz=npz,
              qf=dict(zip(queries['names'], queries['features'])))


def _ranking(qf, gf):
  """GRL's 'dot' distance (-<q, g>), stable order: the reference ranking in numpy."""
  d = -(qf.astype(np.float64) @ gf.astype(np.float64).T)
  return np.argsort(d, axis=1, kind='stable'), d


def test_cli_search(world):
  query = world['queries'] + '/person 1/caméra 0'
  png = str(world['tmp'] / 'p.png')
  rc, out = _main('--mode=search', f'--workdir={world["work"]}', f'--query={query}',
                  f'--gallery={world["npz"]}', f'--output={png}', '--top_k=2')
  assert rc == 0, out
  g = np.load(world['npz'])
  order, d = _ranking(world['qf']['person 1/caméra 0'][None], g['features'])
  listed = [line.split() for line in out.splitlines() if line.startswith('  ')]
  assert [line[2:] for line in listed] == [str(g['names'][j]).split() for j in order[0, :2]]
  np.testing.assert_allclose([float(line[1]) for line in listed], d[0, order[0, :2]],
                             rtol=1e-4)
  assert "query 'caméra 0' (11 frames): top 2 of 3" in out, out
  assert np.asarray(Image.open(png)).shape[:2] == visualize.picture_size(1, 2)


def test_search_folder_of_queries_and_gallery_gone(world, capsys):
  npz = world['npz']
  out = search.search(world['config'], world['work'], query=world['queries'], gallery=npz,
                      top_k=10, output=str(world['tmp'] / 's.png'))
  assert out['queries'] == ['person 0/caméra 0', 'person 1/caméra 0', 'person 2/caméra 0']
  g = np.load(npz)
  order, d = _ranking(np.stack([world['qf'][n] for n in out['queries']]), g['features'])
  np.testing.assert_array_equal(out['indices'], order)   # top_k capped at the gallery size
  np.testing.assert_allclose(out['distances'], np.take_along_axis(d, order, 1), rtol=1e-4)
  assert out['picture'] and np.asarray(Image.open(out['picture'])).shape[:2] == (
      visualize.picture_size(3, 3))
  # The gallery frames moved away: the ranking is still printed, one line says why no picture.
  moved = world['tmp'] / 'moved'
  shutil.move(world['gallery'], moved)
  try:
    capsys.readouterr()
    again = search.search(world['config'], world['work'], query=world['queries'], gallery=npz,
                          output=str(world['tmp'] / 's2.png'))
  finally:
    shutil.move(moved, world['gallery'])
  text = capsys.readouterr().out
  np.testing.assert_array_equal(again['indices'], order)
  assert again['picture'] is None and text.count('[search] no picture') == 1, text
  assert 'gone or moved' in text and world['gallery'] in text, text


def test_gallery_of_another_dimension_or_kind_is_one_line(world):
  one = world['queries'] + '/person 0/caméra 0'
  dim = len(world['qf']['person 0/caméra 0'])
  bad = world['tmp'] / 'other.npz'
  np.savez(bad, features=np.zeros((3, 7), np.float32), names=np.array(['a', 'b', 'c']),
           root=world['gallery'], step=np.int64(3))
  with pytest.raises(DatasetError) as e:
    search.search(world['config'], world['work'], query=one, gallery=str(bad))
  message = str(e.value)
  assert '\n' not in message and 'other.npz' in message, message
  assert '7-d' in message and f'{dim}-d' in message, message
  split = world['tmp'] / 'split.npz'
  np.savez(split, features=np.zeros((3, dim), np.float32), pids=np.zeros(3))
  with pytest.raises(DatasetError, match=r'split\.npz.*--mode=extract --input'):
    search.search(world['config'], world['work'], query=one, gallery=str(split))
  with pytest.raises(DatasetError, match=r'nope\.npz.*cannot be read'):
    search.search(world['config'], world['work'], query=one,
                  gallery=str(world['tmp'] / 'nope.npz'))
