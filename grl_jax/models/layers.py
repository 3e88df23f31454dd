"""Layers shared by the model families: PyTorch-default initialisers, BatchNorm, attention, dtype.

Every family (grl_jax/models/{resnet,grl,nvan,iaunet}.py) builds its heads from these, so a
PyTorch-matching detail (BN momentum, default Linear/Conv init, float32 statistics) is written
once. Shapes are channels-last: a "dense" over the last axis is a 1x1(x1) convolution.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from grl_jax import schema

Array = jax.Array
Dtype = Any

# ------------------------------------------------------------------------------------------------
# Initialisers.

# nn.Conv2d / nn.Linear reset_parameters: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')
# torchvision's fresh convs (kaiming_normal_, mode='fan_out', relu) and the IAU blocks'
# normal(0, sqrt(2 / (k * k * out_channels))): the same He fan-out normal.
kaiming_fan_out_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def torch_bias_init(fan_in: int) -> Callable:
  """nn.Conv / nn.Linear default bias: U(+-1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def _f32_result(plain: Callable, wide: Callable, *operands: Array) -> Array:
  """`wide(*operands)` (a float32 result from low-precision operands), differentiated as
  `plain` (the same product in the operands' dtype).

  Without this, the backward pass would multiply the float32 cotangent with the bf16 operands
  and JAX would promote those products to float32 (half speed on the tensor cores, for as many
  FLOPs as the forward product, twice); here the cotangent is rounded to the operands' dtype
  first, as for every other bf16 layer. Float32 operands: `wide` alone (the plain float32
  product, unchanged).
  """
  if all(jnp.dtype(x.dtype) == jnp.float32 for x in operands):
    return wide(*operands)

  @jax.custom_vjp
  def product(*xs):
    return wide(*xs)

  def forward(*xs):
    return wide(*xs), xs

  def backward(xs, ct):
    out, vjp = jax.vjp(plain, *xs)
    return vjp(ct.astype(out.dtype))

  product.defvjp(forward, backward)
  return product(*operands)


def dot_general_f32(lhs: Array, rhs: Array, dimension_numbers, precision=None,
                    preferred_element_type=None, **kwargs) -> Array:
  """`lax.dot_general` with a float32 result whatever the operands' dtype.

  For the small heads whose output feeds a BatchNorm, sigmoid, softmax or loss: the operands
  stay in the compute dtype (bf16 runs on the tensor cores), the accumulation and the result
  are float32, so no rounding to bf16 happens between the matmul and the float32 op after it.
  The backward products run in the operands' dtype (`_f32_result`). With float32 operands it
  is the plain float32 dot.
  """
  del preferred_element_type
  dot = functools.partial(jax.lax.dot_general, dimension_numbers=dimension_numbers,
                          precision=precision, **kwargs)
  return _f32_result(dot, functools.partial(dot, preferred_element_type=jnp.float32),
                     lhs, rhs)


def einsum_f32(spec: str, *operands: Array, dtype: Dtype) -> Array:
  """`jnp.einsum` with operands cast to `dtype`, a float32 accumulation and result and a
  backward pass in `dtype` (`_f32_result`)."""
  return _f32_result(functools.partial(jnp.einsum, spec),
                     functools.partial(jnp.einsum, spec, preferred_element_type=jnp.float32),
                     *(x.astype(dtype) for x in operands))


def torch_dense(features: int, fan_in: int, *, use_bias: bool = True,
                dtype: Dtype = jnp.float32, name: str | None = None,
                kernel_init: Callable | None = None,
                bias_init: Callable | None = None, f32_result: bool = False) -> nn.Dense:
  """A PyTorch-initialised Linear / 1x1 conv over the last axis, float32 params.

  x f[..., fan_in] -> f[..., features] in `dtype` (float32 with `f32_result`: operands in
  `dtype`, see `dot_general_f32`). Defaults: U(+-1/sqrt(fan_in)) weight and bias;
  `kernel_init` / `bias_init` replace them (e.g. He fan-out for the IAU convs).
  """
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=kernel_init or torch_kernel_init,
                  bias_init=bias_init or torch_bias_init(fan_in), name=name,
                  dot_general=dot_general_f32 if f32_result else None)


# ------------------------------------------------------------------------------------------------
# Convolution.


def conv_general_dilated(lhs: Array, rhs: Array, window_strides, padding, *,
                         lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                         feature_group_count: int = 1, precision=None, **kwargs) -> Array:
  """`lax.conv_general_dilated`, as an im2col matmul when the image is smaller than the kernel.

  lhs f[N, H, W, C] (NHWC), rhs f[kh, kw, C, F] (HWIO) -> f[N, H', W', F]. XLA swaps the two
  operands of a convolution whose kernel is larger than its input in a spatial dimension and
  runs it, on the CPU, by a generic loop: a 3x3 conv over a 4 x 2 map (the demo trunk's layer4
  at 64 x 32 input) cost 30 ms forward + backward instead of 3 ms as a matmul. That case (2-D,
  NHWC / HWIO, explicit padding, no dilation or groups) becomes pad -> the kh * kw shifted,
  strided views concatenated over channels (f[N, H', W', kh * kw * C]) -> dot with the kernel
  reshaped to f[kh * kw * C, F]: the same sums in another order (float rounding differs). Every
  other convolution, full-size inputs included, is the plain `lax.conv_general_dilated`.
  """
  plain = functools.partial(jax.lax.conv_general_dilated, window_strides=window_strides,
                            padding=padding, lhs_dilation=lhs_dilation,
                            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                            feature_group_count=feature_group_count, precision=precision,
                            **kwargs)
  unit = lambda d: d is None or all(v == 1 for v in d)  # noqa: E731
  nhwc = lambda: jax.lax.conv_dimension_numbers(  # noqa: E731  (only for a 4-D lhs)
      lhs.shape, rhs.shape, ('NHWC', 'HWIO', 'NHWC'))
  # A symbolic batch (an export with a dynamic batch) keeps the plain conv: converters such as
  # jax2onnx cannot pad a tensor whose batch is symbolic.
  if (lhs.ndim != 4 or isinstance(padding, str) or feature_group_count != 1 or kwargs
      or not all(isinstance(d, int) for d in lhs.shape)
      or not unit(lhs_dilation) or not unit(rhs_dilation)
      or jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != nhwc()
      or all(n >= k for n, k in zip(lhs.shape[1:3], rhs.shape[:2]))):
    return plain(lhs, rhs)
  (kh, kw), (sh, sw) = rhs.shape[:2], tuple(window_strides)
  x = jnp.pad(lhs, ((0, 0), *[tuple(p) for p in padding], (0, 0)))
  out_h, out_w = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
  cols = jnp.concatenate([x[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw]
                          for i in range(kh) for j in range(kw)], axis=-1)
  return jnp.einsum('nhwk,kf->nhwf', cols, rhs.reshape(-1, rhs.shape[-1]), precision=precision)


