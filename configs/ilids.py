"""iLIDS-VID (300 ids, 2 cameras): 10 train/test splits of 150/150 identities.

    python -m grl_jax.main --config=configs/ilids.py:model=grl,split=0 --workdir=workdir/ilids_grl

`get_config(arg)` arguments (comma-separated): model=grl|nvan|ste_nvan|iaunet (the published
recipe, configs/models/), accel=cpu|gpu|tpu (dtype / eval-batch preset), root=PATH (default
$GRL_JAX_DATA/iLIDS-VID, GRL_JAX_DATA defaults to ./data), runlocal (a 10-step smoke run),
split=0..9 (which split).

The GRL release cannot train iLIDS-VID (its iLIDS/PRID path crashes on the first batch and
evaluates 8-frame windows, not tracklets); this follows the standard protocol it intended:
query = camera 1, gallery = camera 2, one feature per tracklet (all frames, `dense`), GRL's
consecutive-window training sampling replaced by RRS like MARS. Published numbers average the
10 splits: run split=0..9 and average.
"""
from __future__ import annotations

from configs import base
from grl_jax import schema


def get_config(arg: str | None = None):
  args = schema.parse_arg(arg, **base.DATASET_ARGS, split=0)
  config = base.get_config('ilids', args.model)
  config.data.split_id = args.split
  config.data.protocol = 'torchreid'
  config.data.test_sampling = 'dense'
  # 150 ids x 2 cameras = 300 tracklets: 37 steps per epoch; evaluate less often.
  config.train.eval_every_epochs = 20
  return base.finish_dataset_config(config, args)
