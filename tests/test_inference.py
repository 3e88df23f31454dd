"""inference.load on a converted tiny checkpoint: normalisation, clip and tracklet features,
images and folders, and the arrays it refuses (size, layout, dtype, value range)."""
import numpy as np
import pytest

from grl_jax import errors, inference
from tests.test_convert import converted_official_grl

MEAN = np.array([0.485, 0.456, 0.406]) * 255
STD = np.array([0.229, 0.224, 0.225]) * 255
T, H, W = 3, 32, 16


@pytest.fixture(scope='module')
def extractor(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('inference')
  return inference.load(converted_official_grl(
      tmp, 'ckpt', f'--config.data.seq_len={T}', '--config.data.test_sampling=dense',
      f'--config.data.height={H}', f'--config.data.width={W}', '--config.eval.batch_size=4'))


def _frames(n, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, H, W, 3), dtype=np.uint8)


def test_load_rebuilds_the_model_from_meta(extractor):
  from grl_jax.models import grl
  assert isinstance(extractor.model, grl.GRL)
  assert extractor.model.width == 4 and extractor.descriptor_distance == 'dot'
  assert (extractor.seq_len, extractor.test_sampling, extractor.batch_size) == (T, 'dense', 4)


def test_uint8_input_is_normalised_on_device(extractor):
  clips = _frames(3 * T).reshape(3, T, H, W, 3)
  raw = extractor.clip_features(clips)
  manual = ((clips.astype(np.float64) - MEAN) / STD).astype(np.float32)
  ref = extractor.clip_features(manual, normalized=True)
  assert raw.shape == (3, 3 * 128) and raw.dtype == np.float32
  np.testing.assert_allclose(raw, ref, rtol=1e-5, atol=1e-5)
  import jax
  direct = jax.jit(lambda v, x: extractor.model.apply(v, x, train=False)['descriptor'])(
      extractor.variables, manual)
  np.testing.assert_allclose(raw, np.asarray(direct), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='uint8'):
    extractor.clip_features(clips, normalized=True)


def test_dense_tracklet_feature_is_the_mean_of_its_clips(extractor):
  frames = _frames(7, seed=1)
  # Dense T=3 clips of 7 frames (as GRL's `dense` mode): [0,1,2], [3,4,5], then [6] cycled.
  clips = frames[np.array([[0, 1, 2], [3, 4, 5], [6, 6, 6]])]
  expected = extractor.clip_features(clips).mean(axis=0)  # averaged, not re-normalised
  np.testing.assert_allclose(extractor.tracklet_features(frames), expected, rtol=1e-5,
                             atol=1e-6)


def test_rrs_test_tracklet_feature_is_one_clip(extractor):
  frames = _frames(7, seed=2)
  extractor.test_sampling = 'rrs_test'
  try:
    feature = extractor.tracklet_features(frames)
  finally:
    extractor.test_sampling = 'dense'
  # RRS chunks of ceil(7/3) = 3 frames; the first frame of each: 0, 3, 6.
  expected = extractor.clip_features(frames[np.array([[0, 3, 6]])])[0]
  np.testing.assert_allclose(feature, expected, rtol=1e-5, atol=1e-6)


def test_bad_shapes_are_errors(extractor):
  with pytest.raises(ValueError, match=r'\[B, T, H, W, 3\]'):
    extractor.clip_features(np.zeros((T, H, W, 3), np.uint8))
  with pytest.raises(ValueError, match=r'\[n >= 1, H, W, 3\]'):
    extractor.tracklet_features(np.zeros((0, H, W, 3), np.uint8))


def _one_line(fn, *texts):
  from grl_jax.errors import GrlJaxError  # pylint: disable=g-import-not-at-top
  with pytest.raises(errors.InputError) as e:
    fn()
  message = str(e.value)
  assert isinstance(e.value, ValueError) and isinstance(e.value, GrlJaxError), message
  assert '\n' not in message, message
  for text in texts:
    assert text in message, (text, message)


def test_wrong_size_layout_and_values_are_refused(extractor):
  clips = _frames(2 * T).reshape(2, T, H, W, 3)
  clip = extractor.clip_features
  # Another resolution used to go silently into the model.
  big = np.zeros((2, T, 2 * H, 2 * W, 3), np.uint8)
  _one_line(lambda: clip(big), f'{2 * H} x {2 * W}', f'{H} x {W}', 'resize=True')
  _one_line(lambda: extractor.tracklet_features(big[0]), f'{2 * H} x {2 * W}')
  _one_line(lambda: clip(clips.transpose(0, 1, 4, 2, 3)), 'channels first',
            'transpose(0, 1, 3, 4, 2)')
  _one_line(lambda: extractor.tracklet_features(clips[0].transpose(0, 3, 1, 2)),
            'channels first', 'transpose(0, 2, 3, 1)')
  _one_line(lambda: clip(clips[0]), 'clips[None]')
  _one_line(lambda: extractor.tracklet_features(clips), 'clip_features')
  _one_line(lambda: clip(clips / 255.0), '[0, 1]', '* 255')
  normalised = (clips - MEAN) / STD
  _one_line(lambda: clip(normalised), 'normalized=True')
  _one_line(lambda: clip(clips.astype(np.float32), normalized=True), 'normalized=False')
  _one_line(lambda: clip(clips.astype(np.int16) * 2), 'expected 0-255')
  _one_line(lambda: clip(clips.astype(np.complex64)), 'dtype complex64')
  # Accepted: uint8, 0-255 floats, normalised floats with normalized=True.
  ref = clip(clips)
  np.testing.assert_allclose(clip(clips.astype(np.float32)), ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(clip(normalised.astype(np.float32), normalized=True), ref,
                             rtol=1e-4, atol=1e-4)


def test_images_and_folders_resized_as_evaluation(extractor, tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from grl_jax import folders  # pylint: disable=g-import-not-at-top
  raw = np.random.default_rng(3).integers(0, 256, (5, 2 * H + 3, 2 * W + 1, 3), dtype=np.uint8)
  paths = []
  for i, frame in enumerate(raw):
    paths.append(str(tmp_path / f'f{i + 1}.png'))
    Image.fromarray(frame).save(paths[-1])
  Image.fromarray(raw[0]).save(tmp_path / 'f10.png')   # natural order: last
  paths.append(str(tmp_path / 'f10.png'))
  raw = np.concatenate([raw, raw[:1]])
  ref = extractor.tracklet_features(folders.read_frames(paths, H, W))
  np.testing.assert_allclose(extractor.tracklet_features_from_folder(str(tmp_path)), ref,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(extractor.from_images(paths), ref, rtol=1e-5, atol=1e-6)
  # resize=True resizes arrays with the same antialiased bilinear resize as the pipeline.
  np.testing.assert_allclose(extractor.tracklet_features(raw, resize=True), ref, rtol=1e-5,
                             atol=1e-6)
  # The folder's frames come in natural name order (f10 last), as `paths` lists them.
  np.testing.assert_array_equal(folders.read_frames(str(tmp_path), H, W),
                                folders.read_frames(paths, H, W))
  _one_line(lambda: extractor.from_images(paths[0]), 'list of image paths')
