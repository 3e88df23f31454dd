"""Loss functions of GRL, NVAN/STE-NVAN and IAUnet as pure, jit-traceable JAX functions.

Every function casts its floating inputs to float32 (the models may run in bfloat16) and is
written with whole-array `jnp` ops only, so it compiles unchanged when the batch axis is sharded
over a device mesh. The single exception is `oim_update`, whose sequential row update is a
`lax.scan` by definition.

References (upstream code):
* OIM: official `reid/loss/oim.py` of flysnowtiger/GRL.
* Pair verification BCE: official `reid/loss/pairloss.py` of flysnowtiger/GRL.
* Batch-hard triplet: official `reid/loss/triplet.py` of flysnowtiger/GRL, the `TripletLoss` of
  jackie840129/STE-NVAN and the image trainer of blue-blue272/ImgReID-IAnet.
* Label-smoothed cross-entropy: the IAUnet image trainer (blue-blue272/ImgReID-IAnet, torchreid
  `CrossEntropyLabelSmooth`).
"""
from __future__ import annotations

from typing import Union

import jax
import jax.numpy as jnp

Margin = Union[str, float]

# Official triplet code: sqrt(sum sq + 1e-12), so the distance (and its gradient) is finite on
# the diagonal and for duplicated features.
_DIST_EPS = 1e-12
# Official triplet code masks same-id entries out of the negative minimum by adding this.
_SAME_ID_PENALTY = 1e5
# torch.nn.BCELoss clamps each log term at -100.
_BCE_LOG_CLAMP = -100.0


def _f32(x) -> jax.Array:
  return jnp.asarray(x).astype(jnp.float32)


