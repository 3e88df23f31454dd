"""Batch samplers (data_pipeline/samplers.py): pair and P x K rules, determinism, resume,
process slices."""
import collections

import numpy as np
import pytest

from data_pipeline import samplers
from data_pipeline.index import TrackletIndex
from grl_jax import schema
from grl_jax.errors import ConfigError


def _index(spec):
  """spec: list of (pid, camid) per tracklet; one dummy frame each."""
  tracklets = [[f'/x/{i}.jpg'] for i in range(len(spec))]
  return TrackletIndex.from_lists(tracklets, [p for p, _ in spec], [c for _, c in spec])


# pid 0: 3 cameras; pid 1: one camera, 3 tracklets; pid 2: a single tracklet;
# pid 3: two cameras, 4 tracklets; pid 4: one camera, 2 tracklets; pid 5: 2 cams.
SPEC = [(0, 0), (0, 1), (0, 2), (0, 0), (1, 3), (1, 3), (1, 3), (2, 1), (3, 0), (3, 0),
        (3, 5), (3, 5), (4, 2), (4, 2), (5, 1), (5, 4)]  # N = 16


@pytest.fixture
def index():
  return _index(SPEC)


# --- pair sampler --------------------------------------------------------------------------


def test_pair_partner_rules(index):
  sampler = samplers.make_batch_sampler('pair', index, global_batch_size=8, seed=0)
  pids, cams = index.pids, index.camids
  seen_partners = collections.defaultdict(set)
  for step in range(sampler.steps_per_epoch * 6):
    batch = sampler.global_batch(step)
    for a, p in batch.reshape(-1, 2):
      assert pids[a] == pids[p]
      n_cams = len(set(cams[pids == pids[a]].tolist()))
      n_tracks = int((pids == pids[a]).sum())
      if n_cams >= 2:
        assert cams[a] != cams[p]
      elif n_tracks >= 2:
        assert a != p
      else:
        assert a == p
      seen_partners[int(a)].add(int(p))
  # Partners are drawn among all eligible tracklets (anchor 0, camera 0: rows 1 and 2).
  assert seen_partners[0] == {1, 2}
  assert seen_partners[4] == {5, 6}


def test_pair_epoch_covers_every_tracklet_once(index):
  sampler = samplers.make_batch_sampler('pair', index, global_batch_size=8, seed=3)
  assert sampler.steps_per_epoch == 2 * 16 // 8
  for epoch in range(3):
    steps = range(epoch * sampler.steps_per_epoch, (epoch + 1) * sampler.steps_per_epoch)
    anchors = np.concatenate([sampler.global_batch(s)[0::2] for s in steps])
    assert sorted(anchors.tolist()) == list(range(16))


def test_pair_drop_last(index):
  sampler = samplers.make_batch_sampler('pair', index, global_batch_size=6, seed=0)
  assert sampler.steps_per_epoch == 32 // 6  # 5 steps, the 2 leftover clips are dropped
  anchors = np.concatenate([sampler.global_batch(s)[0::2] for s in range(5)])
  assert len(set(anchors.tolist())) == 15  # distinct anchors, one left out


def test_pair_plan_matches_documented_seeding(index):
  # Epoch e is planned from default_rng([seed, e]): anchors = its first permutation.
  sampler = samplers.make_batch_sampler('pair', index, global_batch_size=8, seed=42)
  anchors = np.concatenate([sampler.global_batch(4 + s)[0::2] for s in range(4)])
  np.testing.assert_array_equal(anchors, np.random.default_rng([42, 1]).permutation(16))


def test_pair_resume_is_history_independent(index):
  a = samplers.make_batch_sampler('pair', index, global_batch_size=8, seed=7)
  b = samplers.make_batch_sampler('pair', index, global_batch_size=8, seed=7)
  ref = [a.global_batch(s) for s in range(20)]
  for s in [13, 2, 19, 13, 0, 7]:  # arbitrary order, as after a resume
    np.testing.assert_array_equal(b.global_batch(s), ref[s])
  c = samplers.make_batch_sampler('pair', index, global_batch_size=8, seed=8)
  assert any(not np.array_equal(c.global_batch(s), ref[s]) for s in range(20))
  # Epochs differ.
  assert not np.array_equal(ref[0], ref[a.steps_per_epoch])


def test_pair_process_slices(index):
  sampler = samplers.make_batch_sampler('pair', index, global_batch_size=8, seed=1)
  for step in range(6):
    glob = sampler.global_batch(step)
    for count in (1, 2, 4):
      parts = [sampler.local_batch(step, p, count) for p in range(count)]
      np.testing.assert_array_equal(np.concatenate(parts), glob)
      for part in parts:  # whole pairs: rows (0, 1), (2, 3), ... share a pid
        assert len(part) == 8 // count
        np.testing.assert_array_equal(index.pids[part[0::2]], index.pids[part[1::2]])
  with pytest.raises(ValueError, match='whole groups'):
    sampler.local_batch(0, 0, 8)  # 4 pairs over 8 processes
  with pytest.raises(ValueError, match='process_index'):
    sampler.local_batch(0, 2, 2)
  with pytest.raises(ValueError, match='even'):
    samplers.make_batch_sampler('pair', index, global_batch_size=7, seed=0)


# --- P x K sampler -------------------------------------------------------------------------


