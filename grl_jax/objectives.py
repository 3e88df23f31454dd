"""Training objectives (the `Objective` protocol of `grl_jax.models`) of every model family.

* `GRLObjective`: GRL's five-term loss with two OIM lookup tables as state (official
  flysnowtiger/GRL `reid/train/trainer.py`).
* `BNNeckObjective`: ID cross-entropy on the BNNeck logits + batch-hard triplet on a feature
  (NVAN / STE-NVAN, jackie840129/STE-NVAN; IAUnet, blue-blue272/ImgReID-IAnet).

Loss options come from `config.loss` (a ConfigDict, a plain dict or None for all defaults). Each
objective's fields and defaults are ONE dataclass (`GRLLoss`, `BNNeckLoss`): the objectives read
`config.loss` strictly against it (an unknown field is a ConfigError naming
`config.loss.<field>`), and `<Objective>.defaults()` is what the recipes start from.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Union

import jax
import jax.numpy as jnp

from grl_jax import losses, schema
from grl_jax.errors import ConfigError
from grl_jax.models import fields

PyTree = Any
Margin = Union[str, float]


@dataclasses.dataclass(frozen=True)
class GRLLoss:
  """`config.loss` of GRL; defaults = the official recipe (flysnowtiger/GRL)."""
  feature_dim: int = 2048           # D of the OIM tables (= 32 x config.model.resnet_width)
  oim_scalar: float = 30.0
  oim_momentum: float = 0.5
  oim_frame_weight: float = 1.0
  oim_video_weight: float = 1.0
  verification_weight: float = 20.0
  triplet_weight: float = 1.0
  triplet_margin: Margin = 'soft'   # 'soft' (softplus) or a float hinge margin
  triplet_metric: str = 'euclidean'
  uncorr_weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class BNNeckLoss:
  """`config.loss` of the BNNeck families; defaults = NVAN / STE-NVAN (plain CE + soft triplet)."""
  label_smoothing: float = 0.0
  ce_weight: float = 1.0
  triplet_weight: float = 1.0
  triplet_margin: Margin = 'soft'
  triplet_metric: str = 'euclidean'
  triplet_feature: str = 'feature'  # the model output the triplet loss reads


def _read(loss_cfg: Any, table: type, owner: str) -> dict:
  """config.loss over the defaults of `table`, with the common checks (ConfigError)."""
  values = fields.read(loss_cfg, fields.defaults_of(table), 'config.loss', owner)
  try:
    values['triplet_margin'] = losses.parse_margin(values['triplet_margin'])
  except ValueError as e:
    raise ConfigError(f"config.loss.triplet_margin={values['triplet_margin']!r}: expected "
                      "'soft' or a number") from e
  schema.check_choice(values['triplet_metric'], schema.TRIPLET_METRICS,
                      'config.loss.triplet_metric')
  return values


def _require(outputs: dict, key: str, owner: str) -> jax.Array:
  if key not in outputs:
    raise KeyError(f'{owner}: model outputs lack {key!r} (have {sorted(outputs)}); is the model '
                   f'applied with train=True?')
  return outputs[key]


def _pair_order(outputs: dict, batch_size: int) -> jax.Array:
  """int32[B] batch row of each pair-ordered row: [0, 2, 4, ..; 1, 3, 5, ..]."""
  if 'pair_order' in outputs:
    return outputs['pair_order'].astype(jnp.int32)
  return jnp.concatenate([jnp.arange(0, batch_size, 2), jnp.arange(1, batch_size, 2)])


class GRLObjective:
  """GRL loss (official flysnowtiger/GRL `reid/train/trainer.py`):

      L = w_f·OIM_corr(Z^h frames) + w_v·OIM_corr(V^h) + w_ver·BCE_ver + w_tri·Tri(V^h)
          + w_u·OIM_uncorr(Z^l)

  Inputs are the GRL model's train outputs (`frame_corr` f[B, T, D] batch order; `video_corr`,
  `video_uncorr` f[B, D] and `pair_order` int32[B] in pair order; `verification_logit`
  f[B/2, B/2]) and `batch['pid']` int32[B] with rows (2k, 2k+1) forming a pair.

  `loss_cfg` fields: the `GRLLoss` dataclass (defaults = the official recipe).

  State: {'lut_corr': f32[num_classes, D], 'lut_uncorr': f32[num_classes, D]}, zeros at start.
  The corr table is shared by the frame and the video terms.

  Metrics (unweighted terms, the weighted `total`, and top-1 accuracies of the OIM logits /
  verification signs): oim_frame, oim_video, verification, triplet, oim_uncorr, total,
  accuracy (OIM_corr on the video rows), accuracy_frame, accuracy_uncorr,
  verification_accuracy.
  """

  def __init__(self, loss_cfg: Any, num_classes: int):
    if int(num_classes) <= 0:
      raise ValueError(f'GRLObjective: num_classes must be positive, got {num_classes}')
    self.num_classes = int(num_classes)
    v = _read(loss_cfg, GRLLoss, 'the GRL objective')
    self.feature_dim = int(v['feature_dim'])
    self.oim_scalar = float(v['oim_scalar'])
    self.oim_momentum = float(v['oim_momentum'])
    self.oim_frame_weight = float(v['oim_frame_weight'])
    self.oim_video_weight = float(v['oim_video_weight'])
    self.verification_weight = float(v['verification_weight'])
    self.triplet_weight = float(v['triplet_weight'])
    self.triplet_margin = v['triplet_margin']
    self.triplet_metric = str(v['triplet_metric'])
    self.uncorr_weight = float(v['uncorr_weight'])
    if not 0.0 <= self.oim_momentum < 1.0:
      raise ConfigError(f'config.loss.oim_momentum={self.oim_momentum}: expected in [0, 1)')

  @staticmethod
  def defaults() -> dict:
    """Every config.loss field of GRL with its default (the `GRLLoss` dataclass)."""
    return fields.defaults_of(GRLLoss)

  def init_state(self) -> PyTree:
    shape = (self.num_classes, self.feature_dim)
    return {'lut_corr': jnp.zeros(shape, jnp.float32),
            'lut_uncorr': jnp.zeros(shape, jnp.float32)}

  def _inputs(self, outputs: dict, batch: dict):
    """Flattened loss inputs: (frames [B·T, D], frame labels [B·T], video_corr [B, D],
    video_uncorr [B, D], pair-ordered labels [B], verification logit, probe ids, gallery ids)."""
    owner = 'GRLObjective'
    frame_corr = _require(outputs, 'frame_corr', owner)
    video_corr = _require(outputs, 'video_corr', owner)
    video_uncorr = _require(outputs, 'video_uncorr', owner)
    ver_logit = _require(outputs, 'verification_logit', owner)
    pid = batch['pid'].astype(jnp.int32)
    b = pid.shape[0]
    if b % 2:
      raise ValueError(f'{owner}: batch size {b} is odd; GRL needs pairs (rows 2k, 2k+1)')
    if frame_corr.ndim != 3 or frame_corr.shape[0] != b:
      raise ValueError(f'{owner}: frame_corr shape {frame_corr.shape}; expected [B={b}, T, D]')
    for name, arr in (('frame_corr', frame_corr), ('video_corr', video_corr),
                      ('video_uncorr', video_uncorr)):
      if arr.shape[-1] != self.feature_dim:
        raise ValueError(f'{owner}: outputs[{name!r}] feature dim {arr.shape[-1]} != '
                         f'loss.feature_dim={self.feature_dim}')
    if video_corr.shape != (b, self.feature_dim) or video_uncorr.shape != video_corr.shape:
      raise ValueError(f'{owner}: video_corr {video_corr.shape} / video_uncorr '
                       f'{video_uncorr.shape}; expected [{b}, {self.feature_dim}]')
    if ver_logit.shape != (b // 2, b // 2):
      raise ValueError(f'{owner}: verification_logit shape {ver_logit.shape}; expected '
                       f'[{b // 2}, {b // 2}]')
    t = frame_corr.shape[1]
    # Row order b-major then t, labels = clip label repeated T times (official trainer).
    frames = frame_corr.reshape(b * t, self.feature_dim)
    frame_labels = jnp.repeat(pid, t)
    video_labels = pid[_pair_order(outputs, b)]
    return (frames, frame_labels, video_corr, video_uncorr, video_labels, ver_logit,
            pid[0::2], pid[1::2])

  def loss(self, outputs: dict, batch: dict, state: PyTree) -> tuple[jax.Array, dict]:
    (frames, frame_labels, video_corr, video_uncorr, video_labels, ver_logit, probe_ids,
     gallery_ids) = self._inputs(outputs, batch)
    logits_frame = losses.oim_logits(frames, state['lut_corr'], self.oim_scalar)
    logits_video = losses.oim_logits(video_corr, state['lut_corr'], self.oim_scalar)
    logits_uncorr = losses.oim_logits(video_uncorr, state['lut_uncorr'], self.oim_scalar)
    terms = {
        'oim_frame': losses.cross_entropy(logits_frame, frame_labels),
        'oim_video': losses.cross_entropy(logits_video, video_labels),
        'verification': losses.verification_bce(ver_logit, probe_ids, gallery_ids),
        'triplet': losses.batch_hard_triplet(video_corr, video_labels, self.triplet_margin,
                                             self.triplet_metric),
        'oim_uncorr': losses.cross_entropy(logits_uncorr, video_labels),
    }
    total = (self.oim_frame_weight * terms['oim_frame']
             + self.oim_video_weight * terms['oim_video']
             + self.verification_weight * terms['verification']
             + self.triplet_weight * terms['triplet']
             + self.uncorr_weight * terms['oim_uncorr'])
    metrics = dict(terms)
    metrics['total'] = total
    metrics['accuracy'] = losses.top1_accuracy(logits_video, video_labels)
    metrics['accuracy_frame'] = losses.top1_accuracy(logits_frame, frame_labels)
    metrics['accuracy_uncorr'] = losses.top1_accuracy(logits_uncorr, video_labels)
    metrics['verification_accuracy'] = losses.verification_accuracy(
        jax.lax.stop_gradient(ver_logit), probe_ids, gallery_ids)
    metrics = {k: jax.lax.stop_gradient(v).astype(jnp.float32) for k, v in metrics.items()}
    return total, metrics

  def update_state(self, outputs: dict, batch: dict, state: PyTree) -> PyTree:
    """OIM table updates after the gradient step (sequential per-row momentum update with
    renormalisation, tables kept out of the optimiser): the corr table takes the video rows
    (pair order) and then the frame rows (b-major, t); the uncorr table takes the video_uncorr
    rows (pair order)."""
    outputs = jax.lax.stop_gradient(outputs)
    (frames, frame_labels, video_corr, video_uncorr, video_labels, _, _,
     _) = self._inputs(outputs, batch)
    corr_rows = jnp.concatenate([video_corr.astype(jnp.float32), frames.astype(jnp.float32)])
    corr_labels = jnp.concatenate([video_labels, frame_labels])
    return {
        'lut_corr': losses.oim_update(state['lut_corr'], corr_rows, corr_labels,
                                      self.oim_momentum),
        'lut_uncorr': losses.oim_update(state['lut_uncorr'], video_uncorr, video_labels,
                                        self.oim_momentum),
    }


class BNNeckObjective:
  """ID cross-entropy on `logits` + batch-hard triplet on a feature (BNNeck model families).

  NVAN / STE-NVAN (jackie840129/STE-NVAN, the defaults): plain CE + soft-margin Euclidean
  triplet on the pre-BN `feature`, both weight 1. IAUnet (image trainer of
  blue-blue272/ImgReID-IAnet): label_smoothing=0.1, triplet_margin=0.3,
  triplet_metric='cosine' (on the post-BN feature: the model decides what it puts under
  `triplet_feature`). IAUnet's part-mask BCE is not part of this objective.

  `loss_cfg` fields: the `BNNeckLoss` dataclass (`triplet_feature` is the output key).

  Inputs: outputs `logits` f[B, num_classes] and `<triplet_feature>` f[B, D]; `batch['pid']`.
  State: {}. Metrics: ce, triplet (unweighted), accuracy, total.
  """

  def __init__(self, loss_cfg: Any, num_classes: int):
    if int(num_classes) <= 0:
      raise ValueError(f'BNNeckObjective: num_classes must be positive, got {num_classes}')
    self.num_classes = int(num_classes)
    v = _read(loss_cfg, BNNeckLoss, 'the BNNeck objective')
    self.label_smoothing = float(v['label_smoothing'])
    self.ce_weight = float(v['ce_weight'])
    self.triplet_weight = float(v['triplet_weight'])
    self.triplet_margin = v['triplet_margin']
    self.triplet_metric = str(v['triplet_metric'])
    self.triplet_feature = str(v['triplet_feature'])
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ConfigError(f'config.loss.label_smoothing={self.label_smoothing}: expected in '
                        '[0, 1)')

  @staticmethod
  def defaults() -> dict:
    """Every config.loss field of the BNNeck families with its default (`BNNeckLoss`)."""
    return fields.defaults_of(BNNeckLoss)

  def init_state(self) -> PyTree:
    return {}

  def loss(self, outputs: dict, batch: dict, state: PyTree) -> tuple[jax.Array, dict]:
    del state
    owner = 'BNNeckObjective'
    logits = _require(outputs, 'logits', owner)
    feature = _require(outputs, self.triplet_feature, owner)
    pid = batch['pid'].astype(jnp.int32)
    if logits.shape != (pid.shape[0], self.num_classes):
      raise ValueError(f'{owner}: logits shape {logits.shape}; expected '
                       f'[B={pid.shape[0]}, num_classes={self.num_classes}]')
    if feature.ndim != 2 or feature.shape[0] != pid.shape[0]:
      raise ValueError(f'{owner}: outputs[{self.triplet_feature!r}] shape {feature.shape}; '
                       f'expected [B={pid.shape[0]}, D]')
    ce = losses.cross_entropy(logits, pid, self.label_smoothing)
    triplet = losses.batch_hard_triplet(feature, pid, self.triplet_margin, self.triplet_metric)
    total = self.ce_weight * ce + self.triplet_weight * triplet
    metrics = {'ce': ce, 'triplet': triplet,
               'accuracy': losses.top1_accuracy(jax.lax.stop_gradient(logits), pid),
               'total': total}
    metrics = {k: jax.lax.stop_gradient(v).astype(jnp.float32) for k, v in metrics.items()}
    return total, metrics

  def update_state(self, outputs: dict, batch: dict, state: PyTree) -> PyTree:
    del outputs, batch
    return state
