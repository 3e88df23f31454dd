"""GRL: Global-guided Reciprocal Learning (Liu et al., CVPR 2021), HEAD of the official code.

Official code: flysnowtiger/GRL (`reid/models/basebranch.py` backbone + GCE,
`reid/models/grl_model.py` TRL + heads, `reid/models/Siamese.py`). Shapes: B clips,
T frames, h x w feature map (16 x 8 at 256 x 128), D = 32 * resnet_width channels (2048 for
ResNet-50).

  frames f[B, T, H, W, 3] -> backbone (ResNet, last stride 1) -> X f[B*T, h, w, D]
  -> gce: R = sigmoid(head([X ; G])) f[B*T, h, w, 1];  X^h = X * R,  X^l = X * (1 - R)
  -> trl_forward / trl_backward over t (nn.scan):  F^h f[B, T, D],  F^l f[B, D]
  -> corr_bn + L2 -> Z^h f[B, T, D];  uncorr_bn + L2 -> Z^l f[B, D]
  -> siamese: self-attention temporal pooling of Z^h, pair-verification head

Outputs (the contract `grl_jax.objectives.GRLObjective` reads):
  train=True (B even; rows 2k, 2k+1 are a same-identity pair):
    frame_corr f32[B, T, D], video_corr f32[B, D] and video_uncorr f32[B, D] in pair order
    (probes = rows 0, 2, ..; then galleries = rows 1, 3, ..), verification_logit f32[B/2, B/2]
    (logit_1 - logit_0 of probe k vs gallery l), pair_order int32[B], correlation_map
    f32[B, T, h, w].
  train=False: descriptor f32[B, 3D] = concat[Z^l, AttnPool(Z^h), mean_t Z^h] (the official
    test descriptor, compared with a dot product, not re-normalised), correlation_map.

Model config fields (`config.model`, read strictly by `build`: an unknown field is a ConfigError;
the defaults below are the `GRL` dataclass fields, listed by `model_defaults()`):
  name            'grl'
  resnet_depth    50 (-> stage sizes (3, 4, 6, 3)); ignored when `stage_sizes` is given.
  stage_sizes     optional tuple of blocks per stage, e.g. (1, 1, 1, 1) for tests.
  resnet_width    64; D = 32 * resnet_width (2048 at 64).
  last_stride     1.
  dtype           'float32' | 'bfloat16' (grl_jax.schema.DTYPES): compute dtype of convs and
                  activations: every conv and matmul of the model takes `dtype` operands
                  (tests/test_hlo_dtypes.py checks the lowered train step); the small heads
                  that feed a BN, sigmoid or softmax (glo_fc, the TRL channel attention, the
                  Siamese Q/K, attention and verifier) accumulate and return float32.
                  Params, BN statistics, sigmoids, softmaxes, L2 normalisations and all
                  outputs are float32.
  accumulation    'plain' (HEAD) | 'se' (first official commit: squeeze-excitation in the
                  accumulation unit; HEAD removed it).
  gce_hidden      1024: width of the global projection glo_fc.
  corr_hidden     256: middle width of the correlation head.
  attention_dim   512: width of the Q/K projections of the attention pooling.
  trl_reduction   16: reduction of the TRL channel-attention MLP (D -> D/16 -> D).
  trl_scan        True: nn.scan over time (compile time independent of T); False unrolls the
                  loop in Python (same parameters and results, for tests).
  The hidden sizes are given for the reference width 64 and scaled by resnet_width / 64 (at
  least 1), so a tiny model (width 8) uses gce_hidden 128, corr_hidden 32, attention_dim 64,
  accumulation bottleneck D/4 = 64 and channel attention D/16 = 16.

Initialisation follows PyTorch defaults of the official modules (Linear/Conv: U(+-1/sqrt(fan_in))
for weight and bias), except: backbone convs kaiming-normal fan_out (torchvision), Siamese Q/K
kaiming-uniform fan_out with zero bias, verifier N(0, 0.001^2) with zero bias. All BN gammas
start at 1 and betas at 0 (PyTorch >= 1.2; the README's PyTorch 1.0 drew the gammas of the 7
new BNs per direction/GCE from U(0, 1)).

Deliberate differences from the official code: the global vector is broadcast at the actual
h x w (the official GCE broadcasts to a fixed 16 x 8), so any input resolution works; the unused
Siamese W_v/BN_v and the Siamese_video verifier (dead code upstream: no gradient, no effect on
outputs) are not built; BN running variances follow Flax (biased batch variance) instead of
PyTorch's unbiased one (negligible).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from grl_jax import schema
from grl_jax.errors import ConfigError
from grl_jax.models import ModelSpec, fields, layers, register, resnet
from grl_jax.models.layers import l2_normalize, torch_kernel_init
from grl_jax.models.trl import TRLDirection, conv1x1

Dtype = Any
REFERENCE_WIDTH = 64


# ----------------------------------------------------------------------------------------------
class _ConcatConv1x1(nn.Module):
  """1x1 conv (no bias) over the channel concatenation [x ; g] with g constant over space.

  Its kernel is the (1, 1, Cx + Cg, F) kernel of the official `Conv2d(Cx + Cg, F, 1)`; the g
  part is applied once per clip (x @ Kx + g @ Kg == conv([x ; g])), saving Cg/(Cx+Cg) of the
  GCE's largest conv.
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, g: jax.Array) -> jax.Array:
    """x f[B, T, h, w, Cx], g f[B, Cg] -> f[B, T, h, w, F]."""
    cx, cg = x.shape[-1], g.shape[-1]
    kernel = self.param('kernel', torch_kernel_init, (1, 1, cx + cg, self.features),
                        jnp.float32)
    k = kernel[0, 0].astype(self.dtype)
    y = jnp.einsum('bthwc,cf->bthwf', x.astype(self.dtype), k[:cx])
    yg = (g.astype(self.dtype) @ k[cx:])[:, None, None, None, :]
    return y + yg


