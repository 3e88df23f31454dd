"""GRL: Global-guided Reciprocal Learning (Liu et al., CVPR 2021), HEAD of the official code.

Spec: shared/reference/grl.md §2-§5 (section numbers below refer to it). Shapes: B clips,
T frames, h x w feature map (16 x 8 at 256 x 128), D = 32 * resnet_width channels (2048 for
ResNet-50).

  frames f[B, T, H, W, 3] -> backbone (ResNet, last stride 1) -> X f[B*T, h, w, D]
  -> gce: R = sigmoid(head([X ; G])) f[B*T, h, w, 1];  X^h = X * R,  X^l = X * (1 - R)   (§3)
  -> trl_forward / trl_backward over t (nn.scan):  F^h f[B, T, D],  F^l f[B, D]          (§4)
  -> corr_bn + L2 -> Z^h f[B, T, D];  uncorr_bn + L2 -> Z^l f[B, D]                       (§5.1)
  -> siamese: self-attention temporal pooling of Z^h, pair-verification head             (§5.2-3)

Outputs (the "GRL model outputs" contract of the team brief):
  train=True (B even; rows 2k, 2k+1 are a same-identity pair):
    frame_corr f32[B, T, D], video_corr f32[B, D] and video_uncorr f32[B, D] in pair order
    (probes = rows 0, 2, ..; then galleries = rows 1, 3, ..), verification_logit f32[B/2, B/2]
    (logit_1 - logit_0 of probe k vs gallery l), pair_order int32[B], correlation_map
    f32[B, T, h, w].
  train=False: descriptor f32[B, 3D] = concat[Z^l, AttnPool(Z^h), mean_t Z^h] (§8.2, compared
    with a dot product, not re-normalised), correlation_map.

Model config fields (`config.model`, read by `build`):
  name            'grl'
  resnet_depth    50 (-> stage sizes (3, 4, 6, 3)); ignored when `stage_sizes` is given.
  stage_sizes     optional tuple of blocks per stage, e.g. (1, 1, 1, 1) for tests.
  resnet_width    64; D = 32 * resnet_width (2048 at 64).
  last_stride     1.
  dtype           'float32' | 'bfloat16' | 'float16': compute dtype of convs/activations.
                  Params, BN statistics, sigmoids, softmaxes, L2 normalisations and all
                  outputs are float32.
  accumulation    'plain' (HEAD) | 'se' (first official commit: squeeze-excitation in the
                  accumulation unit, grl.md B11).
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
new BNs per direction/GCE from U(0, 1), grl.md B15).

Deliberate differences from the official code: the global vector is broadcast at the actual
h x w (B9), so any input resolution works; the unused Siamese W_v/BN_v and the Siamese_video
verifier (no gradient, no effect on outputs; B7) are not built; BN running variances follow
Flax (biased batch variance) instead of PyTorch's unbiased one (negligible, §2).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from grl_jax.models import ModelSpec, cfg_get, register
from grl_jax.models import resnet

Dtype = Any
REFERENCE_WIDTH = 64
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


# ----------------------------------------------------------------------------------------------
# PyTorch default initialisers (nn.Linear / nn.Conv2d reset_parameters).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def torch_bias_init(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
      key, shape, dtype, -bound, bound)


def dense(features: int, fan_in: int, *, use_bias: bool = True, dtype: Dtype = jnp.float32,
          name: str | None = None, kernel_init=None, bias_init=None) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=kernel_init or torch_kernel_init,
                  bias_init=bias_init or torch_bias_init(fan_in), name=name)


class Conv1x1(nn.Module):
  """A 1x1 conv (stride 1, no padding) written as a matmul over the channel axis.

  Same variables as `nn.Conv(features, (1, 1))` (`kernel` f32[1, 1, C, F], optional `bias`
  f32[F], same initialisers and names, so checkpoints and conversions are unchanged) and the
  same result. Why not nn.Conv: inside the TRL `nn.scan` (an XLA while loop) XLA:CPU leaves
  the 1x1 convolutions and their gradients as convolution ops in non-canonical layouts
  (weight gradient `f01b_i01o->01bf`), which run on a slow generic path: one TRL direction's
  forward + backward at 2 x 8 x 16 x 8 x 2048 took 38 s instead of 0.8 s, most of a 170 s
  full-size CPU train step (benchmarks/RESULTS.md). A dot_general is a plain GEMM everywhere.
  """
  features: int
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  kernel_init: Any = torch_kernel_init
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x f[..., C] -> f[..., F] in `dtype`."""
    kernel = self.param('kernel', self.kernel_init, (1, 1, x.shape[-1], self.features),
                        jnp.float32)
    y = jax.lax.dot_general(x.astype(self.dtype), kernel[0, 0].astype(self.dtype),
                            (((x.ndim - 1,), (0,)), ((), ())))
    if self.use_bias:
      y = y + self.param('bias', self.bias_init, (self.features,), jnp.float32).astype(self.dtype)
    return y


