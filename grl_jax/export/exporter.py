"""`export(...)`: checkpoint -> serving artifact (+ a JSON description beside it) -> check.

The steps, in the order that keeps user mistakes cheap: the arguments are validated, the
format's packages imported and the output's folder created before the checkpoint is read; the
checkpoint is restored (grl_jax/export/serving.py); the format module writes the artifact;
then, unless
`check=False`, the artifact is loaded back with its own runtime (jax.export / onnxruntime /
TensorFlow) and run on random uint8 clips next to `Extractor.clip_features`, and a relative
max difference above `tolerance` is an ExportError.
"""
from __future__ import annotations

from typing import Sequence

import jax

from grl_jax import io
from grl_jax import schema
from grl_jax.errors import ConfigError
from grl_jax.export import onnx_format, savedmodel, stablehlo
from grl_jax.export import serving as serving_lib
from grl_jax.export.serving import ExportError

# One module per schema.EXPORT_FORMATS name: export(...) -> info dict, loader(path) -> numpy
# function, runtime_platform() -> where that loader runs here.
MODULES = {'stablehlo': stablehlo, 'onnx': onnx_format, 'savedmodel': savedmodel}
# What each format imports to export and to check (grl_jax/export/serving.py PIP).
PACKAGES = {'stablehlo': ((), ()), 'onnx': (('jax2onnx', 'onnx'), ('onnxruntime',)),
            'savedmodel': (('tensorflow',), ())}
RUNTIME = {'stablehlo': 'jax.export', 'onnx': 'onnxruntime', 'savedmodel': 'TensorFlow'}
TOLERANCE = 1e-4


def export(workdir: str, fmt: str, batch: int, output: str, *, step: int | None = None,
           dynamic_batch: bool = False, platforms: Sequence[str] | None = None,
           dtype: str | None = None, check: bool = True, tolerance: float = TOLERANCE) -> dict:
  """Exports the checkpoint of `workdir` (latest step unless `step`) to `output`.

  Args:
    workdir: anything `grl_jax.inference.load` accepts (training workdir, convert output).
    fmt: one of schema.EXPORT_FORMATS.
    batch: clips per call (>= 1); with `dynamic_batch`, only the batch of the check.
    output: the file (stablehlo, onnx) or directory (savedmodel) to write; its description
      goes to `<output>.json`.
    platforms: stablehlo / savedmodel: lower for these (schema.EXPORT_PLATFORMS; default the
      platform JAX runs on here).
    dtype: compute dtype replacing the checkpoint's `config.model.dtype` (schema.DTYPES).
    check: run the artifact next to the JAX extractor on `batch` random clips.
  Returns:
    The description written to `<output>.json` (input / output specs, model, versions, check).
  """
  fmt, platforms = _validated(fmt, batch, output, platforms)
  if dtype is not None:
    schema.check_choice(dtype, schema.DTYPES, '--dtype')
  exporting, checking = PACKAGES[fmt]
  for module in exporting + (checking if check else ()):
    serving_lib.require(module, f'--format={fmt}' if module in exporting else
                        f'checking a --format={fmt} export (skip with --nocheck)')
  _writable(output)
  serving = serving_lib.load(workdir, step, dtype)
  compute = serving_lib.compute_dtype(serving.extractor)
  if fmt == 'onnx' and check and compute != 'float32':
    # Found by trying: onnxruntime's CPU kernels reject bfloat16 Einsum / Conv inputs.
    raise ConfigError(f'{workdir} computes in config.model.dtype={compute!r}, which '
                      'onnxruntime cannot run on CPU; export with --dtype=float32 (the variables '
                      'are float32), or --nocheck to keep bfloat16 for another ONNX runtime')
  spec = serving.input_spec(batch, dynamic_batch)
  b = 'b' if dynamic_batch else int(batch)
  info = {
      'format': fmt, 'model': serving.model, 'step': serving.step,
      'checkpoint': io.normalize(workdir),
      'input': {'name': 'clips', 'dtype': 'uint8', 'layout': 'B, T, H, W, C (RGB, 0-255)',
                'shape': [b, serving.seq_len, serving.height, serving.width, 3]},
      'output': {'name': 'descriptors', 'dtype': 'float32',
                 'shape': [b, serving.descriptor_dim]},
      'normalization': 'ImageNet mean/std, inside the artifact',
      'descriptor_distance': serving.descriptor_distance, 'compute_dtype': compute,
      'jax': jax.__version__,
  }
  module = MODULES[fmt]
  if fmt == 'onnx':
    meta = {k: info[k] for k in ('model', 'step', 'descriptor_distance', 'compute_dtype')}
    info.update(module.export(serving, spec, output, {**meta, 'jax': jax.__version__}))
  else:
    info.update(module.export(serving, spec, output, platforms))
  shape = ', '.join(map(str, info['input']['shape']))
  print(f'[export] {fmt}: {serving.model} step {serving.step}, clips uint8[{shape}] -> '
        f'float32[{b}, {serving.descriptor_dim}] -> {output}', flush=True)
  local = module.runtime_platform()
  if check and local not in info.get('platforms', (local,)):
    print(f'[export] check skipped: lowered for {info["platforms"]}, {RUNTIME[fmt]} runs on '
          f'{local} here', flush=True)
  elif check:
    clips = serving.sample_clips(batch)
    got = module.loader(output)(clips)
    error = serving_lib.agreement(got, serving.reference(clips), tolerance)
    info['check'] = {'batch': int(batch), 'runtime': RUNTIME[fmt],
                     'relative_max_difference': error}
    print(f'[export] check: {RUNTIME[fmt]} vs the JAX extractor on {batch} random clips: '
          f'relative max difference {error:.2g} (tolerance {tolerance:g})', flush=True)
  io.write_json(description_path(output), info)
  return info


def description_path(output: str) -> str:
  """`<output>.json`, beside the artifact (a directory for savedmodel)."""
  return output.rstrip('/') + '.json'


def _writable(output: str) -> None:
  parent = str(io.path(output).parent)
  try:
    io.makedirs(parent)
  except OSError as e:
    raise ExportError(f'--output={output}: cannot create its folder {parent} ({e})') from e


def _validated(fmt: str, batch: int, output: str, platforms) -> tuple[str, tuple | None]:
  schema.check_choice(fmt, schema.EXPORT_FORMATS, '--format')
  if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
    raise ConfigError(f'--batch={batch}: expected a whole number of clips per call >= 1')
  if not output:
    raise ConfigError('--output is required: the file (stablehlo, onnx) or directory '
                      '(savedmodel) to write')
  if not platforms:
    return fmt, None
  if fmt == 'onnx':
    raise ConfigError('--platforms applies to --format=stablehlo and savedmodel; an ONNX model '
                      'runs wherever onnxruntime does')
  for p in platforms:
    schema.check_choice(p, schema.EXPORT_PLATFORMS, '--platforms')
  return fmt, tuple(platforms)