class GCE(nn.Module):
  """Global-guided Correlation Estimation (official `Backbone` in `reid/models/basebranch.py`).

  x f[B, T, h, w, D] -> (X^h, X^l) f[B, T, h, w, D] in `dtype`, R f32[B, T, h, w].
  """
  hidden: int = 1024
  corr_hidden: int = 256
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool):
    d = x.shape[-1]
    # g_b = mean over t, i, j; glo_fc = Linear + BN1d (over the B clips) + ReLU.
    g = jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))
    g = layers.torch_dense(self.hidden, d, dtype=self.dtype, f32_result=True, name='glo_fc')(g)
    g = nn.relu(layers.batch_norm(train, name='glo_bn')(g))
    # Correlation head: conv+BN (no ReLU, as in the official code), conv+BN+ReLU, conv+BN, sigmoid.
    r = _ConcatConv1x1(self.hidden, self.dtype, name='corr_conv1')(x, g)
    r = layers.bn_apply(layers.batch_norm(train, name='corr_bn1'), r, self.dtype)
    r = conv1x1(self.corr_hidden, self.hidden, dtype=self.dtype, name='corr_conv2')(r)
    r = nn.relu(layers.bn_apply(layers.batch_norm(train, name='corr_bn2'), r, self.dtype))
    r = conv1x1(1, self.corr_hidden, dtype=self.dtype, name='corr_conv3')(r)
    r = layers.batch_norm(train, name='corr_bn3')(r.astype(jnp.float32))
    corr = jax.nn.sigmoid(r)[..., 0]  # f32[B, T, h, w]
    rc = corr[..., None].astype(self.dtype)
    x = x.astype(self.dtype)
    return x * rc, x * (1 - rc), corr


