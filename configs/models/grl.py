"""GRL's published recipe (the official flysnowtiger/GRL `mars_train.py` defaults).

* Model: ResNet-50 (last stride 1) + GCE + bi-directional TRL + BN/L2 heads + self-attention
  pooling + pair verifier (grl_jax/models/grl.py documents every field). The published
  architecture is the model's defaults (`grl_jax.models.get('grl').model_defaults()`): depth 50
  (stage sizes (3, 4, 6, 3); `stage_sizes=()` derives them, `(1, 1, 1, 1)` gives a tiny
  trunk), width 64 (D = 2048), plain accumulation (HEAD; 'se' is the first official commit's
  variant), hidden sizes 1024 / 256 / 512 at width 64 (scaled with the width), TRL
  reduction 16, TRL as nn.scan.
* Loss: OIM_corr(frames) + OIM_corr(video) + 20 x BCE verification + soft batch-hard triplet +
  OIM_uncorr (grl_jax.objectives.GRLObjective; its defaults are the published weights).
* Optimiser: SGD, Nesterov momentum 0.9, coupled weight decay 5e-4 on all parameters, lr 1e-3
  for the backbone and GCE and 2e-3 for everything else, x0.1 at epochs 15/30/45, 60 epochs,
  no warm-up.
* Data: pair batches of 16 clips (8 cross-camera positive pairs) x 8 frames, restricted random
  sampling, clip-level flip, per-frame random erasing p=0.5, 256x128.
* Test: rrs_test (one clip per tracklet) by default; `--config.data.test_sampling=dense` gives
  the all-frames protocol (which of the two the paper used is undocumented); descriptors
  compared by dot product.
"""
from __future__ import annotations

import ml_collections

from grl_jax import evaluators
from grl_jax import models

# Parameter groups (official `mars_train.py`): the torchvision trunk and GCE at x1, the rest x2.
# Regexes are matched against '/'-joined parameter paths; the first match wins.
GRL_LR_MULT = (
    (r'^backbone/', 1.0),
    (r'^gce/', 1.0),
    (r'.*', 2.0),
)


def recipe(name: str = 'grl') -> ml_collections.ConfigDict:
  if name != 'grl':
    raise ValueError(f'configs/models/grl.py knows only the model "grl", got {name!r}')
  spec = models.get('grl')
  model = spec.model_defaults()
  loss = spec.loss_defaults()
  # D = 32 x resnet_width; the OIM tables of the objective must have the same width, so the
  # loss field follows the model field (also after a --config.model.resnet_width override).
  width = ml_collections.FieldReference(model['resnet_width'])
  model['resnet_width'] = width
  loss['feature_dim'] = width * 32
  r = ml_collections.ConfigDict()
  r.model = ml_collections.ConfigDict(model)
  r.loss = ml_collections.ConfigDict(loss)
  r.optim = dict(
      name='sgd', lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4,
      lr_mult=GRL_LR_MULT, epochs=60, decay_epochs=(15, 30, 45), decay_factor=0.1,
      warmup_epochs=0.0)
  r.data = dict(
      batch_sampler='pair', train_sampling='rrs', test_sampling='rrs_test', seq_len=8,
      height=256, width=128, flip=True, erasing_prob=0.5, erasing_mode='frame', pad_crop=0)
  r.train = dict(global_batch_size=16)
  r.eval = dict(best_metric='reid/mAP')
  r.evals = {'gce_map': evaluators.defaults('gce_map')}   # the GCE correlation picture
  return r
