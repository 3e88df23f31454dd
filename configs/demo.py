"""The embedded demo: GRL on a synthetic MARS-format dataset, trained on a laptop CPU.

    python -m grl_jax.main --config=configs/demo.py --workdir=workdir/demo

What it does: generates the synthetic dataset (data_pipeline/synthetic/) into
`<workdir>/data` if it is not there, evaluates the untrained model, trains a reduced GRL, evaluates
again (CMC / mAP table, untrained -> trained summary) and writes a ranked-list picture
`<workdir>/ranked_list_step<N>.png` (and, for GRL, the GCE correlation maps
`<workdir>/gce_map_step<N>.png`).

The model is the full GRL architecture (ResNet trunk + GCE + bi-directional TRL + heads +
attention pooling + verifier, same losses and optimiser) made small: one bottleneck per ResNet
stage, width 8 instead of 64 (D = 256 instead of 2048), 64 x 32 frames instead of 256 x 128
and no ImageNet initialisation. Since it trains from scratch, its learning rate is higher than
the published recipe's (which fine-tunes ImageNet weights).

`get_config(arg)` arguments: model=grl|nvan|ste_nvan|iaunet (default grl), ids=N training
identities (default 48), steps=N (default from the schedule below), accel=cpu|gpu|tpu,
protocols=official+torchreid+cas (report those protocols side by side, configs/base.py).

The baselines use the same reduced trunk and synthetic data with their own recipe's objective,
P x K sampler (4 x 4 here) and evaluation protocol (official MARS for NVAN / STE-NVAN, CAS for
IAUnet); their non-local / stripe settings shrink with the trunk (non-local blocks after one
bottleneck of layer2 and layer3, 4 stripes), IAUnet tests on dense 4-frame clips as its recipe,
and they train with Adam 1e-3 for 25 epochs since they start from scratch.
"""
from __future__ import annotations

from configs import base
from grl_jax import schema


def get_config(arg: str | None = None):
  args = schema.parse_arg(arg, model='grl', ids=48, test_ids=32, steps=-1, accel='cpu',
                         protocols='')
  config = base.get_config('mars', args.model)
  config.data.root = ''                      # '' + synthetic: <workdir>/data
  if args.model == 'grl':
    config.data.protocol = 'cas'             # GRL's MARS protocol (queries in the gallery)
  config.data.synthetic.enabled = True
  config.data.synthetic.num_train_ids = args.ids
  config.data.synthetic.num_test_ids = args.test_ids
  config.data.synthetic.height = 64          # rendered at the training resolution: no resize
  config.data.synthetic.width = 32
  config.data.height, config.data.width = 64, 32

  config.model.stage_sizes = (1, 1, 1, 1)
  config.model.resnet_width = 8              # D = 256; loss.feature_dim follows

  if args.model == 'grl':
    config.data.seq_len = 8
    config.optim.lr = 0.01                   # 0.03 makes the x20 verification loss diverge
    config.optim.epochs = 12                 # 48 ids: 37 steps per epoch, 444 steps
    # No step decay: the small model trained from scratch is still improving at the end (a x0.1
    # step at epoch 10 cost about 5 points of mAP).
    config.optim.decay_epochs = ()
  else:
    config.data.p, config.data.k = 4, 4      # 48 ids: 12 steps per epoch, 300 steps
    if args.model == 'iaunet':
      config.data.test_sampling = 'dense'
    else:
      config.model.non_layers = (0, 1, 1, 0)
      config.model.stripes = 4
    config.optim.lr = 1e-3
    config.optim.epochs = 25
    config.optim.decay_epochs = (18,)
  config.train.global_batch_size = 16
  config.train.num_steps = args.steps
  config.train.log_every_steps = 10
  config.train.eval_every_epochs = 4         # + the untrained model (step 0); ~1 s each
  config.train.eval_at_start = True
  config.train.checkpoint_every_steps = 100
  config.eval.batch_size = 16
  base.apply_accel(config, args.accel)
  if args.protocols:
    base.set_protocols(config, args.protocols)
  config.lock()
  return config
