"""Converter: fake official / torchvision state dicts built from the official module structure."""
import os
import subprocess
import sys

import numpy as np
import pytest

from grl_jax import convert
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARS = os.path.join(REPO, 'configs', 'mars.py')

RNG = np.random.default_rng(0)
WIDTH, STAGES = 4, (2, 1, 1, 1)
D = 32 * WIDTH            # 128
G, C, A, R = 64, 16, 32, 8  # gce_hidden, corr_hidden, attention_dim at width 4; D / 16


def _bn(prefix, n):
  return {f'{prefix}.weight': RNG.uniform(0.5, 1.5, n), f'{prefix}.bias': RNG.normal(0, .1, n),
          f'{prefix}.running_mean': RNG.normal(0, .1, n),
          f'{prefix}.running_var': RNG.uniform(0.5, 1.5, n),
          f'{prefix}.num_batches_tracked': np.array(7, np.int64)}


def _w(*shape):
  return RNG.normal(0, 0.1, shape)


def torchvision_state(prefix=''):
  """Keys and shapes of torchvision's ResNet (Bottleneck) `state_dict()` at WIDTH / STAGES."""
  s = {f'{prefix}conv1.weight': _w(WIDTH, 3, 7, 7), **_bn(f'{prefix}bn1', WIDTH)}
  inplanes = WIDTH
  for i, n in enumerate(STAGES, start=1):
    planes = WIDTH * 2 ** (i - 1)
    for j in range(n):
      p = f'{prefix}layer{i}.{j}.'
      s[p + 'conv1.weight'] = _w(planes, inplanes, 1, 1)
      s.update(_bn(p + 'bn1', planes))
      s[p + 'conv2.weight'] = _w(planes, planes, 3, 3)
      s.update(_bn(p + 'bn2', planes))
      s[p + 'conv3.weight'] = _w(4 * planes, planes, 1, 1)
      s.update(_bn(p + 'bn3', 4 * planes))
      if j == 0:
        s[p + 'downsample.0.weight'] = _w(4 * planes, inplanes, 1, 1)
        s.update(_bn(p + 'downsample.1', 4 * planes))
      inplanes = 4 * planes
  return s


