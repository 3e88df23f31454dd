"""grl_jax/gce_map.py: GCE's correlation map R out of a tiny GRL, checked against a numpy
recomputation of the GCE equation from the captured backbone features; the picture; the CLI."""
import re

import jax
import numpy as np
import pytest
from PIL import Image

from configs import base
from grl_jax import checkpoint, gce_map, models
from grl_jax.errors import ConfigError
from grl_jax.models import resnet
from grl_jax.trainer.step import normalize_frames
from tests.test_resnet import init_shapes, np_bn, randomize, relu, to_np

B, T, H, W = 2, 3, 64, 32     # feature map h x w = 4 x 2 (stride 16, last stride 1)


def tiny_config(model='grl'):
  config = base.get_config('mars', model)
  config.model.stage_sizes = (1, 1, 1, 1)
  config.model.resnet_width = 4
  if model == 'grl':
    config.loss.feature_dim = 128
  else:
    config.model.non_layers = (0, 1, 1, 0)
  config.data.height, config.data.width, config.data.seq_len = H, W, T
  config.data.test_sampling = 'rrs_test'
  return config


def clips_of(seed, b=B):
  return np.random.default_rng(seed).integers(0, 256, (b, T, H, W, 3), dtype=np.uint8)


def backbone_features(model, variables, clips):
  """The captured backbone output X f64[B, T, h, w, D] and the plain eval outputs."""
  def fn(v, x):
    plain = model.apply(v, x, train=False)
    out, state = model.apply(v, x, train=False,
                             capture_intermediates=lambda m, n: isinstance(m, resnet.ResNet))
    return plain, out, state['intermediates']['backbone']['__call__'][0]
  plain, out, x = jax.jit(fn)(variables, normalize_frames(clips))
  return np.asarray(x, np.float64).reshape(*clips.shape[:2], *x.shape[1:]), plain, out


@pytest.fixture(scope='module')
def tiny():
  config = tiny_config()
  model = models.get('grl').build(config.model)
  clips = clips_of(1)
  variables = jax.device_get(randomize(init_shapes(model, normalize_frames(clips), train=False),
                                       seed=3))
  # Random weights give R ~ 0.46 everywhere; calibrating the last BN on these clips' logits
  # spreads R over (0, 1), so that a wrong tensor (1 - R, the logit, X^h) cannot pass.
  x, _, _ = backbone_features(model, variables, clips)
  pre = np_logit(x, to_np(variables['params']['gce']), to_np(variables['batch_stats']['gce']))
  variables['batch_stats']['gce']['corr_bn3'] = {
      'mean': np.full(1, pre.mean(), np.float32), 'var': np.full(1, pre.var(), np.float32)}
  variables['params']['gce']['corr_bn3']['scale'] = np.full(1, 1.5, np.float32)
  return config, model, variables


def np_logit(x, p, s):
  """GCE's head before its last BN, on backbone features x f[B, T, h, w, D] (float64):
  G = ReLU(BN(W_g mean_{t,i,j} X + b_g));  K3 ReLU(BN2(K2 BN1(K1 [X ; G]))) f[B, T, h, w]."""
  g = relu(np_bn(x.mean((1, 2, 3)) @ p['glo_fc']['kernel'] + p['glo_fc']['bias'], p['glo_bn'],
                 s['glo_bn']))
  z = np.concatenate([x, np.broadcast_to(g[:, None, None, None], x.shape[:4] + g.shape[-1:])],
                     -1)
  r = np_bn(z @ p['corr_conv1']['kernel'][0, 0], p['corr_bn1'], s['corr_bn1'])
  r = relu(np_bn(r @ p['corr_conv2']['kernel'][0, 0], p['corr_bn2'], s['corr_bn2']))
  return (r @ p['corr_conv3']['kernel'][0, 0])[..., 0]


def np_correlation(x, p, s):
  """R = sigmoid(BN3(logit)): the weight of X^h = X * R (X^l = X * (1 - R))."""
  r = np_bn(np_logit(x, p, s)[..., None], p['corr_bn3'], s['corr_bn3'])
  return 1 / (1 + np.exp(-r[..., 0]))


def test_map_is_gce_sigmoid_of_the_captured_features(tiny):
  _, model, variables = tiny
  clips = clips_of(1)
  maps = gce_map.correlation_maps(model, variables, clips)
  assert maps.shape == (B, T, 4, 2) and maps.dtype == np.float32

  x, plain, out = backbone_features(model, variables, clips)
  ref = np_correlation(x, to_np(variables['params']['gce']),
                       to_np(variables['batch_stats']['gce']))
  np.testing.assert_allclose(maps, ref, rtol=1e-4, atol=1e-5)
  assert ref.std() > 0.05  # a spread-out map: R vs 1 - R or a constant would not pass
  # Capturing changes nothing the model returns, and R is the map the model reports.
  for k in plain:
    np.testing.assert_array_equal(np.asarray(out[k]), np.asarray(plain[k]))
  np.testing.assert_allclose(maps, np.asarray(plain['correlation_map']), rtol=1e-6, atol=1e-7)


def test_models_without_gce_are_refused_in_one_line():
  nvan = models.get('nvan').build(tiny_config('nvan').model, 5)
  variables = init_shapes(nvan, normalize_frames(clips_of(0)), train=False)  # no compute
  with pytest.raises(ConfigError, match="GRL only.*NVAN has no GCE") as e:
    gce_map.correlation_maps(nvan, variables, clips_of(0))
  assert '\n' not in str(e.value)


