"""torchvision-layout ResNet (Bottleneck v1.5) in Flax Linen, NHWC, for ported ImageNet weights.

The parameter tree mirrors torchvision's state-dict keys so that conversion is a string rewrite
(`grl_jax.convert.resnet_torch_key`):

  conv1, bn1                                   <-> conv1.*, bn1.*
  layer{s}_{j}/conv{1,2,3}, bn{1,2,3}          <-> layer{s}.{j}.conv{1,2,3}.*, bn{1,2,3}.*
  layer{s}_{j}/downsample_conv, downsample_bn  <-> layer{s}.{j}.downsample.0.*, downsample.1.*

(`s` is 1-based like torchvision, `j` 0-based.) Conv kernels are HWIO (torch: OIHW), BN
`scale`/`bias` live in `params` and `mean`/`var` in `batch_stats`.

Architecture details that matter for weight parity with PyTorch:
* stem: 7x7/2 conv with explicit padding (3, 3), BN, ReLU (switchable: `stem_relu=False` for
  NVAN's official backbone), 3x3/2 max-pool with padding (1, 1) filled with -inf. Flax 'SAME'
  would pad stride-2 layers asymmetrically and shift every feature.
* Bottleneck v1.5: the stride sits on the 3x3 conv and on the 1x1 projection shortcut.
* stage strides (1, 2, 2, last_stride); re-ID uses last_stride=1 (16x8 map at 256x128 input).
* BatchNorm: PyTorch momentum 0.1 == Flax decay 0.9, epsilon 1e-5, computed in float32 whatever
  the compute `dtype` is; parameters are float32.

Public API
----------
* `ResNet(stage_sizes=(3, 4, 6, 3), width=64, last_stride=1, stem_relu=True, dtype=f32)`:
  `__call__(x f[N, H, W, 3], train) -> f[N, H/16 or /32, W/.., 32*width]` (the layer4 map).
  Stage-by-stage use from a parent module (parameter names stay those above, under the parent's
  attribute name, e.g. `backbone/layer3_2/conv1`):
    - `stem(x, train) -> f[N, H/4, W/4, width]`
    - `block(stage, index, x, train)`: one Bottleneck (`stage` 1-based, `index` 0-based)
    - `stage(stage, x, train)`: all blocks of a stage
  so NVAN can insert non-local blocks after chosen bottlenecks and STE-NVAN can pool time
  between stages. `num_blocks(stage)`, `stage_features(stage)`, `stage_stride(stage)` describe
  the layout.
* Compact-style building blocks for modules that want the ResNet parameters at their own top
  level (the "Stem" and stage builder): `stem(x, train, width=..., stem_relu=..., dtype=...)`
  creates `conv1`/`bn1` in the calling module; `make_stage(x, train, stage=...,
  num_blocks=..., width=..., stride=..., dtype=...)` creates the `layer{stage}_{j}`
  Bottlenecks; `Bottleneck(features, stride, downsample, dtype, name=block_name(stage, j))` is
  one block (features = planes; output 4 * planes).
* `stage_sizes_for(depth)`: 50 -> (3, 4, 6, 3), 101 -> (3, 4, 23, 3), 152 -> (3, 8, 36, 3).
* `conv(features, kernel, stride, padding, ...)`, `batch_norm(train, ...)` and `bn_apply(...)`:
  the PyTorch-matching layer factories, reused by the GRL/NVAN/IAUnet heads.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from grl_jax import models

Dtype = Any

STAGE_SIZES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
EXPANSION = 4  # Bottleneck output channels = 4 * planes.

# torchvision's init for fresh convs: kaiming_normal_(mode='fan_out', nonlinearity='relu').
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def stage_sizes_for(depth: int) -> tuple[int, ...]:
  """Blocks per stage of a Bottleneck ResNet of the given depth."""
  if depth not in STAGE_SIZES:
    raise ValueError(f'resnet_depth={depth!r} is not a Bottleneck ResNet; '
                     f'expected one of {sorted(STAGE_SIZES)} (or give stage_sizes)')
  return STAGE_SIZES[depth]


def stage_sizes_from_config(model_cfg) -> tuple[int, ...]:
  """`model_cfg.stage_sizes` if given and non-empty, else `stage_sizes_for(resnet_depth)`.

  An empty tuple means "derive from resnet_depth", so recipes can carry the field and command
  lines can still override it (`--config.model.stage_sizes=(1,1,1,1)`).
  """
  sizes = models.cfg_get(model_cfg, 'stage_sizes', None)
  if not sizes:
    return stage_sizes_for(int(models.cfg_get(model_cfg, 'resnet_depth', 50)))
  return tuple(int(v) for v in sizes)


def block_name(stage: int, index: int) -> str:
  """Module name of Bottleneck `index` (0-based) of `stage` (1-based): 'layer{stage}_{index}'."""
  return f'layer{stage}_{index}'


def conv(features: int, kernel: int = 1, stride: int = 1, padding: int = 0, *,
         use_bias: bool = False, dtype: Dtype = jnp.float32, name: str | None = None,
         kernel_init=conv_init, bias_init=nn.initializers.zeros) -> nn.Conv:
  """A square conv with PyTorch's symmetric explicit padding; float32 params, `dtype` compute."""
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((padding, padding), (padding, padding)), use_bias=use_bias,
                 dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init,
                 bias_init=bias_init, name=name)


