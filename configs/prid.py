"""PRID-2011 (the 200 identities seen by both cameras): 10 seeded 50/50 splits.

    python -m grl_jax.main --config=configs/prid.py:model=grl,split=0 --workdir=workdir/prid_grl

`get_config(arg)` arguments (comma-separated): model=grl|nvan|ste_nvan|iaunet (the published
recipe, configs/models/), accel=cpu|gpu|tpu (dtype / eval-batch preset), root=PATH (default
$GRL_JAX_DATA/PRID-2011, GRL_JAX_DATA defaults to ./data), runlocal (a 10-step smoke run),
split=0..9 (which split).

As for iLIDS-VID (the GRL release's PRID path is broken and uses 20 random 100/100 splits
instead): query = camera a, gallery = camera b, dense test features,
results averaged over the 10 splits.
"""
from __future__ import annotations

from configs import base
from grl_jax import schema


def get_config(arg: str | None = None):
  args = schema.parse_arg(arg, **base.DATASET_ARGS, split=0)
  config = base.get_config('prid', args.model)
  config.data.split_id = args.split
  config.data.protocol = 'torchreid'
  config.data.test_sampling = 'dense'
  config.train.eval_every_epochs = 20
  return base.finish_dataset_config(config, args)