def panel(picture, row, j, strip, fh, fw, title=True):
  """The (fh, fw) panel of frame j, strip k of `row`, from the layout in grl_jax/gce_map.py."""
  row_h = gce_map.LABEL_H + len(gce_map.STRIPS) * (fh + gce_map.PAD)
  y = (gce_map.PAD + (gce_map.LABEL_H if title else 0) + row * row_h + gce_map.LABEL_H
       + strip * (fh + gce_map.PAD))
  x = gce_map.LEFT + j * (fw + gce_map.PAD)
  return picture[y:y + fh, x:x + fw]


def test_draw_writes_frame_map_and_split(tmp_path):
  h, w = 24, 12
  fh, fw = gce_map.display_size(h, w)
  assert (fh, fw) == (144, 72)
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (2, 3, h, w, 3), dtype=np.uint8)
  maps = np.zeros((2, 3, 4, 2), np.float32)
  maps[:, 0] = 1.0                                   # all high: split = the frame
  maps[:, 2] = np.linspace(0, 1, 4)[:, None]         # crosses 0.5: a contour
  path = gce_map.draw(frames, maps, str(tmp_path / 'sub' / 'gce.png'), title='t')
  picture = np.asarray(Image.open(path).convert('RGB'))
  assert picture.shape[:2] == gce_map.picture_size(2, 3, h, w, title=True)
  big = np.asarray(Image.fromarray(frames[1, 0]).resize((fw, fh), Image.NEAREST))
  np.testing.assert_array_equal(panel(picture, 1, 0, 0, fh, fw), big)            # frame
  assert (panel(picture, 1, 0, 1, fh, fw) == gce_map.COLORMAP[255]).all()        # R = 1
  assert (panel(picture, 1, 1, 1, fh, fw) == gce_map.COLORMAP[0]).all()          # R = 0
  np.testing.assert_array_equal(panel(picture, 1, 0, 2, fh, fw), big)            # all X^h
  big1 = np.asarray(Image.fromarray(frames[1, 1]).resize((fw, fh), Image.NEAREST))
  grey = np.round(gce_map.LOW_DIM * big1.astype(np.float32).mean(-1))
  np.testing.assert_allclose(panel(picture, 1, 1, 2, fh, fw)[..., 0], grey, atol=1)  # all X^l
  split = panel(picture, 0, 2, 2, fh, fw)
  contour = (split == gce_map.CONTOUR_COLOR).all(-1)
  assert contour.any(axis=1).sum() < fh // 3 and contour.any()   # one horizontal line
  one = gce_map.draw(frames[0], maps[0], str(tmp_path / 'one.png'))
  assert Image.open(one).size[::-1] == gce_map.picture_size(1, 3, h, w, title=False)
  with pytest.raises(ValueError, match='maps'):
    gce_map.draw(frames, maps[:, :2], str(tmp_path / 'bad.png'))


def _write_frames(folder, n, seed, size=(40, 20)):
  folder.mkdir(parents=True)
  rng = np.random.default_rng(seed)
  for i in range(n):
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f'f{i}.png')


def test_cli_draws_one_row_per_tracklet_folder(tiny, tmp_path, capsys):
  config, _, variables = tiny
  checkpoint.write_variables(str(tmp_path / 'run'), variables, config, step=7)
  _write_frames(tmp_path / 'in' / 'a', 5, 0)
  _write_frames(tmp_path / 'in' / 'b', 2, 1)
  path = gce_map.main([f'--workdir={tmp_path / "run"}', f'--input={tmp_path / "in"}'])
  assert path == str(tmp_path / 'run' / 'gce_map_in_step7.png')
  assert Image.open(path).size[::-1] == gce_map.picture_size(2, T, H, W, title=True)
  assert '2 tracklet(s) x 3 frames' in capsys.readouterr().out
  out = str(tmp_path / 'a.png')
  assert gce_map.main([f'--workdir={tmp_path / "run"}', f'--input={tmp_path / "in" / "a"}',
                       f'--output={out}', '--step=7']) == out
  assert Image.open(out).size[::-1] == gce_map.picture_size(1, T, H, W, title=True)


def test_cli_errors_are_one_line(tiny, tmp_path, capsys):
  config = tiny_config('nvan')
  nvan = models.get('nvan').build(config.model, 1)
  shapes = init_shapes(nvan, normalize_frames(clips_of(0)), train=False)
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  checkpoint.write_variables(str(tmp_path / 'nvan'), zeros, config, step=1)
  _write_frames(tmp_path / 'in' / 'a', 2, 0)
  for name in 'abcdefghi'[1:]:
    _write_frames(tmp_path / 'nine' / name, 1, 0)
  _write_frames(tmp_path / 'nine' / 'a', 1, 0)
  grl_config, _, variables = tiny
  checkpoint.write_variables(str(tmp_path / 'grl'), variables, grl_config, step=1)
  cases = [([f'--workdir={tmp_path / "nvan"}', f'--input={tmp_path / "in"}'],
            "--workdir=.*nvan: the GCE correlation-map picture is for GRL only"),
           ([f'--workdir={tmp_path / "grl"}', f'--input={tmp_path / "nine"}'],
            'nine: 9 tracklets; at most 8'),
           ([f'--input={tmp_path / "in"}'], '--workdir is required')]
  for argv, message in cases:
    with pytest.raises(SystemExit) as e:
      gce_map.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith('python -m grl_jax.gce_map: error: ')
    assert re.search(message, err), err
