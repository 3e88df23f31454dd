"""`python -m data_pipeline.stats` on a tiny synthetic MARS tree."""
import json
import os
import subprocess
import sys

import numpy as np
import scipy.io

from data_pipeline import stats, synthetic
from data_pipeline.index import TrackletIndex

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=REPO)


def run_stats(*args):
  return subprocess.run([sys.executable, '-m', 'data_pipeline.stats', *args], cwd=REPO,
                        env=ENV, capture_output=True, text=True, timeout=300)


def test_split_stats_by_hand():
  ix = TrackletIndex.from_lists([['a'] * 3, ['b'] * 10, ['c']], [5, 5, 2], [0, 1, 0])
  assert stats.split_stats(ix) == {'ids': 2, 'tracklets': 3, 'frames': 14, 'min_len': 1,
                                   'median_len': 3.0, 'max_len': 10}


def test_cli_json(tmp_path):
  root = str(tmp_path)
  synthetic.generate(root, num_train_ids=3, num_test_ids=4, height=32, width=16, median_len=4,
                     max_len=9, min_tracklets=2, max_tracklets=3)
  info = os.path.join(root, 'info')
  train = scipy.io.loadmat(os.path.join(info, 'tracks_train_info.mat'))['track_train_info']
  test = scipy.io.loadmat(os.path.join(info, 'tracks_test_info.mat'))['track_test_info']
  q = scipy.io.loadmat(os.path.join(info, 'query_IDX.mat'))['query_IDX'].ravel() - 1

  proc = run_stats('--dataset=mars', f'--root={root}', '--protocol=official')
  assert proc.returncode == 0, proc.stderr
  out = json.loads(proc.stdout)
  assert out['dataset'] == 'mars' and out['protocol'] == 'official'
  lengths = train[:, 1] - train[:, 0] + 1
  assert out['train'] == {'ids': len(np.unique(train[:, 2])), 'tracklets': len(train),
                          'frames': int(lengths.sum()), 'min_len': int(lengths.min()),
                          'median_len': float(np.median(lengths)),
                          'max_len': int(lengths.max())}
  assert out['query']['tracklets'] == len(q)
  assert out['gallery']['tracklets'] == len(test)  # official: every test tracklet
  assert out['gallery']['frames'] == int((test[:, 1] - test[:, 0] + 1).sum())


def test_cli_error_is_clean(tmp_path):
  proc = run_stats('--dataset=mars', f'--root={tmp_path}/missing')
  assert proc.returncode != 0
  assert 'missing' in proc.stderr and 'Traceback' not in proc.stderr
  assert proc.stdout == ''
  proc = run_stats('--dataset=market', f'--root={tmp_path}')
  assert proc.returncode != 0 and 'Traceback' not in proc.stderr


def test_main_on_an_evaluation_only_csv(tmp_path, capsys):
  with open(tmp_path / 'dataset.csv', 'w') as f:
    f.write('path,pid,camid,tracklet,split\nq.jpg,3,0,q,query\ng.jpg,3,1,g,gallery\n')
  assert stats.main(['--dataset=custom', f'--root={tmp_path}']) == 0
  out = json.loads(capsys.readouterr().out)
  assert out['train'] == {'ids': 0, 'tracklets': 0, 'frames': 0, 'min_len': 0,
                          'median_len': 0.0, 'max_len': 0}
  assert out['query']['tracklets'] == 1 and out['gallery']['ids'] == 1
  assert stats.main(['--dataset=custom', f'--root={tmp_path / "none.csv"}']) == 2
  assert 'none.csv' in capsys.readouterr().err