def conv1x1(features: int, fan_in: int, *, use_bias: bool = False, dtype: Dtype = jnp.float32,
            name: str | None = None, kernel_init=None) -> Conv1x1:
  """PyTorch-initialised 1x1 conv (default: U(+-1/sqrt(fan_in)) weight and bias)."""
  return Conv1x1(features, use_bias=use_bias, dtype=dtype, name=name,
                 kernel_init=kernel_init or torch_kernel_init,
                 bias_init=torch_bias_init(fan_in))


def l2_normalize(x: jax.Array, eps: float | None) -> jax.Array:
  """x / max(||x||, eps) along the last axis (F.normalize); eps=None divides by the plain norm."""
  norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
  return x / (norm if eps is None else jnp.maximum(norm, eps))


def spatial_mean(x: jax.Array) -> jax.Array:
  """f[..., h, w, C] -> f32[..., C] (accumulated in float32)."""
  return jnp.mean(x.astype(jnp.float32), axis=(-3, -2))


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
  """Global-guided Correlation Estimation (§3).

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
    g = dense(self.hidden, d, name='glo_fc')(g)
    g = nn.relu(resnet.batch_norm(train, name='glo_bn')(g))
    # Correlation head: conv+BN (no ReLU, B10), conv+BN+ReLU, conv+BN, sigmoid.
    r = _ConcatConv1x1(self.hidden, self.dtype, name='corr_conv1')(x, g)
    r = resnet.bn_apply(resnet.batch_norm(train, name='corr_bn1'), r, self.dtype)
    r = conv1x1(self.corr_hidden, self.hidden, dtype=self.dtype, name='corr_conv2')(r)
    r = nn.relu(resnet.bn_apply(resnet.batch_norm(train, name='corr_bn2'), r, self.dtype))
    r = conv1x1(1, self.corr_hidden, dtype=self.dtype, name='corr_conv3')(r)
    r = resnet.batch_norm(train, name='corr_bn3')(r.astype(jnp.float32))
    corr = jax.nn.sigmoid(r)[..., 0]  # f32[B, T, h, w]
    rc = corr[..., None].astype(self.dtype)
    x = x.astype(self.dtype)
    return x * rc, x * (1 - rc), corr


class AccumulationUnit(nn.Module):
  """The TRL memory update U(m, u) (§4): bottleneck with 1x1 convs on z = m + u, residual z.

  Per call in train mode every BN uses that call's batch statistics (over B*h*w) and updates its
  running averages once. `se=True` adds the first commit's squeeze-excitation before the
  residual add (B11). m, u f[B, h, w, D] -> f[B, h, w, D].
  """
  bottleneck: int
  se: bool = False
  se_reduction: int = 16
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, m: jax.Array, u: jax.Array, train: bool) -> jax.Array:
    z = (m + u).astype(self.dtype)
    d = z.shape[-1]
    y = conv1x1(self.bottleneck, d, dtype=self.dtype, name='conv1')(z)
    y = nn.relu(resnet.bn_apply(resnet.batch_norm(train, name='bn1'), y, self.dtype))
    y = conv1x1(self.bottleneck, self.bottleneck, dtype=self.dtype, name='conv2')(y)
    y = nn.relu(resnet.bn_apply(resnet.batch_norm(train, name='bn2'), y, self.dtype))
    y = conv1x1(d, self.bottleneck, dtype=self.dtype, name='conv3')(y)
    y = resnet.batch_norm(train, name='bn3')(y.astype(jnp.float32))
    if self.se:
      s = jnp.mean(y, axis=(1, 2))
      s = nn.relu(dense(d // self.se_reduction, d, use_bias=False, name='se_fc1')(s))
      s = jax.nn.sigmoid(dense(d, d // self.se_reduction, use_bias=False, name='se_fc2')(s))
      y = y * s[:, None, None, :]
    return nn.relu(y.astype(self.dtype) + z)


class TRLDirection(nn.Module):
  """One direction of Temporal Reciprocal Learning (§4); `reverse=True` is the backward branch.

  For each step (frame t = k forward, t = T-1-k backward), with memory M (initially mean_t X^l):
    a = ReLU(phi1(M)), c = ReLU(phi2(X^h_t)), s = mean_ij (a - c)^2,
    alpha = sigmoid(W2 ReLU(W1 s)), e_t = mean_ij X^h_t * (1 + alpha),
    M <- U(M, X^l_t)   (after the enhancement read: frame t enhances with the OLD memory).
  Returns e f32[B, T, D] (in frame order) and GAP(M_T) f32[B, D].
  """
  features: int = 2048  # D
  reduction: int = 16
  accumulation: str = 'plain'
  reverse: bool = False
  scan: bool = True
  dtype: Dtype = jnp.float32

  def setup(self):
    self.phi1 = conv1x1(self.features, self.features, use_bias=True, dtype=self.dtype)
    self.phi2 = conv1x1(self.features, self.features, use_bias=True, dtype=self.dtype)
    hidden = self.features // self.reduction
    self.attention_fc1 = dense(hidden, self.features, use_bias=False)
    self.attention_fc2 = dense(self.features, hidden, use_bias=False)
    self.accumulate = AccumulationUnit(self.features // 4, se=self.accumulation == 'se',
                                       se_reduction=self.reduction, dtype=self.dtype)

  def __call__(self, xh: jax.Array, xl: jax.Array, train: bool):
    """xh, xl f[B, T, h, w, D] -> (e f32[B, T, D], GAP(M_T) f32[B, D])."""
    # phi2 and the GAP of X^h do not depend on the memory: one batched conv over all frames.
    c = nn.relu(self.phi2(xh))
    xh_gap = spatial_mean(xh)
    memory = jnp.mean(xl.astype(jnp.float32), axis=1).astype(self.dtype)
    xs = tuple(jnp.swapaxes(a, 0, 1) for a in (c, xh_gap, xl))  # time-major

    def step(mdl: TRLDirection, m, inputs, train=train):
      c_t, xh_gap_t, xl_t = inputs
      a = nn.relu(mdl.phi1(m))
      s = spatial_mean((a.astype(jnp.float32) - c_t.astype(jnp.float32)) ** 2)
      alpha = jax.nn.sigmoid(mdl.attention_fc2(nn.relu(mdl.attention_fc1(s))))
      e = xh_gap_t * (1.0 + alpha)  # == mean_ij of X^h_t * (1 + alpha)
      return mdl.accumulate(m, xl_t, train), e

    if self.scan:
      if self.is_initializing():
        # The scan carries batch_stats, so they must exist before it; an eval-mode step creates
        # them (and the params) without touching the running averages.
        step(self, memory, tuple(a[0] for a in xs), train=False)
      # Training updates the running averages at every step (carried); in eval they are
      # read-only constants (a carried immutable collection is not supported by nn.scan).
      scanned = nn.scan(step,
                        variable_broadcast='params' if train else ['params', 'batch_stats'],
                        variable_carry='batch_stats' if train else False,
                        split_rngs={'params': False}, in_axes=0, out_axes=0,
                        reverse=self.reverse)
      memory, e = scanned(self, memory, xs)
    else:
      t_len = xh.shape[1]
      order = range(t_len - 1, -1, -1) if self.reverse else range(t_len)
      e = [None] * t_len
      for t in order:
        memory, e[t] = step(self, memory, tuple(a[t] for a in xs))
      e = jnp.stack(e)
    return jnp.swapaxes(e, 0, 1), spatial_mean(memory)


class Siamese(nn.Module):
  """The official 'Siamese' module: self-attention temporal pooling + pair verifier (§5.2-3)."""
  attention_dim: int = 512

  def setup(self):
    fan_out_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'uniform')
    zeros = nn.initializers.zeros
    self.query = nn.Dense(self.attention_dim, kernel_init=fan_out_init, bias_init=zeros)
    self.key = nn.Dense(self.attention_dim, kernel_init=fan_out_init, bias_init=zeros)
    self.query_bn = resnet.batch_norm(None)
    self.key_bn = resnet.batch_norm(None)
    self.verifier_bn = resnet.batch_norm(None)
    self.verifier = nn.Dense(2, kernel_init=nn.initializers.normal(0.001), bias_init=zeros)

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
    a = jax.nn.softmax(jnp.einsum('nic,njc->nij', q, k), axis=-1)
    y = jnp.einsum('nj,njd->nd', a.sum(axis=1), z.astype(jnp.float32))
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
    if self.accumulation not in ('plain', 'se'):
      raise ValueError(f"config.model.accumulation={self.accumulation!r}; expected 'plain' "
                       "or 'se'")
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

    z_corr = resnet.batch_norm(train, name='corr_bn')(f_corr.reshape(b * t, d))
    z_corr = l2_normalize(z_corr, 1e-12).reshape(b, t, d)
    z_uncorr = l2_normalize(resnet.batch_norm(train, name='uncorr_bn')(f_uncorr), 1e-12)

    siamese = Siamese(self.attention_dim, name='siamese')
    if not train:
      pooled = siamese.attention_pool(z_corr, False)
      if self.is_initializing():  # the verifier is used in training only; create its variables
        siamese.verify(pooled[:1], pooled[:1], False)
      descriptor = jnp.concatenate([z_uncorr, pooled, z_corr.mean(axis=1)], axis=-1)
      return {'descriptor': descriptor, 'correlation_map': corr}

    # Probes and galleries are pooled in two calls (separate BN batches and running-stat
    # updates, §5.2); video-level outputs are in pair order [probes; galleries].
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
def scaled(size: int, width: int) -> int:
  """A hidden size given for width 64, scaled to `width` (at least 1)."""
  return max(1, round(size * width / REFERENCE_WIDTH))


def build(model_cfg, num_classes: int = 0) -> GRL:
  """GRL module from `config.model` (fields in the module docstring). num_classes is unused:
  GRL has no classifier (its identity losses are OIM lookup tables owned by the objective)."""
  del num_classes
  stage_sizes = resnet.stage_sizes_from_config(model_cfg)
  width = int(cfg_get(model_cfg, 'resnet_width', 64))
  dtype_name = cfg_get(model_cfg, 'dtype', 'float32')
  if dtype_name not in DTYPES:
    raise ValueError(f'config.model.dtype={dtype_name!r}; expected one of {sorted(DTYPES)}')
  return GRL(
      stage_sizes=tuple(int(s) for s in stage_sizes),
      width=width,
      last_stride=int(cfg_get(model_cfg, 'last_stride', 1)),
      dtype=DTYPES[dtype_name],
      accumulation=cfg_get(model_cfg, 'accumulation', 'plain'),
      gce_hidden=scaled(int(cfg_get(model_cfg, 'gce_hidden', 1024)), width),
      corr_hidden=scaled(int(cfg_get(model_cfg, 'corr_hidden', 256)), width),
      attention_dim=scaled(int(cfg_get(model_cfg, 'attention_dim', 512)), width),
      trl_reduction=int(cfg_get(model_cfg, 'trl_reduction', 16)),
      trl_scan=bool(cfg_get(model_cfg, 'trl_scan', True)),
  )


@register('grl')
def grl_spec() -> ModelSpec:
  def objective(loss_cfg, num_classes):
    from grl_jax.objectives import GRLObjective  # lazy: owned by the objectives helper
    return GRLObjective(loss_cfg, num_classes)
  return ModelSpec(build=build, objective=objective, descriptor_distance='dot')
