"""grl_jax.export: each format, reloaded in a process that imports only its runtime (jax /
onnxruntime / TensorFlow + numpy), gives the JAX extractor's descriptors; one-line errors.

Tiny checkpoints built as tests/test_inference.py builds its own (converted fake official
weights): GRL exported with a dynamic batch (called at batch 1 and 3), NVAN with a fixed batch
of 2 and attention chunks small enough that its `lax.map` path runs.
"""
import importlib
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grl_jax import convert, export, inference, models, schema
from grl_jax.export import cli as export_cli
from grl_jax.export import rewrite
from grl_jax.convert import nvan_official
from tests import helpers, np_reference
from tests.test_convert import MARS, converted_official_grl

T, H, W = 4, 32, 16
DATA = [f'--config.data.seq_len={T}', f'--config.data.height={H}', f'--config.data.width={W}']
BATCH = {'grl': 3, 'nvan': 2}
DYNAMIC = {'grl': True, 'nvan': False}
SUFFIX = {'stablehlo': '.shlo', 'onnx': '.onnx', 'savedmodel': ''}

# Run in a child process: `sys.argv[1]` = format, then (artifact, clips.npz, out.npz) triples.
# Each imports numpy and one runtime only; no grl_jax, flax or orbax may be loaded.
RELOAD = {
    'stablehlo': """
        from jax import export
        def load(path):
          with open(path, 'rb') as f:
            return export.deserialize(bytearray(f.read())).call
    """,
    'onnx': """
        import onnxruntime as ort
        def load(path):
          session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
          return lambda clips: session.run(['descriptors'], {'clips': clips})[0]
    """,
    'savedmodel': """
        import tensorflow as tf
        def load(path):
          serve = tf.saved_model.load(path).signatures['serving_default']
          return lambda clips: serve(clips=tf.constant(clips))['descriptors'].numpy()
    """,
}
MAIN = """
    import sys
    import numpy as np
    args = sys.argv[2:]
    for path, clips_file, out_file in zip(args[::3], args[1::3], args[2::3]):
      fn = load(path)
      clips = np.load(clips_file)
      np.savez(out_file, **{k: np.asarray(fn(clips[k])) for k in clips.files})
    leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('grl_jax', 'flax', 'orbax'))
    assert not leaked, leaked
"""


def _one_line_error(capsys, argv, match):
  line, _ = helpers.one_line_error_raised(capsys, lambda: export_cli.main(argv), 'export')
  assert match in line, line


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('export_ckpt')
  converted_official_grl(tmp, 'grl', *DATA)
  # NVAN: a randomised tiny model written out as an official checkpoint, then converted.
  cfg = {'name': 'nvan', 'stage_sizes': (1, 2, 3, 1), 'resnet_width': 4, 'nl_query_chunk': 16}
  model = models.get('nvan').build(cfg, 5)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, T, H, W, 3)),
                                              train=True))    # no eager init: seconds saved
  variables = np_reference.randomise(shapes, 3, scale=0.1)  # descriptors of order 1
  np.savez(tmp / 'nvan.npz', **nvan_official.to_official(variables))
  convert.main(['--format=nvan-official', f'--input={tmp / "nvan.npz"}',
                f'--output={tmp / "nvan"}', f'--config={MARS}:model=nvan', *DATA,
                '--config.model.nl_query_chunk=16'])
  return {name: str(tmp / name) for name in ('grl', 'nvan')}


