"""Untrusted files: a pickle whose `__reduce__` would run a shell command, planted in a .pth
(legacy and zip layouts) and in .npz files (a weights file for the converter, a gallery for
`--mode=search`), is refused with a one-line message naming the file, and its payload never
runs (the marker file it would create never appears). With PyTorch installed the refusal is
`torch.load(weights_only=True)`'s; without it, the converter asks for PyTorch before reading
anything. A source scan keeps every `torch.load` on `weights_only=True`, every `np.load` off
`allow_pickle=True`, and `pickle` out of the library.
"""
from __future__ import annotations

import ast
import os
import pathlib
import pickle
import zipfile

import numpy as np
import pytest

from grl_jax import convert
from grl_jax import search
from grl_jax.errors import DatasetError

pytestmark = pytest.mark.faults

REPO = pathlib.Path(__file__).resolve().parents[2]
SCANNED = ('grl_jax', 'data_pipeline', 'configs', 'benchmarks', 'launch')
FORMAT = 'torchvision-resnet50'


class _Payload:
  """Unpickling this runs `touch <marker>`."""

  def __init__(self, marker: str):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


def _evil_pickle(marker) -> bytes:
  return pickle.dumps({'conv1.weight': _Payload(str(marker))}, protocol=2)


def _legacy_pth(path, marker):
  path.write_bytes(_evil_pickle(marker))
  return str(path)


def _zip_pth(path, marker):
  """The layout torch.save writes (a zip of <name>/data.pkl, version, byteorder)."""
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('evil/data.pkl', _evil_pickle(marker))
    z.writestr('evil/version', '3\n')
    z.writestr('evil/byteorder', 'little')
  return str(path)


def _evil_npz(path, marker, key='conv1.weight'):
  np.savez(path, **{key: np.array([_Payload(str(marker))], dtype=object)})
  return str(path)


def test_the_payload_does_run_when_unpickled(tmp_path):
  # The control: these files really are malicious, so the refusals below mean something.
  marker = tmp_path / 'ran'
  pickle.loads(_evil_pickle(marker))  # noqa: S301
  assert marker.exists()
  marker.unlink()
  with np.load(_evil_npz(tmp_path / 'x.npz', marker), allow_pickle=True) as z:
    z['conv1.weight']
  assert marker.exists()


@pytest.mark.parametrize('layout', [_legacy_pth, _zip_pth], ids=['legacy', 'zip'])
def test_malicious_pth_is_refused_and_never_runs(tmp_path, capsys, layout):
  marker = tmp_path / 'ran'
  path = layout(tmp_path / 'evil.pth', marker)
  try:
    import torch  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import
    expected = f'{path}: refused: not loadable with weights_only=True'
  except ImportError:
    expected = f'reading {path} needs PyTorch'
  with pytest.raises(convert.ConversionError, match=expected):
    convert.load_state_dict(path)
  # The command line: one line, exit status 1.
  with pytest.raises(SystemExit) as e:
    convert.main([f'--format={FORMAT}', f'--input={path}', f'--output={tmp_path / "out"}',
                  f'--config={REPO / "configs" / "mars.py"}:model=grl'])
  assert e.value.code == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(f'convert: error: {expected}'), err
  assert not marker.exists()
  assert not (tmp_path / 'out').exists()


def test_malicious_pth_under_torch_is_refused_by_weights_only(tmp_path):
  pytest.importorskip('torch')
  marker = tmp_path / 'ran'
  for layout in (_legacy_pth, _zip_pth):
    path = layout(tmp_path / f'{layout.__name__}.pth', marker)
    with pytest.raises(convert.ConversionError, match='refused: not loadable with weights_only'):
      convert.load_state_dict(path)
  assert not marker.exists()


def test_malicious_npz_is_refused_and_never_runs(tmp_path):
  marker = tmp_path / 'ran'
  weights = _evil_npz(tmp_path / 'weights.npz', marker)
  with pytest.raises(convert.ConversionError, match=f'{weights}: not a readable .npz'):
    convert.load_state_dict(weights)
  gallery = _evil_npz(tmp_path / 'gallery.npz', marker, key='features')
  with pytest.raises(DatasetError, match='is not an .npz'):
    search.load_gallery(gallery)
  assert not marker.exists()


def _calls(tree: ast.AST):
  for node in ast.walk(tree):
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
      owner = node.func.value
      name = owner.id if isinstance(owner, ast.Name) else getattr(owner, 'attr', '')
      yield f'{name}.{node.func.attr}', {k.arg: k.value for k in node.keywords}


def test_library_unpickles_nothing_beyond_weights_only():
  bad = []
  for path in sorted(p for folder in SCANNED for p in (REPO / folder).rglob('*.py')):
    tree = ast.parse(path.read_text(), filename=str(path))
    where = str(path.relative_to(REPO))
    for node in ast.walk(tree):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        names = [a.name for a in node.names] + [getattr(node, 'module', None) or '']
        if any(n in ('pickle', 'cPickle', 'dill', 'cloudpickle') for n in names):
          bad.append(f'{where}:{node.lineno} imports a pickle module')
    for call, kwargs in _calls(tree):
      if call == 'torch.load':
        flag = kwargs.get('weights_only')
        if not (isinstance(flag, ast.Constant) and flag.value is True):
          bad.append(f'{where}: torch.load without weights_only=True')
      if call in ('np.load', 'numpy.load'):
        flag = kwargs.get('allow_pickle')
        if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
          bad.append(f'{where}: np.load with allow_pickle other than False')
  assert not bad, bad
  # The scan sees the calls it polices (a renamed import would otherwise pass silently).
  found = {call for p in (REPO / 'grl_jax').rglob('*.py')
           for call, _ in _calls(ast.parse(p.read_text()))}
  assert {'torch.load', 'np.load'} <= found