def batch_norm(train: bool | None, *, name: str | None = None, axis_name: str | None = None,
               scale_init=nn.initializers.ones) -> nn.BatchNorm:
  """PyTorch-equivalent BatchNorm (momentum 0.1 == decay 0.9, eps 1e-5), computing in float32.

  gamma starts at 1 (PyTorch >= 1.2; PyTorch 1.0/1.1 drew it from U(0, 1), see grl.md B15).
  `train=None` leaves the mode to the call (`bn(x, use_running_average=not train)`), for
  modules defined in `setup`.
  """
  return nn.BatchNorm(use_running_average=None if train is None else not train,
                      momentum=0.9, epsilon=1e-5,
                      dtype=jnp.float32, param_dtype=jnp.float32, scale_init=scale_init,
                      axis_name=axis_name, name=name)


def bn_apply(bn: nn.BatchNorm, x: jax.Array, dtype: Dtype) -> jax.Array:
  """Normalises in float32 (statistics of bf16 activations are too coarse), returns `dtype`."""
  return bn(x.astype(jnp.float32)).astype(dtype)


class Bottleneck(nn.Module):
  """torchvision Bottleneck v1.5: 1x1 -> 3x3 (stride) -> 1x1 (x4), projection shortcut.

  x f[N, H, W, C] -> f[N, H/stride, W/stride, 4 * features].
  """
  features: int
  stride: int = 1
  downsample: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = x.astype(self.dtype)
    y = conv(self.features, 1, dtype=self.dtype, name='conv1')(x)
    y = nn.relu(bn_apply(batch_norm(train, name='bn1'), y, self.dtype))
    y = conv(self.features, 3, self.stride, 1, dtype=self.dtype, name='conv2')(y)
    y = nn.relu(bn_apply(batch_norm(train, name='bn2'), y, self.dtype))
    y = conv(self.features * EXPANSION, 1, dtype=self.dtype, name='conv3')(y)
    y = bn_apply(batch_norm(train, name='bn3'), y, self.dtype)
    shortcut = x
    if self.downsample:
      shortcut = conv(self.features * EXPANSION, 1, self.stride, dtype=self.dtype,
                      name='downsample_conv')(x)
      shortcut = bn_apply(batch_norm(train, name='downsample_bn'), shortcut, self.dtype)
    return nn.relu(y + shortcut)