@pytest.fixture(scope='module')
def exported(checkpoints, tmp_path_factory):
  """Every (model, format) artifact and what a child process reloading it returns.

  Each format's child starts as soon as its artifacts are written, so reloading overlaps the
  next format's export.
  """
  tmp = tmp_path_factory.mktemp('export_out')
  rng = np.random.default_rng(0)
  inputs, references = {}, {}
  for name, workdir in checkpoints.items():
    clips = rng.integers(0, 256, (BATCH[name], T, H, W, 3), dtype=np.uint8)
    # A dynamic batch is called at two other sizes than the one it was traced with.
    inputs[name] = {'b1': clips[:1], 'b3': clips} if DYNAMIC[name] else {'b2': clips}
    references[name] = inference.load(workdir).clip_features(clips)
    np.savez(tmp / f'{name}_clips.npz', **inputs[name])
  artifacts, procs = {}, {}
  for fmt in schema.EXPORT_FORMATS:
    artifacts[fmt], args = [], []
    for name, workdir in checkpoints.items():
      out = str(tmp / f'{name}_{fmt}{SUFFIX[fmt]}')
      info = export.export(workdir, fmt, BATCH[name], out, dynamic_batch=DYNAMIC[name],
                           check=False)
      artifacts[fmt].append((name, out, info))
      args += [out, str(tmp / f'{name}_clips.npz'), str(tmp / f'{name}_{fmt}_out.npz')]
    script = textwrap.dedent(RELOAD[fmt]) + textwrap.dedent(MAIN)
    procs[fmt] = subprocess.Popen([sys.executable, '-c', script, fmt, *args], cwd=tmp,
                                  env=helpers.subprocess_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
  results = {}
  for fmt, proc in procs.items():
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, f'{fmt} reload failed:\n{err[-3000:]}'
    results[fmt] = {name: dict(np.load(tmp / f'{name}_{fmt}_out.npz')) for name in checkpoints}
  return {'references': references, 'artifacts': artifacts, 'results': results}


@pytest.mark.parametrize('fmt', schema.EXPORT_FORMATS)
def test_reloaded_artifacts_give_the_jax_descriptors(exported, fmt):
  for name, ref in exported['references'].items():
    for key, got in exported['results'][fmt][name].items():
      assert got.dtype == np.float32, (fmt, name, key)
      want = ref[:len(got)]  # batch 1 is the first clip of the batch-3 reference
      assert got.shape == want.shape, (fmt, name, key, got.shape)
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f'{fmt} {name} {key}')
    assert np.abs(ref).max() > 0.05  # a real signal, not zeros matching zeros


def test_description_beside_the_artifact(exported):
  for fmt, items in exported['artifacts'].items():
    for name, out, info in items:
      with open(export.description_path(out)) as f:
        described = json.load(f)
      assert described == json.loads(json.dumps(info))
      b = 'b' if DYNAMIC[name] else BATCH[name]
      d = {'grl': 3 * 128, 'nvan': 128}[name]   # GRL: 3 x D at resnet_width 4 (D = 128)
      assert described['input']['shape'] == [b, T, H, W, 3], (fmt, name)
      assert described['output']['shape'] == [b, d] and described['model'] == name
      assert described['descriptor_distance'] == ('dot' if name == 'grl' else 'cosine')


def test_check_compares_with_the_extractor(checkpoints, tmp_path, capsys):
  info = export.export(checkpoints['nvan'], 'stablehlo', 2, str(tmp_path / 'n.shlo'))
  assert info['check']['batch'] == 2 and info['check']['relative_max_difference'] < 1e-5
  assert 'relative max difference' in capsys.readouterr().out
  from grl_jax.export import serving
  want = np.ones((2, 4), np.float32)
  assert serving.agreement(want + 1e-6, want, 1e-4) < 1e-5
  with pytest.raises(export.ExportError, match='disagrees'):
    serving.agreement(want + 1e-2, want, 1e-4)
  with pytest.raises(export.ExportError, match=r'float32\[2, 4\]'):
    serving.agreement(want[:1], want, 1e-4)