# ------------------------------------------------------------------------------------------------
# BatchNorm.


def batch_norm(train: bool | None, *, name: str | None = None, axis_name: str | None = None,
               scale_init: Callable = nn.initializers.ones) -> nn.BatchNorm:
  """PyTorch-equivalent BatchNorm (momentum 0.1 == decay 0.9, eps 1e-5), computing in float32.

  Normalises over every axis but the last (channels). gamma starts at 1 (PyTorch >= 1.2;
  PyTorch 1.0/1.1, GRL's version, drew unset ones from U(0, 1)). `train=None` leaves the mode to the
  call (`bn(x, use_running_average=not train)`), for modules defined in `setup`.
  """
  return nn.BatchNorm(use_running_average=None if train is None else not train,
                      momentum=0.9, epsilon=1e-5,
                      dtype=jnp.float32, param_dtype=jnp.float32, scale_init=scale_init,
                      axis_name=axis_name, name=name)


def zero_init_bn(train: bool, name: str) -> nn.BatchNorm:
  """The residual-update BN of a non-local / IAU block: gamma = beta = 0 (identity at init)."""
  return batch_norm(train, name=name, scale_init=nn.initializers.zeros)


def bn_apply(bn: Callable[[Array], Array], x: Array, dtype: Dtype) -> Array:
  """Normalises in float32 (statistics of bf16 activations are too coarse), returns `dtype`."""
  return bn(x.astype(jnp.float32)).astype(dtype)


# ------------------------------------------------------------------------------------------------
# Normalisation and attention.


def l2_normalize(x: Array, eps: float | None) -> Array:
  """x / max(||x||, eps) along the last axis (F.normalize); eps=None divides by the plain norm."""
  norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
  return x / (norm if eps is None else jnp.maximum(norm, eps))


def softmax_attention(q: Array, k: Array, v: Array, query_chunk: int = 0) -> Array:
  """Y = softmax(Q Kᵀ) V per group, without the 1/sqrt(d) scaling (as STE-NVAN's non-local block).

  Args:
    q, k: [G, N, D] queries and keys; v: [G, N, Dv].
    query_chunk: 0 computes the whole [G, N, N] affinity at once. Otherwise queries are processed
      in chunks of this many rows inside a `lax.map`, each chunk rematerialised in the backward
      pass (`jax.checkpoint`): the live affinity is [G, chunk, N] in both passes instead of
      [G, N, N] (which, for NVAN's layer2 at the recipe batch, is 32·4096² floats = 2.1 GB per
      block, kept for the backward pass). Softmax rows are independent, so the result is the
      same up to float rounding.

  Returns:
    [G, N, Dv] float32.
  """
  q = q.astype(jnp.float32)
  k = k.astype(jnp.float32)
  v = v.astype(jnp.float32)
  n = q.shape[1]

  def rows(q_rows: Array) -> Array:
    # No scaling makes the logits large (O(10^2..10^3)); keep them in true float32.
    logits = jnp.einsum('gqd,gkd->gqk', q_rows, k, precision=jax.lax.Precision.HIGHEST)
    attn = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum('gqk,gkd->gqd', attn, v, precision=jax.lax.Precision.HIGHEST)

  if not query_chunk or query_chunk >= n:
    return rows(q)
  num_chunks = -(-n // query_chunk)
  pad = num_chunks * query_chunk - n
  if pad:
    q = jnp.pad(q, ((0, 0), (0, pad), (0, 0)))
  g, _, d = q.shape
  q_chunks = q.reshape(g, num_chunks, query_chunk, d).transpose(1, 0, 2, 3)
  y = jax.lax.map(jax.checkpoint(rows), q_chunks)            # [chunks, G, chunk, Dv]
  y = y.transpose(1, 0, 2, 3).reshape(g, num_chunks * query_chunk, v.shape[-1])
  return y[:, :n]


# ------------------------------------------------------------------------------------------------
# Compute dtype.


def compute_dtype(name: Any, where: str = 'config.model.dtype') -> Any:
  """The jnp dtype of a `schema.DTYPES` name ('float32' -> jnp.float32); ConfigError otherwise.

  Params, BN statistics and model outputs stay float32 whatever this is; it sets the dtype of
  convolutions and activations.
  """
  if not isinstance(name, str):  # already a dtype (library callers): checked by its name
    name = dtype_name(name)
  return getattr(jnp, schema.check_choice(name, schema.DTYPES, where))


def dtype_name(dtype: Any) -> str:
  """'float32' for jnp.float32 (the config spelling of a module's `dtype` field)."""
  return jnp.dtype(dtype).name