class Siamese(nn.Module):
  """The official 'Siamese' module: self-attention temporal pooling + pair verifier.

  Its matmuls take `dtype` operands and return float32 (layers.dot_general_f32): each feeds a
  BN, the softmax or the verification loss.
  """
  attention_dim: int = 512
  dtype: Dtype = jnp.float32

  def setup(self):
    fan_out_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'uniform')
    zeros = nn.initializers.zeros
    dense = dict(dtype=self.dtype, param_dtype=jnp.float32, dot_general=layers.dot_general_f32)
    self.query = nn.Dense(self.attention_dim, kernel_init=fan_out_init, bias_init=zeros, **dense)
    self.key = nn.Dense(self.attention_dim, kernel_init=fan_out_init, bias_init=zeros, **dense)
    self.query_bn = layers.batch_norm(None)
    self.key_bn = layers.batch_norm(None)
    self.verifier_bn = layers.batch_norm(None)
    self.verifier = nn.Dense(2, kernel_init=nn.initializers.normal(0.001), bias_init=zeros,
                             **dense)

  def attention_pool(self, z: jax.Array, train: bool) -> jax.Array:
    """z f32[N, T, D] -> f32[N, D] (BN over the N*T rows of this call).

    Q = L2(BN(z Wq + bq)), K likewise, A = softmax_rows(Q K^T),
    y = sum_i sum_j A_ij z_j, returned L2-normalised (no eps, as the official code).
    """
    n, t, d = z.shape
    rows = z.reshape(n * t, d).astype(jnp.float32)
    q = l2_normalize(self.query_bn(self.query(rows), use_running_average=not train), None)
    k = l2_normalize(self.key_bn(self.key(rows), use_running_average=not train), None)
    q, k = q.reshape(n, t, -1), k.reshape(n, t, -1)
    # |q . k| <= 1 (unit vectors): bf16 operands lose nothing the float32 softmax would see.
    a = jax.nn.softmax(layers.einsum_f32('nic,njc->nij', q, k, dtype=self.dtype), axis=-1)
    y = layers.einsum_f32('nj,njd->nd', a.sum(axis=1), z, dtype=self.dtype)
    return l2_normalize(y, None)

  def verify(self, probes: jax.Array, galleries: jax.Array, train: bool) -> jax.Array:
    """f32[P, D], f32[G, D] -> logit of P(same) f32[P, G] (BN1d over the P*G difference rows)."""
    d = (probes[:, None, :] - galleries[None, :, :]) ** 2
    p, g, dim = d.shape
    x = self.verifier_bn(d.reshape(p * g, dim), use_running_average=not train)
    logits = self.verifier(x)
    return (logits[:, 1] - logits[:, 0]).reshape(p, g)

  def __call__(self, z: jax.Array, train: bool) -> jax.Array:
    return self.attention_pool(z, train)


class GRL(nn.Module):
  """The GRL network (CNN + Siamese); see the module docstring for fields and outputs."""
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  last_stride: int = 1
  dtype: Dtype = jnp.float32
  accumulation: str = 'plain'
  gce_hidden: int = 1024
  corr_hidden: int = 256
  attention_dim: int = 512
  trl_reduction: int = 16
  trl_scan: bool = True

  @property
  def feature_dim(self) -> int:
    return 32 * self.width

  @nn.compact
  def __call__(self, frames: jax.Array, train: bool) -> dict[str, jax.Array]:
    """frames f[B, T, H, W, 3], ImageNet-normalised RGB -> dict of outputs (module docstring)."""
    schema.check_choice(self.accumulation, schema.ACCUMULATIONS, 'config.model.accumulation')
    b, t = frames.shape[:2]
    if train and b % 2:
      raise ValueError(f'GRL training needs an even batch of (probe, gallery) pairs, got B={b}')
    d = self.feature_dim
    x = resnet.ResNet(self.stage_sizes, self.width, self.last_stride, dtype=self.dtype,
                      name='backbone')(frames.reshape(b * t, *frames.shape[2:]), train)
    x = x.reshape(b, t, *x.shape[1:])
    xh, xl, corr = GCE(self.gce_hidden, self.corr_hidden, self.dtype, name='gce')(x, train)

    kw = dict(features=d, reduction=self.trl_reduction, accumulation=self.accumulation,
              scan=self.trl_scan, dtype=self.dtype)
    e_f, m_f = TRLDirection(reverse=False, name='trl_forward', **kw)(xh, xl, train)
    e_b, m_b = TRLDirection(reverse=True, name='trl_backward', **kw)(xh, xl, train)
    f_corr, f_uncorr = e_f + e_b, m_f + m_b

    z_corr = layers.batch_norm(train, name='corr_bn')(f_corr.reshape(b * t, d))
    z_corr = l2_normalize(z_corr, 1e-12).reshape(b, t, d)
    z_uncorr = l2_normalize(layers.batch_norm(train, name='uncorr_bn')(f_uncorr), 1e-12)

    siamese = Siamese(self.attention_dim, dtype=self.dtype, name='siamese')
    if not train:
      pooled = siamese.attention_pool(z_corr, False)
      if self.is_initializing():  # the verifier is used in training only; create its variables
        siamese.verify(pooled[:1], pooled[:1], False)
      descriptor = jnp.concatenate([z_uncorr, pooled, z_corr.mean(axis=1)], axis=-1)
      return {'descriptor': descriptor, 'correlation_map': corr}

    # Probes and galleries are pooled in two calls (separate BN batches and running-stat
    # updates, as in the official code); video-level outputs are in pair order [probes; galleries].
    pooled_probe = siamese.attention_pool(z_corr[0::2], True)
    pooled_gallery = siamese.attention_pool(z_corr[1::2], True)
    pair_order = jnp.concatenate([jnp.arange(0, b, 2), jnp.arange(1, b, 2)]).astype(jnp.int32)
    return {
        'frame_corr': z_corr,
        'video_corr': jnp.concatenate([pooled_probe, pooled_gallery]),
        'video_uncorr': z_uncorr[pair_order],
        'verification_logit': siamese.verify(pooled_probe, pooled_gallery, True),
        'pair_order': pair_order,
        'correlation_map': corr,
    }


