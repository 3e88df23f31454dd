"""Parameters, FLOPs and training memory of NVAN, STE-NVAN and IAUnet from XLA's own analyses.

    python benchmarks/model_cost.py                      # everything (compiles only, runs nothing)
    python benchmarks/model_cost.py --models=nvan --skip_memory

* Parameters: trainable `params` of the published recipe (MARS: 625 identities), split into the
  ResNet trunk, the attention blocks (NL / IAU) and the head (BNNeck + classifier).
* FLOPs: `compiled.cost_analysis()['flops']` of the eval forward pass on ONE 8-frame 256x128 clip
  (XLA counts a multiply-add as 2 FLOPs), printed beside layer-by-layer hand counts in GMACs
  (`SPEC_GMACS`; GMACs x 2 = GFLOPs). The hand counts' non-local attention matmuls
  (θφᵀ and A·g) are given separately because thop-style counts leave them out. IAUnet is
  costed with seq_len = T = 8 (one 8-frame clip; its recipe uses two 4-frame clips, also shown).
  FLOPs are measured with un-chunked attention (`nl_query_chunk=0`): XLA's cost analysis counts
  the body of the chunk loop (`lax.map`) once, not once per chunk. Chunking changes memory, not
  arithmetic. `baseline` is the same trunk without non-local blocks (hand count: 32.4 GMACs).
* Memory: `compiled.memory_analysis()` of one jitted training step (forward + backward of the
  model and the BNNeck objective) at the recipe batch, P x K = 32 clips x T frames x 256 x 128,
  for NVAN with the whole 4096 x 4096 layer2 affinity materialised (`nl_query_chunk=0`) and
  with the query-chunked attention (`nl_query_chunk=1024`, the recipe). On the CPU backend the
  numbers are XLA's buffer assignment for CPU; accelerators assign differently (fusion,
  rematerialisation) but the attention buffers, which dominate the difference, are the same.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time


import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs.models import iaunet as iaunet_recipe  # noqa: E402
from configs.models import nvan as nvan_recipe  # noqa: E402
from grl_jax import models as registry  # noqa: E402

NUM_CLASSES = 625  # MARS training identities.

# Layer-by-layer hand counts, GMACs per 8-frame 256x128 clip; `thop*` are a user's thop counts
# from jackie840129/STE-NVAN issue #13, which leave out the attention matmuls.
SPEC_GMACS = {
    'nvan': dict(total=63.6, backbone=32.4, nl_convs=10.7, attention_matmuls=20.4,
                 thop_without_matmuls=43.479),
    'ste_nvan': dict(total=17.7, backbone=17.1, nl_convs=0.54, attention_matmuls=0.01,
                     thop_without_matmuls=17.879),
    'iaunet': dict(backbone=32.4, ciau_t8_per_block=18.3, ciau_t4_per_block=4.8),
    'baseline': dict(total=32.4, thop=32.694),
}
SPEC_PARAMS_M = {'nvan': 32.325, 'ste_nvan': 32.325, 'baseline': 24.966}  # thop, issue #13


def recipe_model_cfg(name: str, **over):
  module = iaunet_recipe if name == 'iaunet' else nvan_recipe
  cfg = dict(module.recipe(name).model)
  cfg.update(over)
  return cfg


def build(name: str, **over):
  cfg = recipe_model_cfg(name, **over)
  return registry.get(name).build(cfg, NUM_CLASSES), cfg


def param_counts(model, t: int) -> dict[str, int]:
  x = jax.ShapeDtypeStruct((1, t, 256, 128, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
  groups = {'trunk': 0, 'blocks': 0, 'head': 0}
  for path, leaf in jax.tree_util.tree_flatten_with_path(shapes['params'])[0]:
    top = path[0].key
    size = int(np.prod(leaf.shape))
    if top in ('conv1', 'bn1') or top.startswith('layer'):
      groups['trunk'] += size
    elif top.startswith('nl') or top.startswith('iau'):
      groups['blocks'] += size
    else:
      groups['head'] += size
  groups['total'] = sum(groups.values())
  return groups


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return dict(cost or {})


def eval_flops(model, b: int, t: int) -> float:
  x = jax.ShapeDtypeStruct((b, t, 256, 128, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
  fn = jax.jit(lambda v, x: model.apply(v, x, train=False)['descriptor'])
  return float(_cost(fn.lower(variables, x).compile()).get('flops', float('nan')))


def train_step_memory(name: str, model, b: int, t: int) -> dict:
  """XLA memory analysis of value_and_grad(model + BNNeck objective) at batch b x t frames."""
  x = jax.ShapeDtypeStruct((b, t, 256, 128, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
  loss_cfg = dict(nvan_recipe.recipe(name).loss if name != 'iaunet'
                  else iaunet_recipe.recipe(name).loss)
  objective = registry.get(name).objective(loss_cfg, NUM_CLASSES)
  pid = jax.ShapeDtypeStruct((b,), jnp.int32)

  def loss_fn(params, stats, frames, pid):
    out, new = model.apply({'params': params, 'batch_stats': stats}, frames, train=True,
                           mutable=['batch_stats'])
    loss, _ = objective.loss(out, {'pid': pid}, {})
    return loss, new

  step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  t0 = time.time()
  compiled = step.lower(variables['params'], variables['batch_stats'], x, pid).compile()
  mem = compiled.memory_analysis()
  out = {'compile_s': round(time.time() - t0, 1)}
  for field in ('temp_size_in_bytes', 'argument_size_in_bytes', 'output_size_in_bytes',
                'alias_size_in_bytes', 'generated_code_size_in_bytes', 'peak_memory_in_bytes'):
    if hasattr(mem, field):
      out[field] = int(getattr(mem, field))
  out['flops'] = float(_cost(compiled).get('flops', float('nan')))
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', default='baseline,nvan,ste_nvan,iaunet')
  parser.add_argument('--skip_memory', action='store_true')
  parser.add_argument('--skip_flops', action='store_true')
  parser.add_argument('--memory_batch', type=int, default=32, help='clips (P x K)')
  parser.add_argument('--json', default='', help='also write the results here')
  args = parser.parse_args(argv)
  results = {'date': datetime.date.today().isoformat(), 'machine': platform.machine(),
             'backend': jax.default_backend(), 'devices': str(jax.devices()),
             'jax': jax.__version__}
  print(f"# model_cost {results['date']} backend={results['backend']} jax={jax.__version__}")
  gflops = {}
  for name in args.models.split(','):
    t = 8
    if name == 'baseline':
      over = {'non_layers': (0, 0, 0, 0)}
    elif name == 'iaunet':
      over = {'seq_len': 8}
    else:
      over = {'nl_query_chunk': 0}
    model, _ = build('nvan' if name == 'baseline' else name, **over)
    r = {'params': param_counts(model, t)}
    p = r['params']
    print(f"\n## {name}\nparams: total {p['total'] / 1e6:.3f} M = trunk {p['trunk'] / 1e6:.3f} M"
          f" + blocks {p['blocks'] / 1e6:.3f} M + head {p['head'] / 1e6:.3f} M"
          + (f"  (spec/thop incl. head: {SPEC_PARAMS_M[name]} M)" if name in SPEC_PARAMS_M
             else ''))
    if not args.skip_flops:
      f = eval_flops(model, 1, t)
      gflops[name] = f / 1e9
      r['eval_gflops_per_8frame_clip'] = f / 1e9
      spec = SPEC_GMACS[name]
      print(f'XLA eval FLOPs, one 8-frame 256x128 clip: {f / 1e9:.2f} GFLOPs '
            f'= {f / 2e9:.2f} GMACs; spec: {spec}')
      if name == 'iaunet':
        model4, _ = build(name)
        f4 = eval_flops(model4, 2, 4)
        r['eval_gflops_2x4frame_clips'] = f4 / 1e9
        print(f'  recipe layout (two 4-frame clips, seq_len 4): {f4 / 1e9:.2f} GFLOPs '
              f'= {f4 / 2e9:.2f} GMACs')
    if not args.skip_memory:
      variants = [('recipe', {})]
      if name == 'nvan':
        variants = [('nl_query_chunk=0 (whole affinity)', {'nl_query_chunk': 0}),
                    ('nl_query_chunk=1024 (recipe)', {'nl_query_chunk': 1024})]
      elif name == 'baseline':
        variants = [('no non-local blocks', {'non_layers': (0, 0, 0, 0)})]
      tm = 4 if name == 'iaunet' else 8
      base_name = 'nvan' if name == 'baseline' else name
      for label, o in variants:
        m, _ = build(base_name, **o)
        mem = train_step_memory(base_name, m, args.memory_batch, tm)
        r[f'train_memory {label}'] = mem
        gib = lambda v: v / 2 ** 30  # noqa: E731
        print(f'train step memory, {args.memory_batch} clips x {tm} frames, {label}: temp '
              f"{gib(mem['temp_size_in_bytes']):.2f} GiB, args "
              f"{gib(mem['argument_size_in_bytes']):.2f} GiB, out "
              f"{gib(mem['output_size_in_bytes']):.2f} GiB"
              + f" (compile {mem['compile_s']} s)")
    results[name] = r
  if 'nvan' in gflops and 'ste_nvan' in gflops:
    print(f"\nSTE-NVAN / NVAN FLOPs ratio: {gflops['ste_nvan'] / gflops['nvan']:.3f} "
          '(spec: 17.7 / 63.6 = 0.28)')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(results, f, indent=1)


if __name__ == '__main__':
  main()
