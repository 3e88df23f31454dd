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
* BatchNorm (grl_jax/models/layers.py): PyTorch momentum 0.1 == Flax decay 0.9, epsilon 1e-5,
  computed in float32 whatever the compute `dtype` is; parameters are float32.

Public API
----------
* `trunk(x, train, stage_sizes=, width=, last_stride=, stem_relu=, dtype=, after_block=None)`:
  the one trunk builder, creating `conv1`, `bn1` and `layer{s}_{j}` in the calling compact
  module: x f[N, H, W, 3] -> f[N, h, w, 32*width]. `after_block(stage, index, x) -> x` runs
  after every Bottleneck, so NVAN inserts its non-local blocks (and STE-NVAN its temporal
  pools) and IAUnet its IAU blocks there without changing the trunk's names.
  `stem(...)` and `make_stage(...)` are its two halves.
* `ResNet(stage_sizes=(3, 4, 6, 3), width=64, last_stride=1, stem_relu=True, dtype=f32)`:
  the bare trunk as a module (GRL's `backbone`).
* Layout: `stage_sizes_for(depth)` (50 -> (3, 4, 6, 3), 101 -> (3, 4, 23, 3), 152 ->
  (3, 8, 36, 3)), `block_name`, `stage_stride`, `stage_features`, `feature_size` (output
  height / width of a stage for an input size).
* Config fields shared by the families (`config.model.resnet_depth`, `stage_sizes`,
  `resnet_width`, `last_stride`): `trunk_defaults(module_cls)` and `trunk_kwargs(fields)`.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from grl_jax.errors import ConfigError
from grl_jax.models import fields, layers

Dtype = Any
AfterBlock = Callable[[int, int, jax.Array], jax.Array]

STAGE_SIZES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
EXPANSION = 4  # Bottleneck output channels = 4 * planes.


# ----------------------------------------------------------------------------------------------
# Layout.


def stage_sizes_for(depth: int) -> tuple[int, ...]:
  """Blocks per stage of a Bottleneck ResNet of the given depth."""
  if depth not in STAGE_SIZES:
    raise ConfigError(f'config.model.resnet_depth={depth!r} is not a Bottleneck ResNet; '
                      f'expected one of {sorted(STAGE_SIZES)} (or give stage_sizes)')
  return STAGE_SIZES[depth]


def block_name(stage: int, index: int) -> str:
  """Module name of Bottleneck `index` (0-based) of `stage` (1-based): 'layer{stage}_{index}'."""
  return f'layer{stage}_{index}'


def stage_stride(stage: int, num_stages: int, last_stride: int) -> int:
  """Stride of `stage` (1-based): 1, then 2, and `last_stride` for the last stage."""
  if stage == 1:
    return 1
  return last_stride if stage == num_stages else 2


def stage_features(stage: int, width: int) -> int:
  """Output channels of `stage` (1-based)."""
  return width * 2 ** (stage - 1) * EXPANSION


def feature_size(size: int, stage: int, num_stages: int, last_stride: int) -> int:
  """Height (or width) of the output of `stage` (1-based; 0 = the stem) for an input `size`.

  Every stride-2 layer here (7x7 pad 3, 3x3 pad 1, 1x1 pad 0, 3x3 max-pool pad 1) maps n to
  ceil(n / 2): 256 -> 64 after the stem, 32 / 16 / 16 after layer2 / 3 / 4 (last stride 1).
  """
  size = -(-size // 2)
  size = -(-size // 2)
  for s in range(1, stage + 1):
    stride = stage_stride(s, num_stages, last_stride)
    size = -(-size // stride)
  return size


# ----------------------------------------------------------------------------------------------
# Blocks.


def conv(features: int, kernel: int = 1, stride: int = 1, padding: int = 0, *,
         dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Conv:
  """A bias-free square conv with PyTorch's symmetric padding; float32 params, `dtype` compute
  (a map smaller than the kernel runs as a matmul: `layers.conv_general_dilated`)."""
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((padding, padding), (padding, padding)), use_bias=False,
                 dtype=dtype, param_dtype=jnp.float32, kernel_init=layers.kaiming_fan_out_init,
                 conv_general_dilated=layers.conv_general_dilated, name=name)


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
    def bn(name: str, y: jax.Array) -> jax.Array:
      return layers.bn_apply(layers.batch_norm(train, name=name), y, self.dtype)

    x = x.astype(self.dtype)
    y = conv(self.features, 1, dtype=self.dtype, name='conv1')(x)
    y = nn.relu(bn('bn1', y))
    y = conv(self.features, 3, self.stride, 1, dtype=self.dtype, name='conv2')(y)
    y = nn.relu(bn('bn2', y))
    y = conv(self.features * EXPANSION, 1, dtype=self.dtype, name='conv3')(y)
    y = bn('bn3', y)
    shortcut = x
    if self.downsample:
      shortcut = conv(self.features * EXPANSION, 1, self.stride, dtype=self.dtype,
                      name='downsample_conv')(x)
      shortcut = bn('downsample_bn', shortcut)
    return nn.relu(y + shortcut)


def stem(x: jax.Array, train: bool, *, width: int = 64, stem_relu: bool = True,
         dtype: Dtype = jnp.float32) -> jax.Array:
  """Stem built inside the calling compact method (params `conv1`, `bn1` of the caller).

  x f[N, H, W, 3] -> f[N, ceil(H/4), ceil(W/4), width].
  """
  x = conv(width, 7, 2, 3, dtype=dtype, name='conv1')(x.astype(dtype))
  x = layers.bn_apply(layers.batch_norm(train, name='bn1'), x, dtype)
  if stem_relu:
    x = nn.relu(x)
  # PyTorch pads the max-pool with -inf, which nn.max_pool does too.
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def make_stage(x: jax.Array, train: bool, *, stage: int, num_blocks: int, width: int = 64,
               stride: int = 1, dtype: Dtype = jnp.float32,
               after_block: AfterBlock | None = None) -> jax.Array:
  """Stage `stage` (1-based) built inside the calling compact method (`layer{stage}_{j}`).

  x f[N, H, W, C] -> f[N, H/stride, W/stride, stage_features(stage, width)];
  `after_block(stage, j, x)` (if given) transforms the output of every block j.
  """
  features = width * 2 ** (stage - 1)
  for j in range(num_blocks):
    # Block 0 of every stage changes the channel count (stage 1: width -> 4*width) and/or the
    # stride, so it always has the projection shortcut (torchvision's _make_layer).
    x = Bottleneck(features, stride if j == 0 else 1, j == 0, dtype,
                   name=block_name(stage, j))(x, train)
    if after_block is not None:
      x = after_block(stage, j, x)
  return x


def trunk(x: jax.Array, train: bool, *, stage_sizes: Sequence[int], width: int = 64,
          last_stride: int = 1, stem_relu: bool = True, dtype: Dtype = jnp.float32,
          after_block: AfterBlock | None = None) -> jax.Array:
  """Stem + every stage inside the calling compact method (see the module docstring).

  x f[N, H, W, 3] (ImageNet-normalised RGB) -> f[N, h, w, 32*width] in `dtype`.
  """
  x = stem(x, train, width=width, stem_relu=stem_relu, dtype=dtype)
  for s, n in enumerate(stage_sizes, start=1):
    x = make_stage(x, train, stage=s, num_blocks=n, width=width,
                   stride=stage_stride(s, len(stage_sizes), last_stride), dtype=dtype,
                   after_block=after_block)
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

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """f[N, H, W, 3] (ImageNet-normalised RGB) -> layer4 map f[N, h, w, 32*width] in `dtype`."""
    return trunk(x, train, stage_sizes=self.stage_sizes, width=self.width,
                 last_stride=self.last_stride, stem_relu=self.stem_relu, dtype=self.dtype)


# ----------------------------------------------------------------------------------------------
# The trunk's config.model fields.


def trunk_defaults(module_cls: type) -> dict[str, Any]:
  """config.model trunk fields of a module with `stage_sizes`, `width`, `last_stride` fields.

  `stage_sizes=()` means "from resnet_depth" (so recipes can carry the field and a command line
  can still override it, `--config.model.stage_sizes=(1,1,1,1)`); `resnet_depth` is the depth
  of the module's default stage sizes.
  """
  d = fields.defaults_of(module_cls)
  depth = next(k for k, v in STAGE_SIZES.items() if v == tuple(d['stage_sizes']))
  return {'resnet_depth': depth, 'stage_sizes': (), 'resnet_width': d['width'],
          'last_stride': d['last_stride']}


def trunk_kwargs(values: dict[str, Any]) -> dict[str, Any]:
  """Module kwargs (stage_sizes, width, last_stride) from read config.model fields."""
  sizes = values['stage_sizes']
  sizes = (tuple(int(v) for v in sizes) if sizes
           else stage_sizes_for(int(values['resnet_depth'])))
  return {'stage_sizes': sizes, 'width': int(values['resnet_width']),
          'last_stride': int(values['last_stride'])}