# ----------------------------------------------------------------------------------------------
# config.model <-> GRL fields.


def scaled(size: int, width: int) -> int:
  """A hidden size given for width 64, scaled to `width` (at least 1)."""
  return max(1, round(size * width / REFERENCE_WIDTH))


_HIDDEN = ('gce_hidden', 'corr_hidden', 'attention_dim')


def model_defaults() -> dict:
  """config.model of GRL: the GRL dataclass defaults (hidden sizes at the reference width)."""
  d = fields.defaults_of(GRL, exclude=('stage_sizes', 'width', 'last_stride'))
  width = fields.defaults_of(GRL)['width']
  for key in _HIDDEN:
    d[key] = round(d[key] * REFERENCE_WIDTH / width)
  d['dtype'] = layers.dtype_name(d['dtype'])
  return {'name': 'grl', **resnet.trunk_defaults(GRL), **d}


def read_model_config(model_cfg) -> dict:
  """Strictly read config.model fields over `model_defaults()` (ConfigError on unknown ones)."""
  values = fields.read(model_cfg, model_defaults(), 'config.model', "model 'grl'")
  schema.check_choice(values['name'], ('grl',), 'config.model.name')
  return values


def build(model_cfg, num_classes: int = 0) -> GRL:
  """GRL module from `config.model` (fields in the module docstring). num_classes is unused:
  GRL has no classifier (its identity losses are OIM lookup tables owned by the objective)."""
  del num_classes
  values = read_model_config(model_cfg)
  trunk = resnet.trunk_kwargs(values)
  return GRL(
      **trunk,
      dtype=layers.compute_dtype(values['dtype']),
      accumulation=schema.check_choice(values['accumulation'], schema.ACCUMULATIONS,
                                       'config.model.accumulation'),
      **{k: scaled(int(values[k]), trunk['width']) for k in _HIDDEN},
      trl_reduction=int(values['trl_reduction']),
      trl_scan=bool(values['trl_scan']),
  )


def loss_defaults() -> dict:
  from grl_jax import objectives  # lazy: keeps model import light
  return objectives.GRLObjective.defaults()


def check_config(config) -> None:
  """Shape constraints of GRL on the full config (ConfigError naming the fields)."""
  model = build(config.model)
  objective = _objective(config.get('loss'), 1)
  d = model.feature_dim
  if not 1 <= model.trl_reduction <= d:
    raise ConfigError(f'config.model.trl_reduction={model.trl_reduction}: the TRL channel '
                      f'attention maps D={d} to D / trl_reduction channels; expected 1..{d}')
  if objective.feature_dim != d:
    raise ConfigError(f'config.loss.feature_dim={objective.feature_dim} must equal the GRL '
                      f'feature width 32 x config.model.resnet_width = {d} (the OIM tables '
                      'hold one D-vector per identity)')


def _objective(loss_cfg, num_classes):
  from grl_jax.objectives import GRLObjective  # lazy: keeps model import light
  return GRLObjective(loss_cfg, num_classes)


@register('grl')
def grl_spec() -> ModelSpec:
  return ModelSpec(build=build, objective=_objective, descriptor_distance='dot',
                   model_defaults=model_defaults, loss_defaults=loss_defaults,
                   check_config=check_config)
