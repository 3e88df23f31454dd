r"""Train-step benchmark: compile time, step time, throughput, memory, FLOPs and utilisation.

    python benchmarks/train_step.py --config=configs/demo.py [--steps=10] [--num_classes=625] \
        [--config.model.dtype=bfloat16 ...]
    python benchmarks/train_step.py --config=configs/mars.py:accel=gpu     # full-size GRL

It builds exactly the trainer's jitted step (`grl_jax.trainer.setup.build`) for the config and feeds
random uint8 clips in pair structure (no dataset needed), so it measures the model + objective +
optimiser step alone. FLOPs come from XLA's cost analysis of the compiled step; utilisation is
FLOP/s divided by the device's peak (table below; CPUs have no table entry, so only FLOP/s is
reported there). Peak memory: device `memory_stats()['peak_bytes_in_use']` on accelerators,
the process's peak RSS on CPU.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from grl_jax import checkpoint  # noqa: E402
from grl_jax import sharding  # noqa: E402
from grl_jax import schema  # noqa: E402
from grl_jax import validation  # noqa: E402
from grl_jax.trainer import setup as setup_lib  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps (after one warm-up step).')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 625, 'Training identities (OIM table rows).')
_JSON = flags.DEFINE_string('json', None, 'Also append the result as a JSON line to this file.')
_UNROLLED_FLOPS = flags.DEFINE_bool(
    'unrolled_flops', True,
    'XLA counts a while-loop body once, so a scanned recurrence (GRL: config.model.trl_scan)'
    ' is under-counted T-fold; count FLOPs on an unrolled compile of the same step instead.')

# Dense peak FLOP/s per device from vendor data sheets (no sparsity). 'float32' is what XLA runs
# fp32 matmuls/convs with by default: TF32 tensor cores on A100/H100/H200 (JAX's default matmul
# precision), plain fp32 on V100/L4; TPUs run fp32 matmuls as bf16 passes at default precision.
PEAK_FLOPS = {
    'H100': {'bfloat16': 989e12, 'float32': 494e12},      # SXM5
    'H200': {'bfloat16': 989e12, 'float32': 494e12},
    'A100': {'bfloat16': 312e12, 'float32': 156e12},
    'V100': {'bfloat16': 125e12, 'float32': 15.7e12},     # fp16 tensor cores for 'bfloat16'
    'L4': {'bfloat16': 121e12, 'float32': 60e12},
    'TPU v4': {'bfloat16': 275e12, 'float32': 275e12},
    'TPU v5 lite': {'bfloat16': 197e12, 'float32': 197e12},
    'TPU v5e': {'bfloat16': 197e12, 'float32': 197e12},
    'TPU v5p': {'bfloat16': 459e12, 'float32': 459e12},
    'TPU v6': {'bfloat16': 918e12, 'float32': 918e12},
}


def peak_flops(device_kind: str, dtype: str):
  for key, table in PEAK_FLOPS.items():
    if key.lower() in device_kind.lower():
      return table.get(dtype)
  return None


def _cost_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get('flops', float('nan')))


def _peak_memory_bytes() -> tuple[float, str]:
  dev = jax.local_devices()[0]
  stats = dev.memory_stats() if hasattr(dev, 'memory_stats') else None
  if stats and 'peak_bytes_in_use' in stats:
    return float(stats['peak_bytes_in_use']), 'device peak'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0, 'host peak RSS'


def random_batch(config, batch_size: int, num_classes: int, seed: int = 0) -> dict:
  """uint8 clips in pair structure: rows (2k, 2k+1) share an identity."""
  d = config.data
  rng = np.random.default_rng(seed)
  frames = rng.integers(0, 256, (batch_size, int(d.seq_len), int(d.height), int(d.width), 3),
                        dtype=np.uint8)
  pid = np.repeat(rng.choice(num_classes, batch_size // 2, replace=False), 2).astype(np.int32)
  camid = np.tile(np.array([0, 1], np.int32), batch_size // 2)
  return {'frames': frames, 'pid': pid, 'camid': camid,
          'tracklet': np.arange(batch_size, dtype=np.int32)}


def run(config, steps: int, num_classes: int) -> dict:
  t0 = time.perf_counter()
  setup = setup_lib.build(config, num_classes=num_classes, steps_per_epoch=1000)
  state = setup.init_state(int(config.seed))
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0
  b = schema.global_batch_size(config, schema.mesh_devices(config, jax.device_count()))
  batch = sharding.to_global(random_batch(config, b // jax.process_count(), num_classes),
                             setup.mesh)
  t0 = time.perf_counter()
  compiled = setup.train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  flops = _cost_flops(compiled)
  flops_source = 'compiled step'
  if _UNROLLED_FLOPS.value and config.model.get('trl_scan', False):
    unrolled = config.copy_and_resolve_references()
    with unrolled.unlocked():
      unrolled.model.trl_scan = False
    u = setup_lib.build(unrolled, num_classes=num_classes, steps_per_epoch=1000)
    abstract = checkpoint.abstract_tree(u.abstract_state, sharding.replicated(u.mesh))
    flops = _cost_flops(u.train_step.lower(abstract, batch).compile())
    flops_source = 'unrolled step (trl_scan=False)'
  state, metrics = compiled(state, batch)          # warm-up
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))
  mem, mem_kind = _peak_memory_bytes()
  dev = jax.devices()[0]
  dtype = str(config.model.get('dtype', 'float32'))
  n_dev = len(setup.mesh.devices.flat)
  peak = peak_flops(dev.device_kind, dtype)
  achieved = flops / step_s if flops == flops else float('nan')
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  d = config.data
  return {
      'model': config.model.name, 'dtype': dtype, 'params': n_params,
      'batch': f'{b}x{d.seq_len}x{d.height}x{d.width}', 'devices': n_dev,
      'device_kind': dev.device_kind, 'platform': dev.platform,
      'init_s': round(init_s, 2), 'compile_s': round(compile_s, 2),
      'step_s_median': round(step_s, 4), 'step_s_min': round(min(times), 4),
      'clips_per_s': round(b / step_s, 2), 'frames_per_s': round(b * int(d.seq_len) / step_s, 1),
      'peak_memory_gib': round(mem / 2**30, 2), 'memory_kind': mem_kind,
      'flops_per_step': flops, 'flops_source': flops_source,
      'gflops_per_s': round(achieved / 1e9, 2),
      'utilisation': (round(achieved / (peak * n_dev), 4) if peak else None),
      'peak_tflops_per_device': (peak / 1e12 if peak else None),
      'loss': float(metrics['loss']),
      'host': f'{platform.node()} ({os.cpu_count()} cpus)',
      'date': time.strftime('%Y-%m-%d'),
  }


def main(argv):
  del argv
  config = _CONFIG.value
  validation.validate(config, device_count=jax.device_count(),
                       process_count=jax.process_count(), check_data=False)
  r = run(config, _STEPS.value, _NUM_CLASSES.value)
  width = max(len(k) for k in r)
  for k, v in r.items():
    print(f'{k:<{width}}  {v}')
  if _JSON.value:
    with open(_JSON.value, 'a') as f:
      f.write(json.dumps(r) + '\n')


if __name__ == '__main__':
  app.run(main)
