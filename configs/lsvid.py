"""LS-VID (3,772 ids, 14,943 tracklets, 15 cameras).

    python -m grl_jax.main --config=configs/lsvid.py:model=grl --workdir=workdir/lsvid_grl

`get_config(arg)` arguments (comma-separated): model=grl|nvan|ste_nvan|iaunet (the published
recipe, configs/models/), accel=cpu|gpu|tpu (dtype / eval-batch preset), root=PATH (default
$GRL_JAX_DATA/LS-VID, GRL_JAX_DATA defaults to ./data), runlocal (a 10-step smoke run).

GRL reports no LS-VID result; this runs its MARS recipe with the torchreid-style gallery.
"""
from __future__ import annotations

from configs import base
from grl_jax import schema


def get_config(arg: str | None = None):
  args = schema.parse_arg(arg, **base.DATASET_ARGS)
  config = base.get_config('lsvid', args.model)
  config.data.protocol = 'torchreid'
  return base.finish_dataset_config(config, args)