# --------------------------------------------------------------------------------------------
# Cross-entropy


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Mean softmax cross-entropy with optional label smoothing.

  Args:
    logits: f[N, K].
    labels: int[N] in [0, K).
    label_smoothing: ε. The target is (1 − ε)·onehot(y) + ε/K (torchreid
      `CrossEntropyLabelSmooth`, as IAUnet uses it); ε = 0 is plain CE.

  Returns:
    f32 scalar: mean_n −Σ_k target_nk · log_softmax(logits)_nk.
  """
  logits = _f32(logits)
  if logits.ndim != 2:
    raise ValueError(f'cross_entropy: logits must be [N, K], got shape {logits.shape}')
  log_p = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(log_p, labels.astype(jnp.int32)[:, None], axis=-1)[:, 0]
  per_row = -picked
  if label_smoothing:
    eps = float(label_smoothing)
    num_classes = logits.shape[-1]
    # −Σ_k [(1−ε)·1[k=y] + ε/K]·log p_k without materialising the one-hot target.
    per_row = (1.0 - eps) * per_row - (eps / num_classes) * jnp.sum(log_p, axis=-1)
  return jnp.mean(per_row)


def top1_accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """f32 scalar: fraction of rows whose argmax equals the label. logits f[N, K], labels int[N]."""
  return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


# --------------------------------------------------------------------------------------------
# OIM (Online Instance Matching)


def oim_logits(x: jax.Array, lut: jax.Array, scalar: float = 30.0) -> jax.Array:
  """OIM logits s · x · Lᵀ with the lookup table treated as a constant.

  Args:
    x: f[N, D] (L2-normalised features).
    lut: f32[C, D] lookup table (state, not a parameter: no gradient reaches it).
    scalar: s (`--oim-scalar`, 30 in GRL).

  Returns:
    f32[N, C]. ∂/∂x = s · grad_logits · L, as in the official custom backward.
  """
  x = _f32(x)
  lut = jax.lax.stop_gradient(_f32(lut))
  if x.ndim != 2 or lut.ndim != 2 or x.shape[-1] != lut.shape[-1]:
    raise ValueError(f'oim_logits: expected x [N, D] and lut [C, D] with the same D, got '
                     f'x {x.shape} and lut {lut.shape}')
  return scalar * (x @ lut.T)


def oim_loss(x: jax.Array, labels: jax.Array, lut: jax.Array,
             scalar: float = 30.0) -> jax.Array:
  """Mean cross-entropy of the OIM logits (f32 scalar). x f[N, D], labels int[N], lut f32[C, D].

  With an all-zero LUT (the initial state) every logit is 0 and the loss is ln C.
  """
  return cross_entropy(oim_logits(x, lut, scalar), labels)


def oim_update(lut: jax.Array, x: jax.Array, labels: jax.Array,
               momentum: float = 0.5) -> jax.Array:
  """Sequential OIM lookup-table update, rows applied in batch order.

  For n = 0..N−1 (official `OIM.backward`):
      L[y_n] ← m · L[y_n] + (1 − m) · x_n
      L[y_n] ← L[y_n] / ||L[y_n]||
  Duplicate labels are applied one after the other, so later rows weigh more. A zero row (the
  initial state) therefore becomes x_n / ||x_n||. The official code divides by the norm without
  a guard (0/0 = NaN if the mixed row is exactly zero); here such a row stays zero instead.

  Args:
    lut: f32[C, D].
    x: f[N, D] rows (stop-gradient'ed).
    labels: int[N] in [0, C).
    momentum: m (0.5 in GRL).

  Returns:
    The updated f32[C, D] table.
  """
  lut = _f32(lut)
  x = jax.lax.stop_gradient(_f32(x))
  labels = labels.astype(jnp.int32)
  if x.ndim != 2 or x.shape[-1] != lut.shape[-1] or labels.shape != x.shape[:1]:
    raise ValueError(f'oim_update: expected lut [C, D], x [N, D], labels [N]; got lut '
                     f'{lut.shape}, x {x.shape}, labels {labels.shape}')

  def step(table, row):
    xi, yi = row
    mixed = momentum * table[yi] + (1.0 - momentum) * xi
    norm = jnp.sqrt(jnp.sum(mixed * mixed))
    mixed = mixed / jnp.where(norm > 0, norm, 1.0)
    return table.at[yi].set(mixed), None

  lut, _ = jax.lax.scan(step, lut, (x, labels))
  return lut


# --------------------------------------------------------------------------------------------
# Pair verification


def verification_bce(logit: jax.Array, probe_ids: jax.Array,
                     gallery_ids: jax.Array) -> jax.Array:
  """Binary cross-entropy of the probe × gallery "same identity" scores.

  Equivalent to `nn.BCELoss()(softmax(two_way_logits)[..., 1], y)` (mean over K·L, log terms
  clamped at −100 like torch), computed stably from logit = logit₁ − logit₀ since
  softmax(·)[1] = σ(logit). Labels are the CORRECT, untransposed y_kl = [id(P_k) == id(G_l)]
  (the official code builds the transpose, harmless only for symmetric pair batches).

  Args:
    logit: f[K, L], logit of P(same) for probe k vs gallery l.
    probe_ids: int[K].
    gallery_ids: int[L].

  Returns:
    f32 scalar.
  """
  logit = _f32(logit)
  if logit.shape != (probe_ids.shape[0], gallery_ids.shape[0]):
    raise ValueError(f'verification_bce: logit shape {logit.shape} does not match '
                     f'[len(probe_ids), len(gallery_ids)] = '
                     f'[{probe_ids.shape[0]}, {gallery_ids.shape[0]}]')
  y = (probe_ids[:, None] == gallery_ids[None, :]).astype(jnp.float32)
  log_p = jnp.maximum(jax.nn.log_sigmoid(logit), _BCE_LOG_CLAMP)      # log σ(z)
  log_not_p = jnp.maximum(jax.nn.log_sigmoid(-logit), _BCE_LOG_CLAMP)  # log(1 − σ(z))
  return -jnp.mean(y * log_p + (1.0 - y) * log_not_p)


def verification_accuracy(logit: jax.Array, probe_ids: jax.Array,
                          gallery_ids: jax.Array) -> jax.Array:
  """f32 scalar: fraction of probe × gallery entries where [logit > 0] equals the label."""
  y = probe_ids[:, None] == gallery_ids[None, :]
  return jnp.mean(((_f32(logit) > 0) == y).astype(jnp.float32))


# --------------------------------------------------------------------------------------------
# Batch-hard triplet


def pairwise_distance(features: jax.Array, metric: str = 'euclidean') -> jax.Array:
  """All-pairs distance matrix f32[N, N] of features f[N, D].

  'euclidean': sqrt(Σ_d (v_i − v_j)² + 1e-12), from explicit differences as the official code
    (no ||a||² + ||b||² − 2ab cancellation; exactly 1e-6 on the diagonal).
  'cosine': 1 − cos(v_i, v_j) with the features L2-normalised (norm clamped at 1e-12). IAUnet
    uses −cos; the constant offset cancels in pos − neg.
  """
  v = _f32(features)
  if v.ndim != 2:
    raise ValueError(f'pairwise_distance: features must be [N, D], got shape {v.shape}')
  if metric == 'euclidean':
    diff = v[:, None, :] - v[None, :, :]
    return jnp.sqrt(jnp.sum(diff * diff, axis=-1) + _DIST_EPS)
  if metric == 'cosine':
    # rsqrt of the clamped squared norm: same as v / max(||v||, 1e-12) but with a finite
    # gradient for an all-zero row (sqrt'(0) = inf would give 0 · inf = NaN).
    u = v * jax.lax.rsqrt(jnp.maximum(jnp.sum(v * v, axis=-1, keepdims=True), 1e-24))
    return 1.0 - u @ u.T
  raise ValueError(f"pairwise_distance: metric={metric!r}; expected 'euclidean' or 'cosine'")


def parse_margin(margin: Margin) -> Margin:
  """'soft' or a float margin (numeric strings such as '0.3' are accepted for config use)."""
  if isinstance(margin, str):
    if margin == 'soft':
      return 'soft'
    try:
      return float(margin)
    except ValueError:
      raise ValueError(f"triplet margin={margin!r}; expected 'soft' or a number") from None
  if isinstance(margin, (int, float)) and not isinstance(margin, bool):
    return float(margin)
  raise ValueError(f"triplet margin={margin!r}; expected 'soft' or a number")


def batch_hard_triplet(features: jax.Array, labels: jax.Array, margin: Margin = 'soft',
                       metric: str = 'euclidean') -> jax.Array:
  """Batch-hard triplet loss, mean over anchors (official `TripletLoss(margin, batch_hard=True)`).

  For each anchor i with distance row D_i· (`pairwise_distance`):
    pos_i = max_j D_ij · [y_j = y_i, j ≠ i]  (official positive mask = same-id XOR identity;
            for D ≥ 0 this is the hardest positive, and 0 if the anchor has no positive)
    neg_i = min_j (D_ij + 1e5 · [y_j = y_i])  (hardest negative; ≥ 1e5 if there is none)
    loss_i = softplus(pos_i − neg_i)          margin 'soft' (stable form of log(1 + e^z))
           = max(0, pos_i − neg_i + margin)   float margin.

  Args:
    features: f[N, D].
    labels: int[N].
    margin: 'soft' or a float (IAUnet: 0.3, cosine).
    metric: 'euclidean' (GRL, NVAN) or 'cosine'.

  Returns:
    f32 scalar.
  """
  margin = parse_margin(margin)
  dist = pairwise_distance(features, metric)
  n = dist.shape[0]
  if labels.shape != (n,):
    raise ValueError(f'batch_hard_triplet: labels shape {labels.shape} != ({n},)')
  same = labels[:, None] == labels[None, :]
  positive = same & ~jnp.eye(n, dtype=bool)
  hardest_pos = jnp.max(jnp.where(positive, dist, 0.0), axis=1)
  hardest_neg = jnp.min(dist + _SAME_ID_PENALTY * same.astype(jnp.float32), axis=1)
  z = hardest_pos - hardest_neg
  if margin == 'soft':
    per_anchor = jax.nn.softplus(z)
  else:
    per_anchor = jax.nn.relu(z + margin)
  return jnp.mean(per_anchor)