def _stem_ops(conv1: nn.Conv, bn1: Callable[[jax.Array], jax.Array], x: jax.Array, stem_relu: bool,
              dtype: Dtype) -> jax.Array:
  x = bn_apply(bn1, conv1(x.astype(dtype)), dtype)
  if stem_relu:
    x = nn.relu(x)
  # PyTorch pads the max-pool with -inf, which nn.max_pool does too.
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def stem(x: jax.Array, train: bool, *, width: int = 64, stem_relu: bool = True,
         dtype: Dtype = jnp.float32) -> jax.Array:
  """Stem built inside the calling compact method (params `conv1`, `bn1` of the caller).

  x f[N, H, W, 3] -> f[N, ceil(H/4), ceil(W/4), width].
  """
  return _stem_ops(conv(width, 7, 2, 3, dtype=dtype, name='conv1'),
                   batch_norm(train, name='bn1'), x, stem_relu, dtype)


def _needs_downsample(index: int) -> bool:
  # Block 0 of every stage changes the channel count (stage 1: width -> 4*width) and/or the
  # stride, so it always has the projection shortcut (torchvision's _make_layer).
  return index == 0


def make_stage(x: jax.Array, train: bool, *, stage: int, num_blocks: int, width: int = 64,
               stride: int = 1, dtype: Dtype = jnp.float32) -> jax.Array:
  """Stage `stage` (1-based) built inside the calling compact method (`layer{stage}_{j}`)."""
  features = width * 2 ** (stage - 1)
  for j in range(num_blocks):
    x = Bottleneck(features, stride if j == 0 else 1, _needs_downsample(j),
                   dtype, name=block_name(stage, j))(x, train)
  return x


class ResNet(nn.Module):
  """Bottleneck ResNet trunk without avgpool/fc (see the module docstring for names and API).

  Attributes:
    stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50, (1, 1, 1, 1) for tests.
    width: stem channels / planes of stage 1 (64 = torchvision); the output has 32*width channels.
    last_stride: stride of layer4 (1 for re-ID, 2 for ImageNet).
    stem_relu: ReLU after the stem BN (torchvision: True; NVAN's official backbone: False).
    dtype: compute dtype of convs and activations (params and BN statistics stay float32).
  """
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  last_stride: int = 1
  stem_relu: bool = True
  dtype: Dtype = jnp.float32

  def setup(self):
    self.conv1 = conv(self.width, 7, 2, 3, dtype=self.dtype)
    for s in range(1, len(self.stage_sizes) + 1):
      for j in range(self.stage_sizes[s - 1]):
        setattr(self, block_name(s, j),
                Bottleneck(self.stage_features(s) // EXPANSION,
                           self.stage_stride(s) if j == 0 else 1,
                           _needs_downsample(j), self.dtype))
    # The train flag is a call argument here (`use_running_average=not train`).
    self.bn1 = batch_norm(None)

  def num_blocks(self, stage: int) -> int:
    return self.stage_sizes[stage - 1]

  def stage_features(self, stage: int) -> int:
    """Output channels of `stage` (1-based)."""
    return self.width * 2 ** (stage - 1) * EXPANSION

  def stage_stride(self, stage: int) -> int:
    if stage == 1:
      return 1
    if stage == len(self.stage_sizes):
      return self.last_stride
    return 2

  def stem(self, x: jax.Array, train: bool) -> jax.Array:
    """f[N, H, W, 3] -> f[N, H/4, W/4, width]."""
    return _stem_ops(self.conv1, functools.partial(self.bn1, use_running_average=not train),
                     x, self.stem_relu, self.dtype)

  def block(self, stage: int, index: int, x: jax.Array, train: bool) -> jax.Array:
    """Bottleneck `index` (0-based) of `stage` (1-based)."""
    return getattr(self, block_name(stage, index))(x, train)

  def stage(self, stage: int, x: jax.Array, train: bool) -> jax.Array:
    for j in range(self.num_blocks(stage)):
      x = self.block(stage, j, x, train)
    return x

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """f[N, H, W, 3] (ImageNet-normalised RGB) -> layer4 map f[N, h, w, 32*width] in `dtype`."""
    x = self.stem(x, train)
    for s in range(1, len(self.stage_sizes) + 1):
      x = self.stage(s, x, train)
    return x
