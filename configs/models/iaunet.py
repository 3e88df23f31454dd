"""IAUnet (video) recipe (blue-blue272/ImgReID-IAnet). IAUnet's video trainer was never released:

* [CODE, image IAUnet] loss: cross-entropy with label smoothing 0.1 + batch-hard triplet with
  hard margin 0.3 and cosine distance on the post-BN feature (`bn_feature`), both weight 1.
  The 0.5-weighted part-mask BCE is left out: it needs human-parsing masks, which no video
  dataset here ships, and the paper's video supervision is unknown.
* [INFERRED from TCLNet, the same group's ECCV'20 video code] T = 4 frames per clip from a
  random stride-8 window, P x K = 8 x 4 clips (distinct tracklets when an identity has >= 4),
  clip-level flip, no erasing; Adam lr 3e-4, coupled weight decay 5e-4, lr / 10 at epochs 40,
  80 and 120, 150 epochs; test on every frame in consecutive 4-frame clips (last one padded
  cyclically), clip descriptors averaged, cosine distance, CAS protocol (queries appended to
  the gallery).
* model.seq_len (the STIAU mask size) must equal data.seq_len (both 4).
"""
from __future__ import annotations

import ml_collections

from grl_jax import models


def recipe(name: str = 'iaunet') -> ml_collections.ConfigDict:
  if name != 'iaunet':
    raise ValueError(f'configs/models/iaunet.py knows only the model "iaunet", got {name!r}')
  spec = models.get('iaunet')
  model = spec.model_defaults()
  # ResNet-50, last stride 1, stem ReLU, 4 parts and an unchunked CIAU affinity ((C·T)^2 is
  # small at T = 4) are the model's defaults (grl_jax/models/iaunet.py); model.seq_len (the
  # STIAU node mask, default 4) is the clip length: test clips must not be longer.
  seq_len = model['seq_len']
  loss = spec.loss_defaults()
  loss.update(label_smoothing=0.1, triplet_margin=0.3, triplet_metric='cosine',
              triplet_feature='bn_feature')  # post-BN feature; ce / triplet weights stay 1
  r = ml_collections.ConfigDict()
  r.model = ml_collections.ConfigDict(model)
  r.loss = ml_collections.ConfigDict(loss)
  r.optim = dict(
      name='adam', lr=3e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=5e-4, lr_mult=(),
      epochs=150, decay_epochs=(40, 80, 120), decay_factor=0.1, warmup_epochs=0.0)
  r.data = dict(
      protocol='cas', batch_sampler='pk', p=8, k=4, pk_mode='distinct',
      train_sampling='stride', sample_stride=8, test_sampling='dense', seq_len=seq_len,
      height=256, width=128, flip=True, erasing_prob=0.0, pad_crop=0)
  r.train = dict(global_batch_size=32, eval_every_epochs=10)
  r.eval = dict(best_metric='reid/mAP')
  return r
