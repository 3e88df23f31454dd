"""`--format=onnx`: an ONNX model (opset 23) through jax2onnx, checked with onnxruntime.

One `.onnx` file, weights inside as initializers; input `clips` uint8[B, T, H, W, 3], output
`descriptors` float32[B, D] (B is the symbolic 'b' with `--dynamic_batch`). A consumer needs
only onnxruntime and numpy:

    import onnxruntime as ort
    session = ort.InferenceSession('grl.onnx', providers=['CPUExecutionProvider'])
    descriptors, = session.run(['descriptors'], {'clips': clips_uint8})

How it converts: the serving function is traced to a jaxpr here, outside jax2onnx (whose
tracing patches flax.linen functions such as `nn.max_pool` with signatures our models do not
call them with), then rewritten (grl_jax/export/rewrite.py: the 4-axis max pool and reverse
scans jax2onnx does not lower runnably) and handed to jax2onnx as plain lax primitives. The
model metadata (`metadata_props`) records the model, step, descriptor distance and versions.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import pathlib
from typing import Callable

import jax
import numpy as np

from grl_jax import io
from grl_jax.export import rewrite
from grl_jax.export.serving import require

OPSET = 23
INPUT, OUTPUT = 'clips', 'descriptors'
# Chatty at WARNING: jax2onnx reports each optional plugin it skips, onnx_ir every value whose
# type it leaves to onnxruntime's inference.
_QUIET = ('jax2onnx', 'onnx_ir', 'onnxscript')


def export(serving, spec: jax.ShapeDtypeStruct, output: str, metadata: dict) -> dict:
  """Converts `serving.fn` at `spec` and writes the model to `output`."""
  jax2onnx = require('jax2onnx', '--format=onnx')
  require('onnx', '--format=onnx')
  closed = jax.make_jaxpr(serving.fn)(spec)
  flat = rewrite.rewritten(closed)
  with _quiet():
    _register_lax_plugins()
    model = jax2onnx.to_onnx(lambda clips: flat(clips)[0], [spec], model_name=serving.model,
                             opset=OPSET, input_names=[INPUT], output_names=[OUTPUT])
  for key, value in metadata.items():
    entry = model.metadata_props.add()
    entry.key, entry.value = str(key), str(value)
  io.write_bytes(output, model.SerializeToString())
  return {'opset': OPSET, 'jax2onnx': importlib.metadata.version('jax2onnx'),
          'size_bytes': model.ByteSize()}


def runtime_platform() -> str:
  """An ONNX model is platform-neutral; the check runs it with onnxruntime's CPU provider."""
  return 'cpu'


def loader(output: str) -> Callable[[np.ndarray], np.ndarray]:
  """The model as a numpy function, run by onnxruntime on CPU."""
  ort = require('onnxruntime', 'checking an ONNX export (skip with --nocheck)')
  options = ort.SessionOptions()
  options.log_severity_level = 3  # errors only: not every unused-initializer notice
  session = ort.InferenceSession(io.read_bytes(output), options,
                                 providers=['CPUExecutionProvider'])
  return lambda clips: session.run([OUTPUT], {INPUT: np.asarray(clips, np.uint8)})[0]


def _register_lax_plugins() -> None:
  """Registers only jax2onnx's plugins for JAX primitives (what a rewritten jaxpr holds).

  jax2onnx imports every module under `jax2onnx/plugins` on first use, including its flax,
  equinox and model-zoo examples: 12 s of a 2-core CPU for converters we never call. With the
  pinned jax2onnx its discovery has a done-flag; if a later version renames it, the full
  discovery simply runs.
  """
  try:
    from jax2onnx.plugins import plugin_system  # pylint: disable=g-import-not-at-top
    if plugin_system._already_imported_plugins:  # pylint: disable=protected-access
      return
    root = pathlib.Path(plugin_system.__file__).parent / 'jax'
    plugin_system._import_tree(root, 'jax2onnx.plugins.jax')  # pylint: disable=protected-access
    plugin_system._already_imported_plugins = True  # pylint: disable=protected-access
  except (ImportError, AttributeError):
    pass


@contextlib.contextmanager
def _quiet():
  loggers = [logging.getLogger(name) for name in _QUIET]
  levels = [lg.level for lg in loggers]
  for lg in loggers:
    lg.setLevel(logging.ERROR)
  try:
    yield
  finally:
    for lg, level in zip(loggers, levels):
      lg.setLevel(level)
