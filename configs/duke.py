"""DukeMTMC-VideoReID (702 train ids, 702 queries, 2,636 gallery tracklets).

    python -m grl_jax.main --config=configs/duke.py:model=grl --workdir=workdir/duke_grl

`get_config(arg)` arguments (comma-separated): model=grl|nvan|ste_nvan|iaunet (the published
recipe, configs/models/), accel=cpu|gpu|tpu (dtype / eval-batch preset), root=PATH (default
$GRL_JAX_DATA/DukeMTMC-VideoReID, GRL_JAX_DATA defaults to ./data), runlocal (a 10-step smoke run).

GRL's code evaluates Duke with queries prepended to the gallery (as for MARS), i.e. `cas`;
the other models use the usual torchreid-style gallery.
"""
from __future__ import annotations

from configs import base
from grl_jax import schema

PROTOCOL = {'grl': 'cas', 'nvan': 'torchreid', 'ste_nvan': 'torchreid', 'iaunet': 'cas'}


def get_config(arg: str | None = None):
  args = schema.parse_arg(arg, **base.DATASET_ARGS)
  config = base.get_config('duke', args.model)
  config.data.protocol = PROTOCOL[args.model]
  return base.finish_dataset_config(config, args)
