"""tf.data pipeline (data_pipeline/pipeline/) on tiny JPEG tracklets written in tmp_path.

Every frame is a 32x16 image whose left half encodes (tracklet, frame) in its colour and whose
right half is grey, so a delivered frame tells which file it came from and whether it was
flipped.
"""
import dataclasses
import logging
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from configs import base
from data_pipeline import pipeline
from data_pipeline import sampling
from data_pipeline.index import TrackletIndex
from data_pipeline.pipeline import decode
from data_pipeline.pipeline import plan as plan_lib
from data_pipeline.pipeline import recovery
from grl_jax import errors

H, W, T = 32, 16, 4
GREY = 200
# (pid, camid, length) per tracklet; every id has two cameras.
SPEC = [(0, 0, 4), (0, 1, 9), (1, 0, 13), (1, 1, 3), (2, 0, 6), (2, 1, 4), (3, 0, 20),
        (3, 1, 5)]


def _colour(tracklet, frame):
  return (10 + 20 * tracklet, 8 * frame, 40)


def _image(tracklet, frame, h=H, w=W):
  img = np.full((h, w, 3), GREY, np.uint8)
  img[:, :w // 2] = _colour(tracklet, frame)
  return img


def _write(path, img):
  Image.fromarray(img).save(path, quality=95, subsampling=0)


def _make_index(root, spec=SPEC, h=H, w=W):
  tracklets = []
  for i, (_, _, n) in enumerate(spec):
    paths = []
    for f in range(n):
      p = os.path.join(str(root), f't{i}_f{f:03d}.jpg')
      _write(p, _image(i, f, h, w))
      paths.append(p)
    tracklets.append(paths)
  return TrackletIndex.from_lists(tracklets, [s[0] for s in spec], [s[1] for s in spec])


def _cfg(**kw):
  """config.data: the defaults of configs/base.py, then this file's choices, then `kw`."""
  cfg = base.base_config().data
  cfg.update(dict(height=H, width=W, seq_len=T, train_sampling='rrs', sample_stride=1,
                  test_sampling='dense', batch_sampler='pair', p=0, k=0, flip=False,
                  erasing_prob=0.0, erasing_mode='frame', pad_crop=0, strict=False, prefetch=2,
                  threads=0))
  cfg.update(kw)
  return cfg


def _decode(frame, flipped=False):
  """(tracklet, frame index) encoded in a delivered frame."""
  half = frame[:, W // 2:] if flipped else frame[:, :W // 2]
  r, g, _ = half.reshape(-1, 3).mean(0)
  return int(round((r - 10) / 20)), int(round(g / 8))


def _is_flipped(frame):
  return abs(frame[:, :W // 2].mean() - GREY) < abs(frame[:, W // 2:].mean() - GREY)


@pytest.fixture(scope='module')
def clean_index(tmp_path_factory):
  return _make_index(tmp_path_factory.mktemp('clean'))


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_shapes_dtypes_and_frames_follow_keyed_sampling(clean_index):
  seed = 3
  it = pipeline.train_iterator(clean_index, _cfg(train_sampling='stride', sample_stride=2),
                               global_batch_size=4, seed=seed, num_steps=6)
  assert it.steps_per_epoch == 2 * len(clean_index) // 4
  batches = list(it)
  assert len(batches) == 6
  for step, b in enumerate(batches):
    assert set(b) == {'frames', 'pid', 'camid', 'tracklet'}
    assert b['frames'].shape == (4, T, H, W, 3) and b['frames'].dtype == np.uint8
    for k in ('pid', 'camid', 'tracklet'):
      assert b[k].shape == (4,) and b[k].dtype == np.int32
    np.testing.assert_array_equal(b['tracklet'], it.sampler.global_batch(step))
    np.testing.assert_array_equal(b['pid'], clean_index.pids[b['tracklet']])
    np.testing.assert_array_equal(b['camid'], clean_index.camids[b['tracklet']])
    for pos, row in enumerate(b['tracklet']):
      n = clean_index.lengths[row]
      want = sampling.stride_crop(n, T, 2, sampling.sample_rng(seed, step, pos, 1))
      got = [_decode(f) for f in b['frames'][pos]]
      assert got == [(row, int(i)) for i in want]


def test_determinism_resume_and_processes(clean_index):
  cfg = _cfg(flip=True, erasing_prob=0.5, pad_crop=2)
  ref = _take(pipeline.train_iterator(clean_index, cfg, global_batch_size=4, seed=1), 5)
  again = _take(pipeline.train_iterator(clean_index, cfg, global_batch_size=4, seed=1), 5)
  for a, b in zip(ref, again):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  resumed = next(pipeline.train_iterator(clean_index, cfg, global_batch_size=4, seed=1,
                                         start_step=3))
  for k in resumed:
    np.testing.assert_array_equal(resumed[k], ref[3][k])
  # Two processes: each gets 2 rows (one whole pair); together they equal the global batch.
  parts = [_take(pipeline.train_iterator(clean_index, cfg, global_batch_size=4, seed=1,
                                         process_index=p, process_count=2), 5)
           for p in range(2)]
  for step in range(5):
    for k in ref[step]:
      np.testing.assert_array_equal(
          np.concatenate([parts[0][step][k], parts[1][step][k]]), ref[step][k])
  other = next(pipeline.train_iterator(clean_index, cfg, global_batch_size=4, seed=2))
  assert not np.array_equal(other['frames'], ref[0]['frames'])


def test_close_stops_an_infinite_stream(clean_index):
  with pipeline.train_iterator(clean_index, _cfg(), global_batch_size=4, seed=1) as it:
    first = next(it)
    assert it.step == 1
  assert first['frames'].shape[0] == 4
  with pytest.raises(StopIteration):
    next(it)


def test_pk_sampler_through_the_pipeline(clean_index):
  cfg = _cfg(batch_sampler='pk', k=2, pk_mode='cross_cam', threads=2)
  it = pipeline.train_iterator(clean_index, cfg, global_batch_size=4, seed=0, num_steps=2)
  assert it.steps_per_epoch == 4 // 2  # 4 identities, P = 2
  for step, b in enumerate(it):
    np.testing.assert_array_equal(b['tracklet'], it.sampler.global_batch(step))
    pids = b['pid'].reshape(2, 2)
    assert (pids[:, 0] == pids[:, 1]).all()
    assert (b['camid'].reshape(2, 2)[:, 0] != b['camid'].reshape(2, 2)[:, 1]).all()


def test_flip_is_clip_consistent(clean_index):
  seed = 0
  it = pipeline.train_iterator(clean_index, _cfg(flip=True), global_batch_size=4, seed=seed,
                               num_steps=8)
  opts = pipeline.data_options(_cfg(flip=True))
  flips = []
  for step, b in enumerate(it):
    for pos in range(4):
      per_frame = {_is_flipped(f) for f in b['frames'][pos]}
      assert len(per_frame) == 1
      flipped = per_frame.pop()
      aug = pipeline.sample_augmentation(sampling.sample_rng(seed, step, pos, 2), opts)
      assert flipped == bool(aug['flip'])
      row = b['tracklet'][pos]
      assert all(_decode(f, flipped)[0] == row for f in b['frames'][pos])
      flips.append(flipped)
  assert any(flips) and not all(flips)


@pytest.mark.parametrize('mode', ['frame', 'clip'])
def test_erasing_box_at_sampled_position(clean_index, mode):
  seed, pad = 5, 2
  plain_cfg = _cfg(flip=True, pad_crop=pad)
  cfg = _cfg(flip=True, pad_crop=pad, erasing_prob=1.0, erasing_mode=mode)
  plain = _take(pipeline.train_iterator(clean_index, plain_cfg, global_batch_size=4,
                                        seed=seed), 3)
  erased = _take(pipeline.train_iterator(clean_index, cfg, global_batch_size=4, seed=seed), 3)
  opts = pipeline.data_options(cfg)
  corners = set()
  for step in range(3):
    for pos in range(4):
      aug = pipeline.sample_augmentation(sampling.sample_rng(seed, step, pos, 2), opts)
      boxes = aug['erase']
      if mode == 'clip':
        assert (boxes == boxes[0]).all()
      for t in range(T):
        apply, y0, x0, h, w, r, g, b = boxes[t]
        assert apply == 1 and 0 < h < H and 0 < w < W
        assert 0.02 * H * W * 0.5 <= h * w <= 0.2 * H * W * 1.6  # area fraction (rounded)
        got, ref = erased[step]['frames'][pos, t], plain[step]['frames'][pos, t]
        inside = np.zeros((H, W), bool)
        inside[y0:y0 + h, x0:x0 + w] = True
        assert (got[inside] == (r, g, b)).all()
        np.testing.assert_array_equal(got[~inside], ref[~inside])
        corners.add((int(y0), int(x0)))
  assert len(corners) > 3  # not pinned to one place (GRL bug B6 pasted at (w, h))


def test_pad_crop_shifts_the_clip(clean_index):
  seed, pad = 4, 3
  plain = next(pipeline.train_iterator(clean_index, _cfg(), global_batch_size=4, seed=seed))
  cropped = next(pipeline.train_iterator(clean_index, _cfg(pad_crop=pad), global_batch_size=4,
                                         seed=seed))
  opts = pipeline.data_options(_cfg(pad_crop=pad))
  for pos in range(4):
    dy, dx = pipeline.sample_augmentation(sampling.sample_rng(seed, 0, pos, 2), opts)['crop']
    padded = np.pad(plain['frames'][pos], [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    np.testing.assert_array_equal(cropped['frames'][pos], padded[:, dy:dy + H, dx:dx + W])


def test_resize_to_configured_size(tmp_path):
  index = _make_index(tmp_path, SPEC[:4], h=2 * H, w=2 * W)
  b = next(pipeline.train_iterator(index, _cfg(), global_batch_size=4, seed=0))
  assert b['frames'].shape == (4, T, H, W, 3)
  for pos, row in enumerate(b['tracklet']):
    assert all(_decode(f)[0] == row for f in b['frames'][pos])


def test_clip_mixing_frame_sizes_is_resized_frame_by_frame(tmp_path):
  # One tracklet whose frames alternate between H x W and 2H x 2W: the clip is decoded with one
  # resize branch for all of its frames, so every frame must still come out H x W, as the
  # per-frame eager loader makes it, and in order.
  paths = []
  for f in range(T):
    big = f % 2 == 1
    p = os.path.join(str(tmp_path), f'mixed_{f}.jpg')
    _write(p, _image(0, f, 2 * H if big else H, 2 * W if big else W))
    paths.append(p)
  index = TrackletIndex.from_lists([paths, paths], [0, 1], [0, 1])
  cfg = _cfg(train_sampling='stride', sample_stride=1)
  b = next(pipeline.train_iterator(index, cfg, global_batch_size=2, seed=0))
  assert b['frames'].shape == (2, T, H, W, 3)
  want = np.stack([decode.load_frame_eager(p, H, W)[0] for p in paths])
  for pos in range(2):
    np.testing.assert_array_equal(b['frames'][pos], want)


def test_clip_check_equals_the_check_of_each_file(tmp_path):
  jpeg = os.path.join(str(tmp_path), 'a.jpg')
  png = os.path.join(str(tmp_path), 'a.png')
  bmp = os.path.join(str(tmp_path), 'a.bmp')
  _write(jpeg, _image(0, 0))
  Image.fromarray(_image(0, 1)).save(png)
  Image.fromarray(_image(0, 2)).save(bmp)
  datas = [open(f, 'rb').read() for f in (jpeg, png, bmp)]
  datas += [d[:len(d) // 2] for d in datas]          # truncated copies
  datas += [b'', b'BM', b'\xff\xd8', b'not an image', datas[0] + b'trailing']
  want = [True] * 3 + [False] * 3 + [False] * 5
  assert [bool(decode.looks_valid(tf.constant(d))) for d in datas] == want
  assert decode.looks_valid(tf.constant(datas)).numpy().tolist() == want
  assert decode.looks_valid(tf.constant(datas, shape=[11, 1])).numpy()[:, 0].tolist() == want


def test_eval_iterator_covers_every_clip_with_padding(clean_index):
  cfg = _cfg(test_sampling='dense', flip=True, erasing_prob=1.0, pad_crop=2)  # ignored
  owner, clip_frames = pipeline.eval_clips(clean_index, cfg)
  total = pipeline.num_eval_clips(clean_index, cfg)
  assert total == len(owner) == sum((n - 1) // T + 1 for _, _, n in SPEC)
  batches = list(pipeline.eval_iterator(clean_index, cfg, batch_size=4))
  assert len(batches) == pipeline.num_eval_batches(clean_index, cfg, 4) == -(-total // 4)
  rows = np.concatenate([b['tracklet'] for b in batches])
  frames = np.concatenate([b['frames'] for b in batches])
  assert all(b['frames'].shape == (4, T, H, W, 3) and b['tracklet'].dtype == np.int32
             for b in batches)
  np.testing.assert_array_equal(rows[:total], owner)
  assert (rows[total:] == -1).all() and (frames[total:] == 0).all() and len(rows) > total
  for c in range(total):  # every clip's frames, unflipped, unerased
    assert [_decode(f) for f in frames[c]] == [(owner[c], int(i)) for i in clip_frames[c]]
    assert not any(_is_flipped(f) for f in frames[c])
  # Every tracklet is covered, every frame of it (dense).
  for row, (_, _, n) in enumerate(SPEC):
    assert set(clip_frames[owner == row].ravel().tolist()) == set(range(n))
  # Two processes: global batch g = process 0 rows then process 1 rows.
  parts = [list(pipeline.eval_iterator(clean_index, cfg, batch_size=4, process_index=p,
                                       process_count=2)) for p in range(2)]
  assert len(parts[0]) == len(parts[1]) == len(batches)
  for g, b in enumerate(batches):
    np.testing.assert_array_equal(
        np.concatenate([parts[0][g]['tracklet'], parts[1][g]['tracklet']]), b['tracklet'])
    np.testing.assert_array_equal(
        np.concatenate([parts[0][g]['frames'], parts[1][g]['frames']]), b['frames'])


def test_eval_rrs_test_one_clip_per_tracklet(clean_index):
  cfg = _cfg(test_sampling='rrs_test')
  assert pipeline.num_eval_clips(clean_index, cfg) == len(clean_index)
  rows = np.concatenate([b['tracklet'] for b in pipeline.eval_iterator(clean_index, cfg,
                                                                         batch_size=3)])
  np.testing.assert_array_equal(rows[:len(clean_index)], np.arange(len(clean_index)))


# --- bad frames ----------------------------------------------------------------------------

# Tracklets of length T = 4, so RRS takes every frame and every bad frame is hit each epoch.
BAD_SPEC = [(0, 0, 4), (0, 1, 4), (1, 0, 4), (1, 1, 4)]


def _corrupt(index, kind, row, frame):
  path = index.frames(row)[frame]
  data = open(path, 'rb').read()
  if kind == 'missing':
    os.remove(path)
  elif kind == 'truncated':
    open(path, 'wb').write(data[:len(data) // 2])
  elif kind == 'garbage':
    open(path, 'wb').write(np.random.default_rng(0).bytes(700))
  elif kind == 'bad_body':  # plausible JPEG start and end markers, undecodable content
    open(path, 'wb').write(b'\xff\xd8\xff' + np.random.default_rng(1).bytes(700) + b'\xff\xd9')
  return path


def _expected_replacement(i, n, bad):
  for j in [i] + [k for d in range(1, n) for k in (i + d, i - d) if 0 <= k < n]:
    if j not in bad:
      return j


def test_bad_frames_replaced_logged_and_counted(tmp_path, caplog):
  index = _make_index(tmp_path, BAD_SPEC)
  bad = {(0, 1): 'truncated', (0, 2): 'garbage', (2, 0): 'missing', (3, 3): 'bad_body'}
  paths = {_corrupt(index, kind, r, f) for (r, f), kind in bad.items()}
  cfg = _cfg(flip=True)
  it = pipeline.train_iterator(index, cfg, global_batch_size=4, seed=0, num_steps=6)
  with caplog.at_level(logging.WARNING):
    batches = list(it)
  assert len(batches) == 6
  expected_replaced = 0
  for b in batches:
    for pos, row in enumerate(b['tracklet']):
      flipped = _is_flipped(b['frames'][pos][0])
      bad_here = {f for (r, f) in bad if r == row}
      for i, frame in enumerate(b['frames'][pos]):  # RRS on n = T: frame i is index i
        assert _decode(frame, flipped) == (row, _expected_replacement(i, 4, bad_here))
        expected_replaced += i in bad_here
  assert expected_replaced > 0
  assert it.bad_frames == expected_replaced
  assert it.stats.files == paths
  assert pipeline.STATS.files >= paths
  for p in paths:
    assert p in caplog.text
  # The stream after a recovery is the same as a fresh run started there.
  resumed = next(pipeline.train_iterator(index, cfg, global_batch_size=4, seed=0,
                                         start_step=5))
  np.testing.assert_array_equal(resumed['frames'], batches[5]['frames'])


@pytest.mark.parametrize('kind', ['missing', 'truncated', 'garbage', 'bad_body'])
def test_strict_raises_naming_the_file(tmp_path, kind):
  index = _make_index(tmp_path, BAD_SPEC)
  path = _corrupt(index, kind, 1, 2)
  it = pipeline.train_iterator(index, _cfg(strict=True), global_batch_size=4, seed=0)
  with pytest.raises(pipeline.BadFrameError, match=os.path.basename(path)):
    for _ in range(4):  # one epoch: every tracklet appears
      next(it)


def test_eval_replaces_bad_frames(tmp_path):
  index = _make_index(tmp_path, BAD_SPEC)
  _corrupt(index, 'garbage', 1, 0)
  batches = list(pipeline.eval_iterator(index, _cfg(test_sampling='dense'), batch_size=4))
  frames = np.concatenate([b['frames'] for b in batches])
  assert [_decode(f) for f in frames[1]] == [(1, 1), (1, 1), (1, 2), (1, 3)]


def test_config_validation():
  with pytest.raises(errors.ConfigError, match='config.data.erasing_mode'):
    pipeline.data_options(_cfg(erasing_mode='pixel'))
  with pytest.raises(errors.ConfigError, match='config.data.train_sampling'):
    pipeline.data_options(_cfg(train_sampling='dense'))
  with pytest.raises(errors.ConfigError, match='train_sampling'):
    pipeline.data_options(_cfg(train_sampling='rrs_train'))  # the dropped alias
  with pytest.raises(errors.ConfigError, match='config.data.pk_mode'):
    pipeline.data_options(_cfg(pk_mode='any'))
  with pytest.raises(errors.ConfigError, match='erasing_prob'):
    pipeline.data_options(_cfg(erasing_prob=1.5))
  with pytest.raises(ValueError, match='height'):  # a ConfigError is also a ValueError
    pipeline.data_options(_cfg(height=0))
  cfg = _cfg()
  del cfg['seq_len']
  with pytest.raises(errors.ConfigError, match='config.data.seq_len is missing'):
    pipeline.data_options(cfg)
  opts = pipeline.data_options(_cfg(p=0, k=4))
  assert opts.p is None and opts.k == 4


def test_defaults_come_only_from_configs_base():
  assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
             for f in dataclasses.fields(pipeline.DataOptions))
  opts = pipeline.data_options(base.base_config().data)
  assert opts.sample_stride == base.base_config().data.sample_stride
  for name in ('threads', 'sample_stride', 'strict'):  # once defaulted here; now required
    cfg = base.base_config().data
    del cfg[name]
    with pytest.raises(errors.ConfigError, match=f'config.data.{name} is missing'):
      pipeline.data_options(cfg)
  # A plain mapping works as well, with the same rule.
  full = dict(base.base_config().data.items())
  assert pipeline.data_options(full) == opts
  del full['prefetch']
  with pytest.raises(errors.ConfigError, match='config.data.prefetch'):
    pipeline.data_options(full)


def test_errors_are_the_shared_family(clean_index):
  assert pipeline.BadFrameError is errors.BadFrameError
  with pytest.raises(errors.ConfigError, match='config.eval.batch_size'):
    pipeline.eval_iterator(clean_index, _cfg(), batch_size=3, process_count=2)
  with pytest.raises(errors.ConfigError, match='config.data.batch_sampler'):
    pipeline.train_iterator(clean_index, _cfg(batch_sampler='triplet'), global_batch_size=4,
                            seed=0)


def test_one_plan_for_train_and_eval_padding_rows(clean_index):
  resolver = recovery.Resolver(clean_index, pipeline.data_options(_cfg()),
                               recovery.BadFrameStats())
  none = {'flip': np.int32(0), 'crop': np.zeros(2, np.int32), 'erase': np.zeros((T, 8))}
  frames = np.array([[0, 1, 2, 3], [2, 2, 1, 0]])
  got = plan_lib.batch_plan(clean_index, resolver, tracklets=[6, -1], load_rows=[6, 5],
                            frames=frames, augs=[none, none])
  assert tuple(got) == plan_lib.PLAN_KEYS
  assert got['paths'].shape == (2, T) and got['paths'].dtype == object
  assert got['paths'][1, 0] == clean_index.frames(5)[2].encode()
  np.testing.assert_array_equal(got['idx0'], frames)
  np.testing.assert_array_equal(got['tracklet'], [6, -1])
  np.testing.assert_array_equal(got['pid'], [clean_index.pids[6], -1])
  np.testing.assert_array_equal(got['camid'], [clean_index.camids[6], -1])
  assert got['replaced'].sum() == 0 and got['crop'].shape == (2, 2)
  assert all(got[k].dtype == np.int32 for k in plan_lib.PLAN_KEYS if k != 'paths')


_IMPORT_CHECK = """
import tensorflow as tf
calls = []
tf.config.set_visible_devices = lambda *a, **k: calls.append(a)
from data_pipeline import pipeline
assert not calls, calls  # importing changes nothing in TF's runtime
pipeline.hide_accelerators_from_tf()
pipeline.hide_accelerators_from_tf()
assert calls == [([], 'GPU')], calls  # once, lazily
# Too late (TF already initialised and seeing a GPU): tolerated, with a warning.
from absl import logging
from data_pipeline.pipeline import tf_device
def too_late(*a, **k):
  raise RuntimeError('Visible devices cannot be modified after being initialized')
warnings = []
tf.config.set_visible_devices = too_late
tf.config.list_logical_devices = lambda kind=None: ['/GPU:0']
logging.warning = lambda msg, *a: warnings.append(msg)
tf_device._DONE = False
tf_device.hide_accelerators_from_tf()
assert len(warnings) == 1 and 'hide_accelerators_from_tf' in warnings[0], warnings
"""


def test_no_tf_device_side_effect_at_import():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.run([sys.executable, '-c', _IMPORT_CHECK], env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
