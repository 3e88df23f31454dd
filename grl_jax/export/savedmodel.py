"""`--format=savedmodel`: a TensorFlow SavedModel through `jax.experimental.jax2tf`.

A directory with one signature, `serving_default(clips uint8[B, T, H, W, 3]) ->
{'descriptors': float32[B, D]}` (B is None with `--dynamic_batch`); the serving function is
embedded as StableHLO in an `XlaCallModule` op (jax2tf native serialization) with the
variables as constants, so a consumer needs only TensorFlow (TF Serving, or):

    import tensorflow as tf
    serve = tf.saved_model.load('grl_savedmodel').signatures['serving_default']
    descriptors = serve(clips=tf.constant(clips_uint8))['descriptors'].numpy()

The embedded StableHLO has the same compatibility window as `--format=stablehlo` (see
grl_jax/export/__init__.py), counted against the TensorFlow build that loads it.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np

from grl_jax.export.serving import require

INPUT, OUTPUT = 'clips', 'descriptors'


def export(serving, spec: jax.ShapeDtypeStruct, output: str,
           platforms: Sequence[str] | None = None) -> dict:
  """Writes the SavedModel of `serving.fn` at `spec` to the directory `output`."""
  tf = require('tensorflow', '--format=savedmodel')
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  dynamic = not isinstance(spec.shape[0], int)
  _, t, h, w, c = spec.shape
  options = {'native_serialization_platforms': tuple(platforms)} if platforms else {}
  converted = jax2tf.convert(serving.fn, with_gradient=False,
                             polymorphic_shapes=[f'(b, {t}, {h}, {w}, {c})'] if dynamic else None,
                             **options)
  signature = tf.TensorSpec([None if dynamic else spec.shape[0], t, h, w, c], tf.uint8,
                            name=INPUT)
  module = tf.Module()
  module.serve = tf.function(lambda clips: {OUTPUT: converted(clips)}, autograph=False,
                             input_signature=[signature])
  tf.saved_model.save(module, output, signatures={'serving_default': module.serve})
  return {'platforms': list(platforms or (jax.export.default_export_platform(),)),
          'tensorflow': tf.__version__}


def runtime_platform() -> str:
  """The platform TensorFlow runs the embedded StableHLO on here ('cuda' with a TF GPU)."""
  tf = require('tensorflow', '--format=savedmodel')
  return 'cuda' if tf.config.list_physical_devices('GPU') else 'cpu'


def loader(output: str) -> Callable[[np.ndarray], np.ndarray]:
  """The SavedModel's serving signature as a numpy function."""
  tf = require('tensorflow', '--format=savedmodel')
  serve = tf.saved_model.load(output).signatures['serving_default']
  return lambda clips: serve(**{INPUT: tf.constant(np.asarray(clips, np.uint8))})[OUTPUT].numpy()