@pytest.mark.parametrize('mode', ['replace', 'distinct', 'cross_cam'])
def test_pk_batches(index, mode):
  sampler = samplers.make_batch_sampler('pk', index, global_batch_size=6, seed=0, k=2,
                                        pk_mode=mode)
  assert (sampler.p, sampler.k) == (3, 2)
  assert sampler.steps_per_epoch == 6 // 3  # 6 identities
  for epoch in range(4):
    ids = []
    for s in range(epoch * 2, epoch * 2 + 2):
      batch = sampler.global_batch(s).reshape(3, 2)
      for group in batch:
        assert len(set(index.pids[group].tolist())) == 1
        ids.append(int(index.pids[group[0]]))
    assert sorted(ids) == list(range(6))  # each identity once per epoch (P ids w/o replacement)


def test_pk_modes_choose_tracklets_per_spec():
  # pid 0: 4 tracklets on 4 cameras; pid 1: 2 tracklets on 1 camera; pid 2: 6 on 2 cameras.
  spec = ([(0, c) for c in range(4)] + [(1, 0)] * 2 + [(2, 0)] * 3 + [(2, 1)] * 3)
  index = _index(spec)
  cams, pids = index.camids, index.pids
  for seed in range(30):
    cross = samplers.make_batch_sampler('pk', index, global_batch_size=12, seed=seed, k=4,
                                        pk_mode='cross_cam').global_batch(0).reshape(3, 4)
    distinct = samplers.make_batch_sampler('pk', index, global_batch_size=12, seed=seed, k=4,
                                           pk_mode='distinct').global_batch(0).reshape(3, 4)
    for group in cross:
      pid = pids[group[0]]
      c = cams[group]
      if pid == 0:  # 4 cameras: one tracklet from each
        assert sorted(c.tolist()) == [0, 1, 2, 3]
      if pid == 2:  # 2 cameras, cycled: [a, b, a, b]
        assert c[0] != c[1] and c[0] == c[2] and c[1] == c[3]
    for group in distinct:
      if pids[group[0]] in (0, 2):  # >= K tracklets: no repeats
        assert len(set(group.tolist())) == 4


def test_pk_replace_draws_with_replacement():
  index = _index([(0, 0)] * 4 + [(1, 1)] * 4)
  repeats = 0
  for seed in range(40):
    s = samplers.make_batch_sampler('pk', index, global_batch_size=8, seed=seed, k=4)
    for group in s.global_batch(0).reshape(2, 4):
      repeats += len(set(group.tolist())) < 4
  assert repeats > 0  # STE-NVAN's np.random.choice default: replace=True


def test_pk_resume_and_process_slices(index):
  a = samplers.make_batch_sampler('pk', index, global_batch_size=4, seed=5, p=2)
  b = samplers.make_batch_sampler('pk', index, global_batch_size=4, seed=5, p=2)
  assert a.k == 2 and a.steps_per_epoch == 3
  ref = [a.global_batch(s) for s in range(12)]
  for s in [11, 3, 0, 7]:
    np.testing.assert_array_equal(b.global_batch(s), ref[s])
  for s in range(12):
    parts = [a.local_batch(s, p, 2) for p in range(2)]
    np.testing.assert_array_equal(np.concatenate(parts), ref[s])
    for part in parts:  # each process gets one whole identity
      assert len(set(index.pids[part].tolist())) == 1
  with pytest.raises(ValueError, match='whole groups'):
    a.local_batch(0, 0, 4)


def test_pk_validation(index):
  with pytest.raises(ValueError, match='p=3 x k=4'):
    samplers.make_batch_sampler('pk', index, global_batch_size=8, seed=0, p=3, k=4)
  with pytest.raises(ValueError, match='multiple of k'):
    samplers.make_batch_sampler('pk', index, global_batch_size=6, seed=0, k=4)
  with pytest.raises(ValueError, match='fewer than p'):
    samplers.make_batch_sampler('pk', index, global_batch_size=32, seed=0, k=4)
  with pytest.raises(ValueError, match='pk_mode'):
    samplers.make_batch_sampler('pk', index, global_batch_size=8, seed=0, pk_mode='x')
  with pytest.raises(ValueError, match='batch_sampler'):
    samplers.make_batch_sampler('triplet', index, global_batch_size=8, seed=0)


def test_config_mistakes_are_config_errors_keyed_by_schema(index):
  assert tuple(samplers._SAMPLERS) == schema.BATCH_SAMPLERS  # pylint: disable=protected-access
  with pytest.raises(ConfigError, match='config.data.batch_sampler'):
    samplers.make_batch_sampler('triplet', index, global_batch_size=8, seed=0)
  with pytest.raises(ConfigError, match='config.data.pk_mode'):
    samplers.make_batch_sampler('pk', index, global_batch_size=8, seed=0, pk_mode='x')
  with pytest.raises(ConfigError, match='config.data.k=4'):
    samplers.make_batch_sampler('pair', index, global_batch_size=8, seed=0, k=4)
  with pytest.raises(ConfigError, match='p=3 x k=4'):
    samplers.make_batch_sampler('pk', index, global_batch_size=8, seed=0, p=3, k=4)
  with pytest.raises(ConfigError, match='whole groups'):
    samplers.make_batch_sampler('pair', index, global_batch_size=8, seed=0).check_processes(3)