def test_user_mistakes_are_one_line_errors(checkpoints, tmp_path, capsys, monkeypatch):
  grl, out = checkpoints['grl'], str(tmp_path / 'a')
  base = [f'--workdir={grl}', f'--output={out}']
  _one_line_error(capsys, [*base, '--format=tflite', '--batch=2'],
                  "--format='tflite': expected one of ('stablehlo', 'onnx', 'savedmodel')")
  _one_line_error(capsys, [*base, '--format=onnx', '--batch=0'], '--batch=0: expected')
  _one_line_error(capsys, [*base, '--format=onnx', '--batch=two'], '--batch')
  _one_line_error(capsys, [f'--workdir={grl}', '--format=onnx', '--batch=1'], '--output')
  _one_line_error(capsys, [f'--workdir={tmp_path / "none"}', f'--output={out}',
                           '--format=stablehlo', '--batch=1'], 'no checkpoint directory at')
  _one_line_error(capsys, [*base, '--format=stablehlo', '--batch=1', '--step=7'],
                  'step 7 not in')
  (tmp_path / 'file').write_text('')
  _one_line_error(capsys, [f'--workdir={grl}', f'--output={tmp_path / "file" / "x.shlo"}',
                           '--format=stablehlo', '--batch=1'], 'cannot create its folder')
  _one_line_error(capsys, [*base, '--format=onnx', '--batch=1', '--platforms=cuda'],
                  '--platforms applies to')
  _one_line_error(capsys, [*base, '--format=stablehlo', '--batch=1', '--platforms=gpu'],
                  "--platforms='gpu': expected one of")
  _one_line_error(capsys, [*base, '--format=stablehlo', '--batch=1', '--dtype=float16'],
                  "--dtype='float16': expected one of")
  _one_line_error(capsys, [*base, '--format=onnx', '--batch=1', '--dtype=bfloat16'],
                  'onnxruntime cannot run on CPU; export with --dtype=float32')
  # A missing package is named with its pip command, before the checkpoint is even read.
  jax2onnx = importlib.import_module('jax2onnx')
  monkeypatch.setitem(sys.modules, 'jax2onnx', None)
  _one_line_error(capsys, [f'--workdir={tmp_path / "none"}', f'--output={out}',
                           '--format=onnx', '--batch=1'],
                  "--format=onnx needs the Python package 'jax2onnx'")
  monkeypatch.setitem(sys.modules, 'jax2onnx', jax2onnx)
  monkeypatch.setitem(sys.modules, 'onnxruntime', None)
  _one_line_error(capsys, [*base, '--format=onnx', '--batch=1'],
                  'pip install onnxruntime==')
  assert not os.path.exists(out)


def test_dtype_replaces_the_compute_dtype(checkpoints):
  serving = export.load(checkpoints['grl'], dtype='bfloat16')
  assert serving.extractor.model.dtype == jnp.bfloat16
  assert serving.extractor.config['model']['dtype'] == 'bfloat16'
  assert export.load(checkpoints['grl']).extractor.model.dtype == jnp.float32
  assert serving.descriptor_dim == 3 * 128


def test_python_m_export_prints_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'grl_jax.export', f'--workdir={tmp_path / "none"}',
       '--format=stablehlo', '--batch=1', f'--output={tmp_path / "x"}'], cwd=helpers.REPO,
      env=helpers.subprocess_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(
      f'export: error: no checkpoint directory at {tmp_path / "none"}')
  assert 'Traceback' not in proc.stderr


def test_rewrites_keep_the_function():
  """The max pool and reverse scan rewrites (grl_jax/export/rewrite.py) against the originals."""
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 7, 6, 3)).astype(np.float32))

  def f(v):
    pooled = jax.lax.reduce_window(v, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                   ((0, 0), (1, 1), (1, 1), (0, 0)))
    seq = pooled.reshape(2, -1, 3).transpose(1, 0, 2)       # scan over the 2nd axis
    carry, ys = jax.lax.scan(lambda c, s: (c * 0.5 + s, c + s.sum()), jnp.zeros((2, 3)),
                             seq, reverse=True)
    return carry, ys, jax.lax.map(jax.nn.relu, seq)

  closed = jax.make_jaxpr(f)(x)
  assert {'reduce_window_max', 'scan'} <= rewrite.primitive_names(closed)
  fn = rewrite.rewritten(closed)
  new = jax.make_jaxpr(lambda v: fn(v))(x)
  names = rewrite.primitive_names(new)
  assert 'reduce_window_max' not in names and 'pad' not in names
  scans = [e for e in new.jaxpr.eqns if e.primitive.name == 'scan']
  assert scans and not any(e.params['reverse'] for e in scans)
  for got, want in zip(jax.jit(fn)(x), f(x)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
