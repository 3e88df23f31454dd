"""Frame sampling rules (data_pipeline/sampling.py) against hand-worked cases."""
import numpy as np
import pytest

from data_pipeline import sampling
from grl_jax import schema
from grl_jax.errors import ConfigError


def _support(fn, trials=400):
  """The set of values each position took over many seeds."""
  draws = np.stack([fn((7, s)) for s in range(trials)])
  return [set(draws[:, i].tolist()) for i in range(draws.shape[1])]


# --- RRS -----------------------------------------------------------------------------------


def test_rrs_train_short_tracklet_is_all_frames_then_last():
  # n=3 < T=8: chunks [0], [1], [2], then five chunks [2].
  for s in range(20):
    np.testing.assert_array_equal(sampling.rrs_train(3, 8, s), [0, 1, 2, 2, 2, 2, 2, 2])


def test_rrs_train_n_equals_t_is_identity():
  for s in range(20):
    np.testing.assert_array_equal(sampling.rrs_train(8, 8, s), np.arange(8))


def test_rrs_train_single_frame():
  np.testing.assert_array_equal(sampling.rrs_train(1, 8, 0), np.zeros(8))


def test_rrs_train_chunks_not_multiple_of_t():
  # n=20, T=8: c=ceil(20/8)=3; padded list 0..19,19,19,19 (24 entries) in chunks of 3:
  # [0,1,2] [3,4,5] [6,7,8] [9,10,11] [12,13,14] [15,16,17] [18,19,19] [19,19,19].
  expected = [{0, 1, 2}, {3, 4, 5}, {6, 7, 8}, {9, 10, 11}, {12, 13, 14}, {15, 16, 17},
              {18, 19}, {19}]
  assert _support(lambda r: sampling.rrs_train(20, 8, r)) == expected
  # 19 is twice as likely as 18 in chunk 6 (padding over-represents the last frame).
  draws = np.array([sampling.rrs_train(20, 8, (1, s))[6] for s in range(3000)])
  assert 0.6 < np.mean(draws == 19) < 0.73


def test_rrs_train_n9():
  # n=9, T=8: c=2, chunks [0,1] [2,3] [4,5] [6,7] [8,8] [8,8] [8,8] [8,8].
  expected = [{0, 1}, {2, 3}, {4, 5}, {6, 7}, {8}, {8}, {8}, {8}]
  assert _support(lambda r: sampling.rrs_train(9, 8, r)) == expected


def test_rrs_train_sorted_in_range_and_dtype():
  for n in (1, 2, 7, 8, 9, 15, 16, 17, 100, 1000):
    idx = sampling.rrs_train(n, 8, (3, n))
    assert idx.dtype == np.int32 and idx.shape == (8,)
    assert idx.min() >= 0 and idx.max() < n
    assert np.all(np.diff(idx) >= 0)


def test_rrs_test_is_first_of_each_chunk():
  np.testing.assert_array_equal(sampling.rrs_test(20, 8), [0, 3, 6, 9, 12, 15, 18, 19])
  np.testing.assert_array_equal(sampling.rrs_test(9, 8), [0, 2, 4, 6, 8, 8, 8, 8])
  np.testing.assert_array_equal(sampling.rrs_test(3, 8), [0, 1, 2, 2, 2, 2, 2, 2])
  np.testing.assert_array_equal(sampling.rrs_test(8, 8), np.arange(8))
  np.testing.assert_array_equal(sampling.rrs_test(1, 8), np.zeros(8))
  np.testing.assert_array_equal(sampling.rrs_test(64, 8), np.arange(0, 64, 8))


# --- dense ---------------------------------------------------------------------------------


def test_dense_cycles_last_short_clip():
  # GRL's dense test sampling example: 26 frames -> 3 full clips and [24, 25, 24, 25, ...].
  clips = sampling.dense(26, 8)
  np.testing.assert_array_equal(clips[:3], np.arange(24).reshape(3, 8))
  np.testing.assert_array_equal(clips[3], [24, 25, 24, 25, 24, 25, 24, 25])


def test_dense_emission_rule():
  # Full clips while MORE than T frames remain: n=16 -> [0..7], then 8 remain -> [8..15].
  np.testing.assert_array_equal(sampling.dense(16, 8), np.arange(16).reshape(2, 8))
  np.testing.assert_array_equal(sampling.dense(8, 8), np.arange(8)[None])
  # n=17 -> [0..7], [8..15] (9 remained), then [16] cycled.
  clips = sampling.dense(17, 8)
  assert clips.shape == (3, 8)
  np.testing.assert_array_equal(clips[2], np.full(8, 16))
  np.testing.assert_array_equal(sampling.dense(3, 8), [[0, 1, 2, 0, 1, 2, 0, 1]])
  np.testing.assert_array_equal(sampling.dense(1, 8), [np.zeros(8)])
  np.testing.assert_array_equal(sampling.dense(5, 2), [[0, 1], [2, 3], [4, 4]])


@pytest.mark.parametrize('t', [1, 3, 8])
def test_dense_covers_every_frame_once_in_order(t):
  for n in range(1, 41):
    clips = sampling.dense(n, t)
    assert clips.shape == (sampling.num_test_clips('dense', n, t), t)
    assert clips.dtype == np.int32
    # Every frame appears, and the non-cycled part is exactly 0..n-1 in order.
    assert set(clips.ravel().tolist()) == set(range(n))
    head = clips[:-1].ravel()
    np.testing.assert_array_equal(head, np.arange(len(head)))
    rest = n - len(head)
    assert 1 <= rest <= t
    np.testing.assert_array_equal(clips[-1], len(head) + np.arange(t) % rest)


