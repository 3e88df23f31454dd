"""Throughput of the exported artifacts (grl_jax/export/) against the jitted JAX extractor.

    python benchmarks/export.py                                  # demo-size GRL, all formats
    python benchmarks/export.py --model=nvan --size=full --batch=4 --formats=stablehlo,onnx

A randomly initialised model (`--size=demo`: configs/demo.py, the reduced trunk at 64 x 32;
`full`: configs/mars.py, the published ResNet-50 recipe at 256 x 128) is written as a
variables-only checkpoint, exported in each format with `--batch` fixed (the check on), and
each runtime is timed on the same uint8 clips after one warm-up call: the JAX extractor
(`Extractor.clip_features`, jitted), the deserialized StableHLO (`jax.export`, compiled by the
same XLA), onnxruntime (CPU provider, default threads) and the TensorFlow SavedModel. Prints
clips/s per runtime and one JSON line. Everything runs on this machine's CPU.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import demo, mars  # noqa: E402
from grl_jax import checkpoint, export, models, schema  # noqa: E402
from grl_jax.export import exporter  # noqa: E402


def _checkpoint(model: str, size: str, directory: str) -> str:
  config = demo.get_config(f'model={model}') if size == 'demo' else mars.get_config(
      f'model={model}')
  d = config.data
  net = models.get(model).build(config.model, 8)
  shape = (2, int(d.seq_len), int(d.height), int(d.width), 3)
  variables = jax.jit(lambda k: net.init(k, jnp.zeros(shape), train=True))(
      jax.random.PRNGKey(0))
  variables = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
  checkpoint.write_variables(directory, variables, config, extra_meta={'num_classes': 8})
  return directory


def _rate(fn, clips, seconds: float) -> float:
  """Clips per second of `fn` after one warm-up call, over at least `seconds`."""
  np.asarray(fn(clips))
  calls, start = 0, time.perf_counter()
  while True:
    np.asarray(fn(clips))
    calls += 1
    elapsed = time.perf_counter() - start
    if elapsed >= seconds and calls >= 3:
      return calls * len(clips) / elapsed


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='grl', choices=sorted(models.names()))
  parser.add_argument('--size', default='demo', choices=['demo', 'full'])
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--formats', default=','.join(schema.EXPORT_FORMATS))
  parser.add_argument('--seconds', type=float, default=5.0, help='timing per runtime')
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    workdir = _checkpoint(args.model, args.size, os.path.join(tmp, 'ckpt'))
    serving = export.load(workdir)
    clips = serving.sample_clips(args.batch, seed=1)
    rates = {'jax_extractor': _rate(serving.reference, clips, args.seconds)}
    sizes = {}
    for fmt in args.formats.split(','):
      out = os.path.join(tmp, f'model.{fmt}')
      info = export.export(workdir, fmt, args.batch, out)
      sizes[fmt] = info.get('size_bytes')
      rates[fmt] = _rate(exporter.MODULES[fmt].loader(out), clips, args.seconds)
  shape = [args.batch, serving.seq_len, serving.height, serving.width, 3]
  print(f'{args.model} ({args.size}) clips uint8{shape} -> float32[{args.batch}, '
        f'{serving.descriptor_dim}], {os.cpu_count()} CPUs:')
  for name, rate in rates.items():
    print(f'  {name:14s} {rate:9.1f} clips/s')
  print(json.dumps({'benchmark': 'export', 'model': args.model, 'size': args.size,
                    'batch': args.batch, 'clips_per_s': rates, 'artifact_bytes': sizes,
                    'jax': jax.__version__, 'cpu': platform.processor() or platform.machine(),
                    'cpus': os.cpu_count(), 'date': datetime.date.today().isoformat()}))


if __name__ == '__main__':
  main()
