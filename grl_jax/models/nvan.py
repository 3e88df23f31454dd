"""NVAN and STE-NVAN (Liu et al., BMVC 2019) as the released code builds them.

Official code: jackie840129/STE-NVAN (HEAD 3042bc8), `net/resnet.py` (blocks, backbones) and
`net/models.py` (BNNeck head).

Two registered models:

* `nvan`: ResNet-50 (last stride 1, no ReLU after the stem BN, as released) with embedded-Gaussian
  space-time non-local (NL) blocks after bottlenecks 2, 3 of layer2 and 3, 4, 5 of layer3
  (`non_layers=(0, 2, 3, 0)`), 3D average pooling over (T, H, W) and a BNNeck.
* `ste_nvan`: the same positions with stripe non-local blocks (16 horizontal stripes; pool, then
  embed, broadcast back) whose attention runs within consecutive frame pairs, and a stride-2
  temporal max pool after layer2 and after layer3 (T: 8 -> 4 -> 2). `nl_temporal_groups='clip'`
  switches to the temporally global attention drawn in the paper's figure (an ablation; the
  released checkpoint uses 'pairs').

Frames are processed as a clip-major batch of images [B*T, H, W, C] (rows b*T + t), exactly like
the official code, so pairs (2i, 2i+1) never cross a clip when T is even.

Outputs (BNNeck contract): train -> `feature` f32[B, 2048] (pre-BN 3D-pooled feature, the
triplet input), `logits` f32[B, num_classes]; eval -> `descriptor` f32[B, 2048], the BNNeck output
with running statistics (the official test feature; compared with cosine distance), plus
`feature`.

Model config fields (`config.model`, read strictly: an unknown field is a ConfigError; the
defaults are the `NVAN` dataclass fields, listed by `model_defaults(variant)`):
  resnet_depth (50), resnet_width (64: stem width; tests use tiny widths), last_stride (1),
  stem_relu (False: the released code has no ReLU after bn1), non_layers ((0, 2, 3, 0): NL blocks
  after the last k bottlenecks of layer1..4), stripes (16, STE-NVAN), nl_temporal_groups
  ('pairs' | 'clip', STE-NVAN), nl_query_chunk (1024; 0 = materialise the whole affinity),
  stage_sizes (overrides resnet_depth; tests), dtype ('float32' | 'bfloat16': convolutions;
  θ, φ, the attention logits and softmax are always float32).
  The classifier exists only in the training graph: initialise with `train=True`.

Attention memory (benchmarks/model_cost.py, XLA CPU buffer assignment of one training step at
the recipe batch, 32 clips x 8 frames x 256 x 128): the layer2 affinity is 4096 x 4096 per clip
(2 GiB per block for the batch, plus its softmax kept for the backward pass). Materialised whole
(`nl_query_chunk=0`) the step needs 41.1 GiB of temporaries; with queries in chunks of 1024 rows,
each chunk recomputed in the backward pass (`softmax_attention`), 29.9 GiB (the trunk alone:
23.6 GiB). Softmax rows are independent, so chunking changes no result, only memory; a
flash-style online softmax over key blocks is not needed because a whole key row (4096) is
small. The recompute costs one extra forward of the attention (~17 GMACs per clip).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from grl_jax import schema
from grl_jax.errors import ConfigError
from grl_jax.models import ModelSpec, fields, layers, register, resnet
from grl_jax.models.layers import softmax_attention, torch_dense, zero_init_bn

Array = jax.Array


# ------------------------------------------------------------------------------------------------
# Non-local blocks.


class NonLocalBlock(nn.Module):
  """Embedded-Gaussian non-local block over token groups (Wang et al.), as STE-NVAN codes it.

  Z = X + BN(W · softmax(θ(X) φ(X)ᵀ) g(X)), θ, φ, g: 1x1x1 convs C -> C/2 with bias, W: C/2 -> C
  with bias, BN zero-initialised (γ = β = 0) so the block is the identity at initialisation.
  The BN statistics run over every token of every group (BatchNorm3d over (B, T, H, W)).

  Input/Output: x [G, N, C] (G groups, e.g. clips, of N = T·H·W tokens).
  """
  inter_channels: int | None = None
  query_chunk: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    c = x.shape[-1]
    ci = self.inter_channels or max(c // 2, 1)
    # θ and φ in float32 even under a bfloat16 trunk: the unscaled logits θφᵀ are O(10²-10³),
    # and bf16 embeddings would move them by whole units.
    xf = x.astype(jnp.float32)
    theta = torch_dense(ci, c, name='theta', dtype=jnp.float32)(xf)
    phi = torch_dense(ci, c, name='phi', dtype=jnp.float32)(xf)
    g = torch_dense(ci, c, name='g', dtype=self.dtype)(x)
    y = softmax_attention(theta, phi, g, self.query_chunk).astype(self.dtype)
    w_y = torch_dense(c, ci, name='w_conv', dtype=self.dtype)(y)
    w_y = layers.bn_apply(zero_init_bn(train, 'w_bn'), w_y, self.dtype)
    return (w_y + x).astype(x.dtype)


def stripe_pool(x: Array, stripes: int) -> Array:
  """Mean over each of `stripes` horizontal stripes (rows and full width), as STE-NVAN's SR.

  x: [G, T, H, W, C] -> [G, T, S, C]; stripe s covers rows [s·H/S, (s+1)·H/S).
  """
  g, t, h, w, c = x.shape
  if h % stripes:
    raise ValueError(f'stripe non-local: feature height {h} is not divisible by '
                     f'model.stripes={stripes}')
  x = x.reshape(g, t, stripes, h // stripes, w, c)
  return jnp.mean(x.astype(jnp.float32), axis=(3, 4)).astype(x.dtype)


def stripe_broadcast(y: Array, height: int, width: int) -> Array:
  """Inverse layout of `stripe_pool`: [G, T, S, C] -> [G, T, H, W, C], each stripe's vector
  repeated over its H/S rows and all W columns (top stripe to the top rows)."""
  g, t, s, c = y.shape
  y = jnp.broadcast_to(y[:, :, :, None, None, :], (g, t, s, height // s, width, c))
  return y.reshape(g, t, height, width, c)


class StripeNonLocalBlock(nn.Module):
  """Stripe non-local block of STE-NVAN (official `Stripe_NonLocalBlock`, 'mean').

  P = stripe-mean(X) ∈ [G, T_g, S, C]; θ, φ, g act on P (pool first, then embed), the T_g·S
  stripe tokens of a group attend to each other (softmax over keys, no scaling), W + zero-init
  BN (statistics over all stripe tokens), then the per-stripe output is broadcast back over the
  stripe's rows and columns and added: Z = X + broadcast(BN(W · softmax(θ φᵀ) g)).

  Input/Output: x [G, T_g, H, W, C].
  """
  stripes: int = 16
  inter_channels: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    gr, t, h, w, c = x.shape
    ci = self.inter_channels or max(c // 2, 1)
    p = stripe_pool(x, self.stripes).reshape(gr, t * self.stripes, c)
    pf = p.astype(jnp.float32)   # float32 logits, as in NonLocalBlock.
    theta = torch_dense(ci, c, name='theta', dtype=jnp.float32)(pf)
    phi = torch_dense(ci, c, name='phi', dtype=jnp.float32)(pf)
    g = torch_dense(ci, c, name='g', dtype=self.dtype)(p)
    y = softmax_attention(theta, phi, g).astype(self.dtype)
    w_y = torch_dense(c, ci, name='w_conv', dtype=self.dtype)(y)
    w_y = layers.bn_apply(zero_init_bn(train, 'w_bn'), w_y, self.dtype)
    w_y = stripe_broadcast(w_y.reshape(gr, t, self.stripes, c), h, w)
    return (w_y + x).astype(x.dtype)


def temporal_max_pool(frames: Array) -> Array:
  """Stride-2 temporal max pool of a clip-major frame batch (STE-NVAN's TR, as coded).

  frames: [B·T, H, W, C] (rows b·T + t, T even) -> [B·T/2, H, W, C], row b·T/2 + i being the
  element-wise max of frames 2i and 2i+1 of clip b.
  """
  n = frames.shape[0]
  if n % 2:
    raise ValueError(f'temporal max pool: {n} frames in the batch cannot be paired')
  return jnp.max(frames.reshape(n // 2, 2, *frames.shape[1:]), axis=1)


# ------------------------------------------------------------------------------------------------
# The network.

def nl_positions(num_blocks: int, num_nl: int) -> tuple[int, ...]:
  """Bottleneck indices followed by a non-local block: the last `num_nl` of the stage.

  Official `NL_s_idx = sorted(layers[s] - (i+1) for i < non_layers[s])`; NL_s.i follows the
  i-th of them, e.g. layer3 (6 blocks, 3 NL): after b3, b4, b5.
  """
  if not 0 <= num_nl <= num_blocks:
    raise ConfigError(f'config.model.non_layers: {num_nl} non-local blocks requested in a '
                      f'stage of {num_blocks} bottlenecks')
  return tuple(range(num_blocks - num_nl, num_blocks))


class NVAN(nn.Module):
  """NVAN / STE-NVAN: ResNet + non-local blocks + 3D average pooling + BNNeck.

  frames f[B, T, H, W, 3] (ImageNet-normalised RGB) -> dict (see module docstring).

  Attributes:
    num_classes: training identities (classifier width).
    stage_sizes, width, last_stride, stem_relu: the ResNet trunk (`grl_jax.models.resnet`).
    non_layers: NL blocks after the last k bottlenecks of each of the 4 stages.
    nl_type: 'full' (NVAN space-time NL over all T·H·W positions of a group) or 'stripe'
      (STE-NVAN stripe NL).
    stripes: horizontal stripes of the stripe NL.
    temporal_reduction: stride-2 temporal max pool after layer2 and layer3 (STE-NVAN).
    nl_temporal_groups: frames that attend to each other: 'clip' (all current frames of a clip)
      or 'pairs' (consecutive frame pairs, the released STE-NVAN code).
    nl_query_chunk: query rows per attention chunk of the 'full' NL (0 = no chunking).
    dtype: compute dtype of convolutions.
  """
  num_classes: int
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  last_stride: int = 1
  stem_relu: bool = False
  non_layers: Sequence[int] = (0, 2, 3, 0)
  nl_type: str = 'full'
  stripes: int = 16
  temporal_reduction: bool = False
  nl_temporal_groups: str = 'clip'
  nl_query_chunk: int = 1024
  dtype: Any = jnp.float32

  def _check(self, t: int) -> None:
    owner = f'{type(self).__name__}'
    schema.check_choice(self.nl_type, schema.NL_TYPES, f'{owner}.nl_type')
    schema.check_choice(self.nl_temporal_groups, schema.NL_TEMPORAL_GROUPS,
                        'config.model.nl_temporal_groups')
    if len(self.non_layers) != len(self.stage_sizes):
      raise ValueError(f'{owner}: model.non_layers={tuple(self.non_layers)} needs one entry per '
                       f'stage ({len(self.stage_sizes)})')
    # Pairs and stride-2 pools must stay inside a clip: T = 8 -> 4 -> 2 in the recipe.
    if self.temporal_reduction and t % 4:
      raise ValueError(f'{owner}: temporal reduction halves T twice; clip length T={t} must be '
                       f'a multiple of 4 (recipe: 8)')
    if self.nl_temporal_groups == 'pairs' and t % 2:
      raise ValueError(f'{owner}: pairwise non-local needs an even clip length, got T={t}')

  def _non_local(self, stage: int, index: int, x: Array, t: int, train: bool) -> Array:
    """One NL block on the frame batch x [B·t, h, w, C] (clip-major)."""
    n, h, w, c = x.shape
    group = 2 if self.nl_temporal_groups == 'pairs' else t
    name = f'nl{stage}_{index}'
    xg = x.reshape(n // group, group, h, w, c)
    if self.nl_type == 'full':
      y = NonLocalBlock(query_chunk=self.nl_query_chunk, dtype=self.dtype, name=name)(
          xg.reshape(n // group, group * h * w, c), train)
    else:
      y = StripeNonLocalBlock(self.stripes, dtype=self.dtype, name=name)(xg, train)
    return y.reshape(n, h, w, c)

  @nn.compact
  def __call__(self, frames: Array, train: bool = False) -> dict[str, Array]:
    if frames.ndim != 5:
      raise ValueError(f'{type(self).__name__}: frames must be [B, T, H, W, 3], got '
                       f'{frames.shape}')
    b, t = frames.shape[:2]
    self._check(t)
    positions = [nl_positions(n, k) for n, k in zip(self.stage_sizes, self.non_layers)]

    def after_block(stage: int, j: int, x: Array) -> Array:
      nonlocal t
      if j in positions[stage - 1]:
        x = self._non_local(stage, positions[stage - 1].index(j), x, t, train)
      if (self.temporal_reduction and stage in (2, 3)
          and j == self.stage_sizes[stage - 1] - 1):
        x = temporal_max_pool(x)
        t //= 2
      return x

    x = resnet.trunk(frames.reshape(b * t, *frames.shape[2:]), train,
                     stage_sizes=self.stage_sizes, width=self.width,
                     last_stride=self.last_stride, stem_relu=self.stem_relu, dtype=self.dtype,
                     after_block=after_block)
    # 3D average pooling over (T', h, w) of each clip (`--temporal Done`).
    feature = jnp.mean(x.astype(jnp.float32).reshape(b, -1, x.shape[-1]), axis=1)
    # BNNeck: beta frozen at 0 in the official code (requires_grad False, init 0) == no bias.
    bn = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32,
                      name='bnneck')(feature)
    if not train:
      # The classifier is train-only (initialise with train=True): eval and inference never
      # need the identity count.
      return {'descriptor': bn, 'feature': feature}
    # bf16 operands under bfloat16, float32 accumulation and logits (the loss's input).
    logits = nn.Dense(self.num_classes, use_bias=False, dtype=self.dtype,
                      dot_general=layers.dot_general_f32,
                      kernel_init=nn.initializers.normal(0.001), name='classifier')(bn)
    return {'feature': feature, 'logits': logits}


# ------------------------------------------------------------------------------------------------
# config.model <-> NVAN fields, config checks, registry.

# What differs between the two registered names: fixed architecture switches (not config
# fields) and the default of `nl_temporal_groups`.
_VARIANTS = {
    'nvan': dict(nl_type='full', temporal_reduction=False, nl_temporal_groups='clip'),
    'ste_nvan': dict(nl_type='stripe', temporal_reduction=True, nl_temporal_groups='pairs'),
}
_FIXED = ('nl_type', 'temporal_reduction')
_TRUNK = ('stage_sizes', 'width', 'last_stride')


def model_defaults(variant: str = 'nvan') -> dict:
  """config.model of `variant`: the NVAN dataclass defaults, with the variant's own."""
  d = fields.defaults_of(NVAN, exclude=_TRUNK + _FIXED)
  d['nl_temporal_groups'] = _VARIANTS[variant]['nl_temporal_groups']
  d['dtype'] = layers.dtype_name(d['dtype'])
  return {'name': variant, **resnet.trunk_defaults(NVAN), **d}


def build_model(model_cfg: Any, num_classes: int, variant: str | None = None) -> NVAN:
  """NVAN / STE-NVAN from `config.model` (fields in the module docstring)."""
  variant = variant or fields.items(model_cfg, 'config.model').get('name') or 'nvan'
  schema.check_choice(variant, tuple(_VARIANTS), 'config.model.name')
  v = fields.read(model_cfg, model_defaults(variant), 'config.model', f'model {variant!r}')
  schema.check_choice(v['name'], (variant,), 'config.model.name')
  trunk = resnet.trunk_kwargs(v)
  non_layers = tuple(int(k) for k in v['non_layers'])
  if len(non_layers) != len(trunk['stage_sizes']):
    raise ConfigError(f'config.model.non_layers={non_layers} needs one entry per stage of '
                      f"stage_sizes={trunk['stage_sizes']}")
  for n, k in zip(trunk['stage_sizes'], non_layers):
    nl_positions(n, k)
  return NVAN(
      num_classes=int(num_classes),
      **trunk,
      stem_relu=bool(v['stem_relu']),
      non_layers=non_layers,
      nl_type=_VARIANTS[variant]['nl_type'],
      stripes=int(v['stripes']),
      temporal_reduction=_VARIANTS[variant]['temporal_reduction'],
      nl_temporal_groups=schema.check_choice(str(v['nl_temporal_groups']),
                                             schema.NL_TEMPORAL_GROUPS,
                                             'config.model.nl_temporal_groups'),
      nl_query_chunk=int(v['nl_query_chunk']),
      dtype=layers.compute_dtype(v['dtype']),
  )


def check_config(config: Any, variant: str) -> None:
  """NVAN / STE-NVAN shape constraints on the full config (ConfigError naming the fields)."""
  from grl_jax import objectives  # Lazy: keeps model import light.
  m = build_model(config.model, 1, variant)
  loss = objectives.BNNeckObjective(config.get('loss'), 1)
  if loss.triplet_feature != 'feature':
    raise ConfigError(f'config.loss.triplet_feature={loss.triplet_feature!r}: {variant} '
                      "outputs only 'feature' (pre-BN) for the triplet loss")
  if m.nl_query_chunk < 0:
    raise ConfigError(f'config.model.nl_query_chunk={m.nl_query_chunk}: expected >= 0')
  height, t = int(config.data.height), int(config.data.seq_len)
  num_stages = len(m.stage_sizes)
  if m.temporal_reduction and t % 4:
    raise ConfigError(f'config.data.seq_len={t}: {variant} halves the clip length after '
                      'layer2 and layer3 (temporal max pool of frame pairs), so it must be a '
                      'multiple of 4 (recipe: 8)')
  for s, k in enumerate(m.non_layers, start=1):
    if k and m.nl_temporal_groups == 'pairs' and t % 2:
      raise ConfigError(f'config.model.nl_temporal_groups=pairs: the non-local blocks of '
                        f'layer{s} see {t} frames per clip (config.data.seq_len='
                        f'{config.data.seq_len}), which cannot be paired')
    h = resnet.feature_size(height, s, num_stages, m.last_stride)
    if k and m.nl_type == 'stripe' and h % m.stripes:
      raise ConfigError(f'config.model.stripes={m.stripes} must divide the layer{s} feature '
                        f'height {h} (from config.data.height={height}), where stripe '
                        'non-local blocks run')
    if m.temporal_reduction and s in (2, 3):
      t //= 2


def _bnneck_objective(loss_cfg: Any, num_classes: int):
  from grl_jax import objectives  # Lazy: keeps model import light.
  return objectives.BNNeckObjective(loss_cfg, num_classes)


def _loss_defaults() -> dict:
  from grl_jax import objectives  # Lazy: keeps model import light.
  return objectives.BNNeckObjective.defaults()


def _spec(variant: str) -> ModelSpec:
  # The official evaluation L2-normalises the BNNeck outputs and ranks by -cos (util/cmc.py).
  return ModelSpec(build=functools.partial(build_model, variant=variant),
                   objective=_bnneck_objective, descriptor_distance='cosine',
                   model_defaults=functools.partial(model_defaults, variant),
                   loss_defaults=_loss_defaults,
                   check_config=functools.partial(check_config, variant=variant))


@register('nvan')
def nvan_spec() -> ModelSpec:
  return _spec('nvan')


@register('ste_nvan')
def ste_nvan_spec() -> ModelSpec:
  return _spec('ste_nvan')
