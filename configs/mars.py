"""MARS (1,261 ids, 20,478 tracklets, 6 cameras): the GRL / NVAN / IAUnet MARS recipes.

    python -m grl_jax.main --config=configs/mars.py:model=grl,accel=gpu --workdir=workdir/mars_grl

`get_config(arg)` arguments (comma-separated): model=grl|nvan|ste_nvan|iaunet (the published
recipe, configs/models/), accel=cpu|gpu|tpu (dtype / eval-batch preset), root=PATH (default
$GRL_JAX_DATA/MARS, GRL_JAX_DATA defaults to ./data), runlocal (a 10-step smoke run).

Gallery protocol per model (protocols: grl_jax/evaluation/__init__.py): GRL's code prepends the
1,980 queries to the 9,330-tracklet gallery with step AP, i.e. the `cas` composition; STE-NVAN uses
the official MATLAB protocol (`official`); the IAUnet family appends queries (`cas`). Override
with --config.data.protocol=torchreid to compare with torchreid-style papers.
"""
from __future__ import annotations

from configs import base
from grl_jax import schema

# The gallery protocol each model's released code evaluates MARS with.
PROTOCOL = {'grl': 'cas', 'nvan': 'official', 'ste_nvan': 'official', 'iaunet': 'cas'}


def get_config(arg: str | None = None):
  args = schema.parse_arg(arg, **base.DATASET_ARGS)
  config = base.get_config('mars', args.model)
  config.data.protocol = PROTOCOL[args.model]
  return base.finish_dataset_config(config, args)
