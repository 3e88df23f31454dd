"""NVAN and STE-NVAN published recipes (official `run_NL.sh` after the lr fix of commit
bfbe810, `train_NL.py`, `evaluate.py` of jackie840129/STE-NVAN).

* Model (grl_jax/models/nvan.py documents every field): ResNet-50, last stride 1, no ReLU after
  the stem BN (as released), non-local blocks after bottlenecks 2, 3 of layer2 and 3, 4, 5 of
  layer3 (`--non_layers 0 2 3 0`), 3D average pooling, BNNeck (frozen bias) + bias-free
  classifier. STE-NVAN: 16-stripe non-local within frame pairs and temporal max pooling
  8 -> 4 -> 2 (`resnet50_NL_stripe_hr`, `--stripes 16 16 16 16`);
  `--config.model.nl_temporal_groups=clip` gives the temporally global variant of the paper's
  figure.
* Loss: plain cross-entropy on the logits + soft-margin batch-hard triplet with Euclidean
  distance on the pre-BN feature, both weight 1.
* Optimiser: Adam (0.9, 0.999, eps 1e-8), lr 1e-4, coupled L2 weight decay 5e-5 on every
  trainable parameter, lr / 10 every 50 epochs (StepLR(50, 0.1)), 200 epochs. An epoch is
  floor(#ids / 8) steps (78 on MARS), as the official identity-indexed dataset.
* Data: P x K = 8 identities x 4 tracklets (drawn with replacement, any camera) x 8 frames,
  restricted random sampling, clip-level flip, no erasing, no crop, 256 x 128.
* Test: one 8-frame clip per tracklet (first frame of each RRS chunk), BNNeck output, cosine
  distance, official MARS protocol (gallery = all test tracklets, trapezoid AP). The official
  code validated every 10 epochs and kept the best rank-1 on the test set (`best_metric`).

Deviations to know: the official runs used nn.DataParallel on 2 GPUs, so BN statistics were per
16-clip half batch; here they are over the whole (sharded) batch.
"""
from __future__ import annotations

import ml_collections

from grl_jax import models

NAMES = ('nvan', 'ste_nvan')


def recipe(name: str = 'nvan') -> ml_collections.ConfigDict:
  if name not in NAMES:
    raise ValueError(f'configs/models/nvan.py knows the models {NAMES}, got {name!r}')
  spec = models.get(name)
  r = ml_collections.ConfigDict()
  # The published architecture and loss are the model's defaults (grl_jax/models/nvan.py,
  # grl_jax/objectives.py BNNeckLoss): ResNet-50, last stride 1, no ReLU after bn1 (as
  # released), non_layers=(0, 2, 3, 0) (NL blocks after the last k bottlenecks of layer1..4),
  # 16 stripes (STE-NVAN; unused by NVAN), nl_temporal_groups 'clip' (NVAN) / 'pairs'
  # (STE-NVAN), NVAN attention in query chunks of 1024 rows (0 = whole affinity); plain CE +
  # soft-margin Euclidean triplet on the pre-BN 3D-pooled `feature`, both weight 1.
  r.model = ml_collections.ConfigDict(spec.model_defaults())
  r.loss = ml_collections.ConfigDict(spec.loss_defaults())
  r.optim = dict(
      name='adam', lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=5e-5, lr_mult=(),
      epochs=200, decay_epochs=(50, 100, 150), decay_factor=0.1, warmup_epochs=0.0)
  r.data = dict(
      protocol='official', batch_sampler='pk', p=8, k=4, pk_mode='replace',
      train_sampling='rrs', test_sampling='rrs_test', seq_len=8, height=256, width=128,
      flip=True, erasing_prob=0.0, pad_crop=0)
  r.train = dict(global_batch_size=32, eval_every_epochs=10)
  r.eval = dict(best_metric='reid/rank1')
  return r
