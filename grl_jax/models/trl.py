"""GRL's Temporal Reciprocal Learning (official `TRLBlock`) and the 1x1 conv it is built from.

One TRL direction walks the T frames of a clip with a memory M f[B, h, w, D]: it reads a
channel attention from M to enhance the correlated map X^h_t, then accumulates the
uncorrelated map X^l_t into M. GRL (grl_jax/models/grl.py) runs it forward and backward.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from grl_jax.models import layers
from grl_jax.models.layers import torch_bias_init, torch_kernel_init

Dtype = Any


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


def spatial_mean(x: jax.Array) -> jax.Array:
  """f[..., h, w, C] -> f32[..., C] (accumulated in float32)."""
  return jnp.mean(x.astype(jnp.float32), axis=(-3, -2))


class AccumulationUnit(nn.Module):
  """The TRL memory update U(m, u): bottleneck with 1x1 convs on z = m + u, residual z.

  Per call in train mode every BN uses that call's batch statistics (over B*h*w) and updates its
  running averages once. `se=True` adds the first commit's squeeze-excitation before the
  residual add (HEAD removed it). m, u f[B, h, w, D] -> f[B, h, w, D].
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
    y = nn.relu(layers.bn_apply(layers.batch_norm(train, name='bn1'), y, self.dtype))
    y = conv1x1(self.bottleneck, self.bottleneck, dtype=self.dtype, name='conv2')(y)
    y = nn.relu(layers.bn_apply(layers.batch_norm(train, name='bn2'), y, self.dtype))
    y = conv1x1(d, self.bottleneck, dtype=self.dtype, name='conv3')(y)
    y = layers.batch_norm(train, name='bn3')(y.astype(jnp.float32))
    if self.se:
      s = jnp.mean(y, axis=(1, 2))
      r = d // self.se_reduction
      s = nn.relu(layers.torch_dense(r, d, use_bias=False, name='se_fc1')(s))
      s = jax.nn.sigmoid(layers.torch_dense(d, r, use_bias=False, name='se_fc2')(s))
      y = y * s[:, None, None, :]
    return nn.relu(y.astype(self.dtype) + z)


class TRLDirection(nn.Module):
  """One direction of Temporal Reciprocal Learning; `reverse=True` is the backward branch.

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
    # The channel attention feeds a sigmoid: `dtype` operands, float32 result.
    self.attention_fc1 = layers.torch_dense(hidden, self.features, use_bias=False,
                                            dtype=self.dtype, f32_result=True)
    self.attention_fc2 = layers.torch_dense(self.features, hidden, use_bias=False,
                                            dtype=self.dtype, f32_result=True)
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
