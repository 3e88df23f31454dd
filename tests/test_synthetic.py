"""The synthetic MARS generator: format, determinism, MARS-like structure, fairness, ensure()."""
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.io
from PIL import Image

from data_pipeline import synthetic
from grl_jax.errors import ConfigError, WorkdirError

TINY = dict(num_train_ids=3, num_test_ids=10, height=64, width=32, median_len=6, max_len=14,
            min_tracklets=3, max_tracklets=5)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME_RE = re.compile(r'^(\d{4}|00-1)C(\d)T(\d{4})F(\d{3})\.jpg$')


def tree_bytes(root):
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      p = os.path.join(d, f)
      out[os.path.relpath(p, root)] = open(p, 'rb').read()
  return out


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('syn'))
  summary = synthetic.generate(root, **TINY)
  return root, summary


def _load_info(root):
  info = os.path.join(root, 'info')
  mats = {k: scipy.io.loadmat(os.path.join(info, f))
          for k, f in (('train', 'tracks_train_info.mat'), ('test', 'tracks_test_info.mat'),
                       ('query', 'query_IDX.mat'))}
  names = {s: open(os.path.join(info, f'{s}_name.txt')).read().split() for s in ('train', 'test')}
  return mats, names


def test_format_matches_mars(tree):
  root, summary = tree
  mats, names = _load_info(root)
  train = mats['train']['track_train_info']
  test = mats['test']['track_test_info']
  query = mats['query']['query_IDX']
  # Keys, dtypes and shapes of the real MARS-evaluation files.
  assert train.dtype == np.int32 and train.ndim == 2 and train.shape[1] == 4
  assert test.dtype == np.int32 and test.shape[1] == 4
  assert query.dtype == np.uint16 and query.shape == (1, summary['queries'])
  for split, info in (('train', train), ('test', test)):
    n = names[split]
    assert info[0, 0] == 1 and info[-1, 1] == len(n)
    np.testing.assert_array_equal(info[1:, 0], info[:-1, 1] + 1)  # rows tile the name list
    assert (info[:, 1] - info[:, 0] + 1).max() <= TINY['max_len']
    assert n == sorted(n)
    for start, end, pid, cam in info:
      for name in n[start - 1:end]:
        m = NAME_RE.match(name)
        assert m, name
        assert m.group(1) == ('00-1' if pid == -1 else f'{pid:04d}') and int(m.group(2)) == cam
        assert os.path.exists(os.path.join(root, f'bbox_{split}', name[:4], name))
  img = Image.open(os.path.join(root, 'bbox_train', names['train'][0][:4], names['train'][0]))
  assert img.size == (TINY['width'], TINY['height']) and img.mode == 'RGB'
  assert set(np.unique(train[:, 2])).isdisjoint(test[:, 2])
  assert len(np.unique(train[:, 2])) == TINY['num_train_ids']


def test_mars_like_structure(tree):
  root, _ = tree
  mats, _ = _load_info(root)
  test = mats['test']['track_test_info'].astype(int)
  q = mats['query']['query_IDX'].ravel().astype(int) - 1
  pid, cam = test[:, 2], test[:, 3]
  assert (pid == -1).any() and (pid == 0).any()
  ids = np.unique(pid[pid > 0])
  assert len(ids) == TINY['num_test_ids']
  for i in ids:
    assert len(np.unique(cam[pid == i])) >= 2
  assert np.all(pid[q] > 0)
  # At most one query per (id, camera), each with a non-query match in another camera.
  pairs = list(zip(pid[q], cam[q]))
  assert len(pairs) == len(set(pairs))
  gallery = np.setdiff1d(np.arange(len(test)), q)
  for r in q:
    assert np.any((pid[gallery] == pid[r]) & (cam[gallery] != cam[r]))
  assert set(pid[q]) == set(ids)


def test_deterministic(tree, tmp_path):
  root, _ = tree
  again = str(tmp_path / 'again')
  synthetic.generate(again, **TINY)
  a, b = tree_bytes(root), tree_bytes(again)
  assert a.keys() == b.keys()
  assert all(a[k] == b[k] for k in a)
  other = str(tmp_path / 'other')
  synthetic.generate(other, **dict(TINY, seed=1))
  c = tree_bytes(other)
  common = [k for k in a if k.endswith('.jpg') and k in c]
  assert a['info/test_name.txt'] != c['info/test_name.txt'] or all(
      a[k] != c[k] for k in common)
  assert sum(a[k] == c[k] for k in common) < 0.05 * max(1, len(common))


def test_rendering_processes_write_the_same_bytes(tree, tmp_path):
  root, _ = tree
  shared = str(tmp_path / 'three')
  synthetic.generate(shared, workers=3, **TINY)
  assert tree_bytes(shared) == tree_bytes(root)


_KILLABLE = """
import sys
from data_pipeline import synthetic
synthetic.generate(sys.argv[1], workers=2, num_train_ids=40, num_test_ids=2, height=64,
                   width=32)
"""


def _frames(root):
  return sum(len(files) for _, _, files in os.walk(os.path.join(root, 'bbox_train')))


def test_rendering_helpers_stop_when_the_generator_is_killed(tmp_path):
  """A SIGKILLed generation leaves no helper writing into the tree that a restart redoes (the
  restart's regeneration of a half-written tree: test_ensure_reuses_and_regenerates)."""
  root = str(tmp_path / 'killed')
  proc = subprocess.Popen([sys.executable, '-c', _KILLABLE, root], cwd=REPO)
  try:
    deadline = time.time() + 120
    while _frames(root) < 300:   # both processes are rendering by now
      assert proc.poll() is None and time.time() < deadline, 'generation ended too early'
      time.sleep(0.05)
    proc.kill()
    proc.wait()
    time.sleep(1.0)   # a helper finishes at most the tracklet it is on
    written = _frames(root)
    time.sleep(1.5)
    assert _frames(root) == written, 'a rendering helper kept writing after the kill'
  finally:
    proc.kill()
  assert os.path.exists(os.path.join(root, synthetic.PROGRESS_MARKER))


