"""The embedded demo: GRL on a synthetic MARS-format dataset, trained on a laptop CPU.

    python -m grl_jax.main --config=configs/demo.py --workdir=workdir/demo

What it does: generates the synthetic dataset (data_pipeline/synthetic/) into
`<workdir>/data` if it is not there, evaluates the untrained model, trains a reduced GRL, evaluates
again (CMC / mAP table, untrained -> trained summary) and writes a ranked-list picture
`<workdir>/ranked_list_step<N>.png` (and, for GRL, the GCE correlation maps
`<workdir>/gce_map_step<N>.png`).

The model is the full GRL architecture (ResNet trunk + GCE + bi-directional TRL + heads +
attention pooling + verifier, same five losses with the published weights) made small: one
bottleneck per ResNet stage, width 8 instead of 64 (D = 256 instead of 2048), 64 x 32 frames
instead of 256 x 128 and no ImageNet initialisation.

The GRL demo recipe, and why (benchmarks/RESULTS.md, "Demo over seeds", has the measurements;
`python -m benchmarks.demo_seeds` re-derives the figure's mean +- spread):
* 128 training identities (755 tracklets), not 48: with 48 the small model fits the training
  ids (train accuracy 0.75) while test mAP stalls near 25-30%: it lacked data, not steps. More
  identities was the largest single gain (+17 points of mAP at the same ~900 steps).
* 64 test identities (184 queries), not 32 (85): a query is 0.5 point of R1 instead of 1.2,
  so seed-to-seed differences are less dominated by which few queries flip.
* Adam, lr 2e-3, instead of SGD lr 0.01: with SGD the x20 verification loss and the OIM terms
  (scale 30 over a lookup table that lags the fast-moving features) made the early loss climb
  from 26 to 140 before it fell, and the end result moved by ~16 points of mAP with float
  summation order alone. Adam normalises the per-parameter step, so the early spike stays small.
  At lr 1e-3 the small model still underfits after 940 steps (training accuracy 0.44, mAP
  44.6% +- 3.8 over seeds 0-2); 2e-3 gave 54.8% +- 2.7 on the same seeds (weight decay 0 or an
  OIM scale of 15 instead gained less on seed 0).
* Linear warm-up over half an epoch (47 steps): the first Adam steps are full size while the
  OIM tables are still zero / one-sample estimates; the warm-up keeps those steps small.
* 12 epochs (1128 steps) with lr x0.1 at the start of epoch 9: without a decay the
  from-scratch model is still noisy at the end; the low-lr phase adds ~8 points of mAP. 10
  epochs with the decay at 8 gave 54.8% +- 2.7 (scanned TRL) and 56.9% +- 4.3 over scanned and
  unrolled; the two more epochs (~30 s here) raise the mean and narrow the spread.
The OIM scale (30), loss weights and the model are the published recipe's.

`get_config(arg)` arguments: model=grl|nvan|ste_nvan|iaunet (default grl), ids=N training
identities and test_ids=N test identities (0 = the demo default, 128 / 64), steps=N (default from the schedule), accel=cpu|gpu|tpu,
protocols=official+torchreid+cas (report those protocols side by side, configs/base.py).

The baselines use the same reduced trunk and synthetic generator with their own recipe's
objective, P x K sampler (4 x 4 here) and evaluation protocol (official MARS for NVAN / STE-NVAN,
CAS for IAUnet); their non-local / stripe settings shrink with the trunk (non-local blocks after
one bottleneck of layer2 and layer3, 4 stripes), IAUnet tests on dense 4-frame clips as its
recipe, and they train with Adam 2e-3 for 24 epochs (768 steps, lr x0.1 from epoch 18) since
they start from scratch, on the GRL demo's data (128 / 64 identities: with 48 / 32 and Adam 1e-3
for 25 epochs they reached only 25-33% mAP; with 12 epochs, 384 steps, 33-43% and still rising
steeply). STE-NVAN and IAUnet warm up linearly over 2 epochs (64 steps): their seeds spread
by 4.5 and 4.9 points without it and within +-3 with it; NVAN does not (+-3.8 with it, +-2.9
without; benchmarks/RESULTS.md, "Demo over seeds, 2026-12-03").
"""
from __future__ import annotations

from configs import base
from grl_jax import schema

# (training ids, test ids) when the `ids` / `test_ids` arguments are 0.
DEMO_IDS = (128, 64)


def get_config(arg: str | None = None):
  args = schema.parse_arg(arg, model='grl', ids=0, test_ids=0, steps=-1, accel='cpu',
                         protocols='')
  config = base.get_config('mars', args.model)
  default_ids, default_test_ids = DEMO_IDS
  config.data.root = ''                      # '' + synthetic: <workdir>/data
  if args.model == 'grl':
    config.data.protocol = 'cas'             # GRL's MARS protocol (queries in the gallery)
  config.data.synthetic.enabled = True
  config.data.synthetic.num_train_ids = args.ids or default_ids
  config.data.synthetic.num_test_ids = args.test_ids or default_test_ids
  config.data.synthetic.height = 64          # rendered at the training resolution: no resize
  config.data.synthetic.width = 32
  config.data.height, config.data.width = 64, 32

  config.model.stage_sizes = (1, 1, 1, 1)
  config.model.resnet_width = 8              # D = 256; loss.feature_dim follows

  if args.model == 'grl':
    config.data.seq_len = 8
    # Adam + warm-up instead of SGD lr 0.01: see the docstring (stability under rounding).
    config.optim.name = 'adam'
    config.optim.lr = 2e-3
    config.optim.warmup_epochs = 0.5
    config.optim.epochs = 12                 # 128 ids: 94 steps per epoch, 1128 steps
    config.optim.decay_epochs = (9,)
    config.train.eval_every_epochs = 4       # + the untrained model (step 0) and the final one
  else:
    config.data.p, config.data.k = 4, 4      # 128 ids: 32 steps per epoch, 384 steps
    if args.model == 'iaunet':
      config.data.test_sampling = 'dense'
    else:
      config.model.non_layers = (0, 1, 1, 0)
      config.model.stripes = 4
    config.optim.lr = 2e-3
    # 64 steps for STE-NVAN / IAUnet; none for NVAN (it spread more with it): see the docstring
    config.optim.warmup_epochs = 0 if args.model == 'nvan' else 2
    config.optim.epochs = 24                 # 768 steps
    config.optim.decay_epochs = (18,)
    config.train.eval_every_epochs = 4       # + the untrained model (step 0)
  config.train.global_batch_size = 16
  config.train.num_steps = args.steps
  config.train.log_every_steps = 10
  config.train.eval_at_start = True
  config.train.checkpoint_every_steps = 100
  config.eval.batch_size = 16
  base.apply_accel(config, args.accel)
  if args.protocols:
    base.set_protocols(config, args.protocols)
  config.lock()
  return config
