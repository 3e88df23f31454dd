"""GRL cost: parameter counts, XLA FLOPs per clip, compile times (by hand: 51.6 M, 116 GFLOP).

    python benchmarks/grl_cost.py                  # ResNet-50 GRL, 8 x 256 x 128 clips
    python benchmarks/grl_cost.py --width=8 --stages=1,1,1,1 --height=64 --width_px=32

Prints:
* parameters: CNN (backbone + gce + trl_* + corr_bn/uncorr_bn), the Siamese Q/K projections
  (inference) and the verifier (training only);
* FLOPs of the eval forward of one clip from XLA's cost analysis (`compiled.cost_analysis()`);
  XLA counts the body of a while loop once, so with the default `nn.scan` TRL the recurrence is
  counted for one step instead of T: use `--unrolled` for the true per-clip count;
* compile times of the eval forward (1 clip) and of a training forward + backward (B clips,
  a simple loss over every output, gradients w.r.t. all params, batch_stats updated).
Nothing is executed: variables and inputs are abstract (`jax.eval_shape`), only lowering and
compilation run, so this works on a small CPU machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from grl_jax.models import grl  # noqa: E402

CNN_PARTS = ('backbone', 'gce', 'trl_forward', 'trl_backward', 'corr_bn', 'uncorr_bn')


def count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def flops_of(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax returned one dict per computation
    cost = cost[0]
  return float(cost.get('flops', float('nan')))


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument('--width', type=int, default=64, help='resnet_width')
  ap.add_argument('--stages', default='3,4,6,3')
  ap.add_argument('--frames', type=int, default=8)
  ap.add_argument('--height', type=int, default=256)
  ap.add_argument('--width_px', type=int, default=128)
  ap.add_argument('--train_clips', type=int, default=2)
  ap.add_argument('--dtype', default='float32')
  ap.add_argument('--skip_train', action='store_true')
  ap.add_argument('--unrolled', action='store_true',
                  help='trl_scan=False; XLA counts a scan (while loop) body only once, so '
                       'the FLOPs of the TRL recurrence are only complete when unrolled')
  args = ap.parse_args(argv)

  cfg = {'stage_sizes': tuple(int(s) for s in args.stages.split(',')),
         'resnet_width': args.width, 'dtype': args.dtype, 'trl_scan': not args.unrolled}
  model = grl.build(cfg)
  clip = jax.ShapeDtypeStruct((1, args.frames, args.height, args.width_px, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), clip)
  p = variables['params']
  cnn = sum(count(p[k]) for k in CNN_PARTS)
  qk = sum(count(p['siamese'][k]) for k in ('query', 'key', 'query_bn', 'key_bn'))
  ver = sum(count(p['siamese'][k]) for k in ('verifier', 'verifier_bn'))
  print(f'devices: {jax.devices()}  jax {jax.__version__}')
  print(f'config: {cfg}, clip {args.frames}x{args.height}x{args.width_px}')
  print(f'params: CNN {cnn:,} | backbone {count(p["backbone"]):,} | gce {count(p["gce"]):,} | '
        f'trl {count(p["trl_forward"]) + count(p["trl_backward"]):,} | Siamese Q/K {qk:,} | '
        f'verifier {ver:,} | inference total {cnn + qk:,} | all {count(p):,}')

  t = time.time()
  fwd = jax.jit(lambda v, x: model.apply(v, x, train=False)['descriptor'])
  compiled = fwd.lower(variables, clip).compile()
  print(f'eval forward (1 clip): compile {time.time() - t:.1f}s, '
        f'XLA flops {flops_of(compiled) / 1e9:.1f} GFLOPs per clip')

  if args.skip_train:
    return
  batch = jax.ShapeDtypeStruct((args.train_clips, args.frames, args.height, args.width_px, 3),
                               jnp.float32)

  def loss_fn(params, batch_stats, x):
    out, upd = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                           mutable=['batch_stats'])
    loss = sum(jnp.mean(jnp.square(v.astype(jnp.float32))) for k, v in out.items()
               if k != 'pair_order')
    return loss, upd['batch_stats']

  step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  t = time.time()
  lowered = step.lower(variables['params'], variables['batch_stats'], batch)
  t_lower = time.time() - t
  compiled = lowered.compile()
  total = time.time() - t
  print(f'train forward+backward ({args.train_clips} clips): lower {t_lower:.1f}s, '
        f'compile total {total:.1f}s, XLA flops {flops_of(compiled) / 1e9:.1f} GFLOPs')


if __name__ == '__main__':
  main()