def official_state(first_commit=False):
  """(cnn, siamese) state dicts with the key structure of flysnowtiger/GRL's modules."""
  tv = torchvision_state()
  cnn = {}
  for k, v in tv.items():  # Backbone.base = Sequential(conv1, bn1, relu, maxpool, layer1..4)
    head, rest = k.split('.', 1)
    idx = {'conv1': 0, 'bn1': 1}.get(head) if head in ('conv1', 'bn1') else 3 + int(head[5:])
    cnn[f'backbone.base.{idx}.{rest}'] = v
  cnn.update({'backbone.glo_fc.0.weight': _w(G, D), 'backbone.glo_fc.0.bias': _w(G),
              **_bn('backbone.glo_fc.1', G),
              'backbone.corr_atte.0.weight': _w(G, D + G, 1, 1), **_bn('backbone.corr_atte.1', G),
              'backbone.corr_atte.2.weight': _w(C, G, 1, 1), **_bn('backbone.corr_atte.3', C),
              'backbone.corr_atte.5.weight': _w(1, C, 1, 1), **_bn('backbone.corr_atte.6', 1)})
  trl = 'temporal_reciprocal_learning' if first_commit else 'temporal_learning_block'
  for d in ('forward', 'backward'):
    atte = {'forward': 'channel_atte_forward_corr' if first_commit
            else 'channel_atte_foreward_corr', 'backward': 'channel_atte_backward_corr'}[d]
    u = f'{trl}.uncorr_memo_{d}.'
    cnn.update({u + 'conv1.weight': _w(D // 4, D, 1, 1), **_bn(u + 'bn1', D // 4),
                u + 'conv2.weight': _w(D // 4, D // 4, 1, 1), **_bn(u + 'bn2', D // 4),
                u + 'conv3.weight': _w(D, D // 4, 1, 1), **_bn(u + 'bn3', D),
                f'{trl}.{d}_f1.0.weight': _w(D, D, 1, 1), f'{trl}.{d}_f1.0.bias': _w(D),
                f'{trl}.{d}_f2.0.weight': _w(D, D, 1, 1), f'{trl}.{d}_f2.0.bias': _w(D),
                f'{trl}.{atte}.0.weight': _w(R, D), f'{trl}.{atte}.2.weight': _w(D, R)})
    if first_commit:
      cnn.update({u + 'se.fc.0.weight': _w(R, D), u + 'se.fc.2.weight': _w(D, R)})
  cnn.update({**_bn('corr_bn', D), **_bn('uncorr_bn', D)})
  cnn = {'module.' + k: v.astype(np.float32) for k, v in cnn.items()}
  siamese = {}
  for name in ('featQ', 'featK', 'featV'):
    siamese.update({f'{name}.weight': _w(A, D), f'{name}.bias': _w(A), **_bn(f'{name}_bn', A)})
  siamese.update({**_bn('classifierBN', D), 'classifierlinear.weight': _w(2, D),
                  'classifierlinear.bias': _w(2)})
  siamese = {k: v.astype(np.float32) for k, v in siamese.items()}
  return cnn, siamese


def converted_official_grl(tmp, name: str, *flags: str) -> str:
  """Writes `official_state()` as .npz files under `tmp` and converts them with
  `python -m grl_jax.convert --format=grl-official` (configs/mars.py GRL plus `flags`) to
  `tmp/name`; returns that checkpoint directory."""
  cnn, siamese = official_state()
  np.savez(tmp / 'cnn.npz', **cnn)
  np.savez(tmp / 'siamese.npz', **siamese)
  convert.main(['--format=grl-official', f'--input={tmp / "cnn.npz"}',
                f'--siamese={tmp / "siamese.npz"}', f'--output={tmp / name}',
                f'--config={MARS}:model=grl', *flags])
  return str(tmp / name)


def _model_cfg(cnn, siamese):
  return {'name': 'grl', **convert.infer_grl_official(convert.strip_data_parallel(cnn),
                                                      siamese)}


@pytest.mark.parametrize('first_commit', [False, True])
def test_official_round_trip(first_commit):
  cnn, siamese = official_state(first_commit)
  cfg = _model_cfg(cnn, siamese)
  assert cfg == {'name': 'grl', 'stage_sizes': STAGES, 'resnet_width': WIDTH,
                 'accumulation': 'se' if first_commit else 'plain', 'gce_hidden': 1024,
                 'corr_hidden': 256, 'attention_dim': 512, 'trl_reduction': 16}
  variables, ignored = convert.grl_official_variables(cnn, siamese, cfg)
  p, s = variables['params'], variables['batch_stats']
  # Spot checks of layouts and names, written from the official module structure.
  np.testing.assert_array_equal(p['backbone']['conv1']['kernel'],
                                cnn['module.backbone.base.0.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(s['backbone']['layer1_1']['bn3']['var'],
                                cnn['module.backbone.base.4.1.bn3.running_var'])
  np.testing.assert_array_equal(p['gce']['corr_conv3']['kernel'][0, 0],
                                cnn['module.backbone.corr_atte.5.weight'][:, :, 0, 0].T)
  np.testing.assert_array_equal(p['siamese']['query']['kernel'], siamese['featQ.weight'].T)
  np.testing.assert_array_equal(p['siamese']['verifier']['bias'],
                                siamese['classifierlinear.bias'])
  assert set(ignored) == {f'cnn:{k}' for k in cnn if k.endswith('num_batches_tracked')} | {
      f'siamese:{k}' for k in siamese if k.startswith('featV')
      or k.endswith('num_batches_tracked')}

  cnn2, siamese2 = convert.split_official(convert.export_state_dict(variables))
  expected_cnn = {k: v for k, v in cnn.items() if not k.endswith('num_batches_tracked')}
  expected_siamese = {k: v for k, v in siamese.items() if f'siamese:{k}' not in ignored}
  assert set(cnn2) == set(expected_cnn) and set(siamese2) == set(expected_siamese)
  for k in expected_cnn:
    np.testing.assert_array_equal(cnn2[k], expected_cnn[k], err_msg=k)
  for k in expected_siamese:
    np.testing.assert_array_equal(siamese2[k], expected_siamese[k], err_msg=k)


def test_missing_misshaped_and_unexpected_keys_are_named():
  cnn, siamese = official_state()
  cfg = _model_cfg(cnn, siamese)
  bad = dict(cnn)
  del bad['module.backbone.corr_atte.2.weight']
  with pytest.raises(convert.ConversionError,
                     match=r"missing key 'module.backbone.corr_atte.2.weight'.*\(16, 64, 1, 1\)"):
    convert.grl_official_variables(bad, siamese, cfg)
  bad = dict(cnn)
  bad['module.temporal_learning_block.forward_f1.0.bias'] = np.zeros(D + 1, np.float32)
  with pytest.raises(convert.ConversionError,
                     match=r"'module.temporal_learning_block.forward_f1.0.bias' has shape "
                           r"\(129,\), expected \(128,\)"):
    convert.grl_official_variables(bad, siamese, cfg)
  bad = {**siamese, 'featZ.weight': np.zeros(3, np.float32)}
  with pytest.raises(convert.ConversionError, match='featZ.weight'):
    convert.grl_official_variables(cnn, bad, cfg)


def test_torchvision_npz_without_torch(tmp_path):
  from grl_jax import checkpoint
  state = {k: v.astype(np.float32) if v.dtype != np.int64 else v
           for k, v in torchvision_state().items()}
  state.update({'fc.weight': _w(10, 4 * 8 * WIDTH).astype(np.float32),
                'fc.bias': _w(10).astype(np.float32)})
  np.savez(tmp_path / 'r50.npz', **state)
  out = tmp_path / 'ckpt'
  convert.main(['--format=torchvision-resnet50', f'--input={tmp_path / "r50.npz"}',
                f'--output={out}', f'--config={MARS}:model=grl',
                '--config.model.dtype=bfloat16'])
  assert 'torch' not in sys.modules
  variables, meta = checkpoint.restore_variables(str(out))
  model = meta['config']['model']
  assert model['name'] == 'grl' and model['resnet_width'] == WIDTH
  assert list(model['stage_sizes']) == list(STAGES) and model['dtype'] == 'bfloat16'
  assert 'resnet:fc.weight' in meta['source']['ignored_keys']
  bb = variables['params']['backbone']
  np.testing.assert_array_equal(np.asarray(bb['layer2_0']['downsample_conv']['kernel']),
                                state['layer2.0.downsample.0.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(np.asarray(variables['batch_stats']['backbone']['bn1']['mean']),
                                state['bn1.running_mean'])
  assert 'gce' in variables['params'] and 'siamese' in variables['params']  # fresh init


def test_grl_official_cli_with_npz_files(tmp_path, capsys):
  from grl_jax import checkpoint
  cnn, siamese = official_state(first_commit=True)
  np.savez(tmp_path / 'cnn.npz', **cnn)
  np.savez(tmp_path / 'siamese.npz', **siamese)
  convert.main(['--format=grl-official', f'--input={tmp_path / "cnn.npz"}',
                f'--siamese={tmp_path / "siamese.npz"}', f'--output={tmp_path / "out"}',
                f'--config={MARS}:model=grl'])
  variables, meta = checkpoint.restore_variables(str(tmp_path / 'out'))
  assert meta['config']['model']['accumulation'] == 'se'
  assert meta['config']['data']['test_sampling']  # a full config for inference
  exported = convert.export_state_dict(variables)
  key = 'module.temporal_reciprocal_learning.uncorr_memo_backward.se.fc.2.weight'
  np.testing.assert_array_equal(exported[key], cnn[key])
  # The step exists: a one-line error before any compute, the checkpoint is untouched.
  _one_line_error(capsys, ['--format=grl-official', f'--input={tmp_path / "cnn.npz"}',
                           f'--siamese={tmp_path / "siamese.npz"}',
                           f'--output={tmp_path / "out"}', f'--config={MARS}:model=grl'],
                  'step 0 is already written')


def test_unknown_override_and_format_errors(tmp_path):
  with pytest.raises(SystemExit):
    convert.main(['--format=nope', '--input=x', '--output=y'])
  cnn, siamese = official_state()
  np.savez(tmp_path / 'cnn.npz', **cnn)
  with pytest.raises(ValueError, match='--siamese'):
    convert.run(['--format=grl-official', f'--input={tmp_path / "cnn.npz"}',
                 f'--output={tmp_path / "o"}', f'--config={MARS}:model=grl'])


def test_format_table_keeps_every_format_name():
  assert set(convert.FORMATS) == {
      'torchvision-resnet50', 'torchvision-resnet50-nvan', 'torchvision-resnet50-ste-nvan',
      'torchvision-resnet50-iaunet', 'grl-official', 'nvan-official', 'ste-nvan-official'}
  assert {f.model for f in convert.FORMATS.values()} == {'grl', 'nvan', 'ste_nvan', 'iaunet'}
  assert issubclass(convert.ConversionError, ValueError)


def _one_line_error(capsys, argv, match):
  line, _ = helpers.one_line_error_raised(capsys, lambda: convert.main(argv), 'convert')
  assert match in line, line


def test_user_mistakes_are_one_line_errors(tmp_path, capsys):
  cnn, siamese = official_state()
  np.savez(tmp_path / 'cnn.npz', **cnn)
  np.savez(tmp_path / 'siamese.npz', **siamese)
  base = ['--format=grl-official', f'--input={tmp_path / "cnn.npz"}',
          f'--output={tmp_path / "o"}']
  grl = f'--config={MARS}:model=grl'
  _one_line_error(capsys, base + [grl], '--siamese')
  _one_line_error(capsys, base + [f'--siamese={tmp_path / "siamese.npz"}'], '--config')
  _one_line_error(capsys, base + [f'--siamese={tmp_path / "nope.npz"}', grl],
                  f'no such file: {tmp_path / "nope.npz"}')
  # The config names another model than the weights: both are named.
  _one_line_error(capsys, base + [f'--siamese={tmp_path / "siamese.npz"}',
                                  f'--config={MARS}:model=nvan'], "'grl' weights")
  _one_line_error(capsys, base + [f'--siamese={tmp_path / "siamese.npz"}',
                                  f'--config={MARS}:model=nvan'], "config.model.name='nvan'")
  # An explicit architecture override wins over the weights, so the shapes disagree.
  _one_line_error(capsys, base + [f'--siamese={tmp_path / "siamese.npz"}', grl,
                                  '--config.model.trl_reduction=8'],
                  "'module.temporal_learning_block.channel_atte_backward_corr.0.weight' has "
                  'shape (8, 128), expected (16, 128)')
  _one_line_error(capsys, ['--format=nope', '--input=x', '--output=y', grl], 'nope')
  _one_line_error(capsys, base + [grl, '--config.model.nope=1'], "'nope'")
  _one_line_error(capsys, base + [f'--config={tmp_path / "missing_config.py"}'],
                  'missing_config.py')
  _one_line_error(capsys, base + [f'--config={MARS}:model=foo'], "model='foo'")
  # A one-file format given --siamese.
  _one_line_error(capsys, ['--format=torchvision-resnet50', f'--input={tmp_path / "cnn.npz"}',
                           f'--siamese={tmp_path / "siamese.npz"}', f'--output={tmp_path}',
                           grl], '--format=torchvision-resnet50 reads one file')


def test_unreadable_sources_name_the_file(tmp_path):
  bad_npz = tmp_path / 'bad.npz'
  bad_npz.write_bytes(b'not a zip file')
  with pytest.raises(convert.ConversionError, match=f'{bad_npz}: not a readable .npz'):
    convert.load_state_dict(str(bad_npz))
  pickled = tmp_path / 'objects.npz'
  np.savez(pickled, a=np.array([{'x': 1}], dtype=object))
  with pytest.raises(convert.ConversionError, match=f'{pickled}: not a readable .npz'):
    convert.load_state_dict(str(pickled))
  junk = tmp_path / 'junk.pth'
  junk.write_bytes(b'\x80\x04not a checkpoint')
  try:
    import torch  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    with pytest.raises(convert.ConversionError, match=f'reading {junk} needs PyTorch'):
      convert.load_state_dict(str(junk))
  else:
    with pytest.raises(convert.ConversionError,
                       match=f'{junk}: refused: not loadable with weights_only=True'):
      convert.load_state_dict(str(junk))


def test_python_m_convert_prints_one_line(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.run(
      [sys.executable, '-m', 'grl_jax.convert', '--format=torchvision-resnet50',
       f'--input={tmp_path / "missing.pth"}', f'--output={tmp_path / "o"}',
       f'--config={MARS}:model=grl'], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 1, proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      f'convert: error: no such file: {tmp_path / "missing.pth"}')
  assert 'Traceback' not in proc.stderr