# --- torchreid evenly / random -------------------------------------------------------------


def _torchreid_evenly(n, t):
  """torchreid VideoDataset 'evenly', written from its description in the test."""
  if n >= t:
    m = n - n % t
    return np.arange(0, m, m / t).astype(int)
  return np.concatenate([np.arange(n), np.full(t - n, n - 1)])


def test_evenly_matches_torchreid_rule():
  np.testing.assert_array_equal(sampling.evenly(20, 8), [0, 2, 4, 6, 8, 10, 12, 14])
  np.testing.assert_array_equal(sampling.evenly(5, 8), [0, 1, 2, 3, 4, 4, 4, 4])
  for n in range(1, 80):
    for t in (4, 8, 15):
      np.testing.assert_array_equal(sampling.evenly(n, t), _torchreid_evenly(n, t))


def test_random_mode():
  idx = sampling.random(20, 8, 0)
  assert len(set(idx.tolist())) == 8 and np.all(np.diff(idx) > 0)  # distinct when n >= T
  short = sampling.random(3, 8, 0)
  assert np.all(np.diff(short) >= 0) and set(short.tolist()) <= {0, 1, 2}


# --- CAS stride crop -----------------------------------------------------------------------


def test_stride_crop_long_tracklet():
  # n=40 >= T*s=32: start in {0..40-(4-1)*8-1} = {0..15}, then every 8th frame.
  starts = set()
  for s in range(300):
    idx = sampling.stride_crop(40, 4, 8, (2, s))
    np.testing.assert_array_equal(np.diff(idx), [8, 8, 8])
    starts.add(int(idx[0]))
  assert starts == set(range(16))
  # Exactly T*s=32 frames: starts {0..32-24-1} = {0..7}.
  starts = {int(sampling.stride_crop(32, 4, 8, (3, s))[0]) for s in range(200)}
  assert starts == set(range(8))


def test_stride_crop_fallbacks():
  for s in range(50):
    mid = sampling.stride_crop(20, 4, 8, (5, s))  # T <= n < T*s: sorted, distinct
    assert len(set(mid.tolist())) == 4 and np.all(np.diff(mid) > 0) and mid.max() < 20
    short = sampling.stride_crop(3, 4, 8, (5, s))  # n < T: sorted, with replacement
    assert np.all(np.diff(short) >= 0) and short.max() < 3


# --- determinism and dispatch --------------------------------------------------------------


@pytest.mark.parametrize('mode', ['rrs', 'stride', 'random', 'evenly'])
def test_train_indices_deterministic_by_key(mode):
  a = sampling.train_indices(mode, 57, 8, (11, 3, 4), stride=4)
  b = sampling.train_indices(mode, 57, 8, np.random.default_rng((11, 3, 4)), stride=4)
  np.testing.assert_array_equal(a, b)
  if mode != 'evenly':
    others = [sampling.train_indices(mode, 57, 8, (11, 3, s), stride=4) for s in range(10)]
    assert any(not np.array_equal(a, o) for o in others)


def test_sample_rng_streams_are_independent_keys():
  a = sampling.sample_rng(0, 5, 3, 1).integers(0, 1 << 30, 4)
  np.testing.assert_array_equal(a, sampling.sample_rng(0, 5, 3, 1).integers(0, 1 << 30, 4))
  for key in [(0, 5, 3, 2), (0, 5, 4, 1), (0, 6, 3, 1), (1, 5, 3, 1)]:
    assert not np.array_equal(a, sampling.sample_rng(*key).integers(0, 1 << 30, 4))


def test_test_clips_dispatch():
  np.testing.assert_array_equal(sampling.test_clips('rrs_test', 20, 8),
                                sampling.rrs_test(20, 8)[None])
  np.testing.assert_array_equal(sampling.test_clips('evenly', 20, 8),
                                sampling.evenly(20, 8)[None])
  np.testing.assert_array_equal(sampling.test_clips('dense', 26, 8), sampling.dense(26, 8))
  with pytest.raises(ValueError, match='test_sampling'):
    sampling.test_clips('dense_all', 5, 8)
  with pytest.raises(ValueError, match='train_sampling'):
    sampling.train_indices('rrs_test', 5, 8, 0)
  with pytest.raises(ConfigError, match='config.data.train_sampling'):
    sampling.train_indices('rrs_train', 5, 8, 0)  # GRL's name for 'rrs'; schema has only 'rrs'
  with pytest.raises(ConfigError, match='config.data.test_sampling'):
    sampling.num_test_clips('all', 5, 8)
  with pytest.raises(ValueError, match='n=0'):
    sampling.rrs_train(0, 8, 0)


def test_registries_are_keyed_by_schema():
  assert tuple(sampling.TRAIN_REGISTRY) == schema.TRAIN_SAMPLINGS
  assert tuple(sampling.TEST_REGISTRY) == schema.TEST_SAMPLINGS
  for mode in schema.TEST_SAMPLINGS:
    assert sampling.num_test_clips(mode, 26, 8) == len(sampling.test_clips(mode, 26, 8))