def test_not_separable_by_mean_colour(tree):
  """Nearest neighbour on per-tracklet mean RGB must not re-identify people across cameras."""
  root, _ = tree
  mats, names = _load_info(root)
  test = mats['test']['track_test_info'].astype(int)
  q = mats['query']['query_IDX'].ravel().astype(int) - 1
  n = names['test']
  means = np.array([np.mean([np.asarray(Image.open(
      os.path.join(root, 'bbox_test', f[:4], f)), np.float32).mean((0, 1))
                             for f in n[s - 1:e:2]], 0) for s, e, _, _ in test])
  pid, cam = test[:, 2], test[:, 3]
  gallery = np.array([r for r in range(len(test)) if r not in set(q) and pid[r] != -1])
  hits = 0
  for r in q:
    g = gallery[~((pid[gallery] == pid[r]) & (cam[gallery] == cam[r]))]
    hits += pid[g[np.argmin(((means[g] - means[r]) ** 2).sum(1))]] == pid[r]
  # Chance is ~1/10 here; a colour-lookup dataset would give ~1.
  assert hits / len(q) < 0.35


def test_ensure_reuses_and_regenerates(tmp_path):
  root = str(tmp_path / 'e')
  small = dict(TINY, num_test_ids=2, num_train_ids=1, max_len=6, median_len=4)
  assert synthetic.ensure(root, **small)['generated']
  assert not synthetic.ensure(root, **small)['generated']
  marker = json.load(open(os.path.join(root, synthetic.COMPLETE_MARKER)))
  assert marker['params']['num_test_ids'] == 2
  # Other parameters -> regenerated.
  assert synthetic.ensure(root, **dict(small, seed=3))['generated']
  # Half-written tree (progress marker present, completion marker absent) -> regenerated.
  os.remove(os.path.join(root, synthetic.COMPLETE_MARKER))
  open(os.path.join(root, synthetic.PROGRESS_MARKER), 'w').close()
  assert synthetic.ensure(root, **dict(small, seed=3))['generated']
  assert not os.path.exists(os.path.join(root, synthetic.PROGRESS_MARKER))
  assert not synthetic.ensure(root, **dict(small, seed=3))['generated']
  # A bad process count is refused even when the tree exists and nothing would be rendered.
  with pytest.raises(ConfigError, match='workers=0'):
    synthetic.ensure(root, workers=0, **dict(small, seed=3))


def test_refuses_foreign_tree(tmp_path):
  root = tmp_path / 'real'
  (root / 'bbox_train').mkdir(parents=True)
  (root / 'bbox_train' / 'keep.jpg').write_bytes(b'x')
  with pytest.raises(FileExistsError, match='refusing'):
    synthetic.ensure(str(root), **TINY)
  with pytest.raises(WorkdirError, match='refusing'):
    synthetic.generate(str(root), **TINY)
  assert (root / 'bbox_train' / 'keep.jpg').exists()
  assert synthetic.main(['--root', str(root), '--ids', '1', '--test-ids', '2']) == 2


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_train_ids=-1), r'synthetic\.num_train_ids=-1: expected an integer 1\.\.4000'),
    (dict(num_test_ids=0), r'num_test_ids=0'),
    (dict(num_cameras=12), r'num_cameras=12: expected an integer 2\.\.9'),
    (dict(height=8), r'height=8'),
    (dict(min_tracklets=6, max_tracklets=5), r'min_tracklets=6: expected <= max_tracklets=5'),
    (dict(median_len=200, max_len=150), r'median_len=200.*min_len <= median_len <= max_len'),
    (dict(occlusion_prob=1.5), r'occlusion_prob=1\.5: expected a probability'),
    (dict(num_train_ids=2.5), r'num_train_ids=2\.5: expected an integer'),
    (dict(colour=3), r'synthetic\.colour: unknown parameter'),
    (dict(workers=0), r'synthetic workers=0: expected a positive number of processes'),
])
def test_bad_parameters_are_config_errors(tmp_path, kwargs, match):
  for fn in (synthetic.generate, synthetic.ensure):
    with pytest.raises(ConfigError, match=match) as info:
      fn(str(tmp_path / 'r'), **dict(TINY, **kwargs))
    assert '\n' not in str(info.value)
  assert not (tmp_path / 'r').exists()  # validated before anything is written


def test_unwritable_root_is_a_workdir_error(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_bytes(b'x')
  with pytest.raises(WorkdirError, match='not a directory'):
    synthetic.generate(str(blocker), **TINY)
  with pytest.raises(WorkdirError, match=r'cannot write.*Not a directory'):
    synthetic.ensure(str(blocker / 'sub'), **TINY)
  with pytest.raises(ConfigError, match='root is empty'):
    synthetic.generate('', **TINY)


@pytest.mark.parametrize('args, match', [
    (['--ids=-1'], 'synthetic.num_train_ids=-1'),
    (['--ids=1', '--test-ids=2', '--cameras=1'], 'synthetic.num_cameras=1'),
])
def test_cli_error_is_one_line(tmp_path, args, match):
  proc = subprocess.run([sys.executable, '-m', 'data_pipeline.synthetic',
                         f'--root={tmp_path / "r"}', *args], capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 2 and proc.stdout == ''
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('synthetic: error: ') and match in lines[0]
