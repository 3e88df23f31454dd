"""IAUnet for video (Hou et al., TNNLS 2020): CIAU + STIAU blocks on a per-frame ResNet-50.

The blocks follow the official code
(blue-blue272/ImgReID-IAnet, HEAD e104e28: `models/IAU3D.py` IAUBlock3D, `models/STIAU.py`
STIAUModule) equation by equation. No video network, trainer or tester of IAUnet was ever
released, so the following are INFERRED (from the image IAUnet and the same group's video code,
TCLNet's inflated ResNet-50 `inflate.py`) and marked so in the code:

* [INFERRED] backbone: an "inflated" ResNet-50 whose convolutions all have temporal kernel 1, i.e.
  the torchvision ResNet-50 (stem ReLU, last stride 1) applied to every frame; the IAU blocks
  are its only temporal operators. One IAUBlock3D after res3 (layer2, C=512) and one after res4
  (layer3, C=1024), as in the image IAUnet.
* [INFERRED] head: 3D average pooling over (T, H, W) -> BatchNorm1d (trainable bias) -> Linear
  with bias (the image IAUnet head applied to the clip feature). The test feature is the
  post-BN feature (the image code's `f`), compared with cosine distance.

Blocks (input X f[B, T, H, W, C], clip-major frames, C' = C/2):

* CIAU (channel x time interaction, IAUBlock3D first half):
    G = X as [B, C·T, H·W] (rows = (channel, frame) pairs), A = softmax_rows(G Gᵀ) (no
    scaling, no embeddings), Y = A G, Z = X + BN(Conv1x1x1_{C->C}(Y)), BN zero-initialised.
* STIAU (spatio-temporal part interaction):
    u = mean_{t,h,w} Z; a = sigmoid(BN(Conv_{C->4}(Z))) (4 part maps per frame);
    P_{t,k} = Σ_{hw} a_{t,k} Z_t (weighted sum, not mean); X_{t,k} = g(P_{t,k}), ū = g(u)
    (shared 1x1 g: C -> C', bias, no BN); nodes n = T·4 (index frame·4 + part);
    e_ij = BN₁(w_rᵀ [|X_i − X_j| ; ū] + b_r) − 1e8·M_ij, W = softmax_j(e) (Wcompute);
    S = ReLU(BN(Conv_{2C'->C'}([X ; W X]))) (Gconv);
    v_t = [mean_k S_{t,k} ; ū]; Z_out = Z + BN(Conv_{C->C}(v_t)) broadcast over (h, w) per
    frame, BN zero-initialised. M masks self-loops and (different frame, different part)
    edges: a node talks to the other parts of its frame and to its own part in other frames.

Outputs: train -> `feature` f32[B, 2048] (pre-BN pooled), `bn_feature` (post-BN, the official
triplet input: recipe sets loss.triplet_feature='bn_feature'), `logits`, `part_maps3`,
`part_maps4` (a f32[B, T, h, w, 4] of the two blocks, for a part-mask loss; the official
video supervision is unknown, so no loss uses them). Eval -> `descriptor` (post-BN) and
`feature`.

Model config fields (read strictly: an unknown field is a ConfigError; the defaults are the
`IAUnet` dataclass fields, listed by `model_defaults()`): resnet_depth (50), resnet_width (64),
last_stride (1), stem_relu (True), seq_len (4: STIAU mask size; clips longer than this are an
error, as in the official code), parts (4), ciau_query_chunk (0 = whole (C·T)² affinity),
dtype ('float32' | 'bfloat16'; CIAU logits and softmax stay float32).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from grl_jax import schema
from grl_jax.errors import ConfigError
from grl_jax.models import ModelSpec, fields, layers, register, resnet
from grl_jax.models.layers import bn_apply, softmax_attention, zero_init_bn

Array = jax.Array
# Official masking constant (logit − W_id·1e8), kept rather than −inf for bit-faithfulness.
MASK_PENALTY = 1e8


def iau_dense(features: int, fan_in: int, name: str, dtype: Any) -> nn.Dense:
  """A 1x1 conv of an IAU block: normal(0, sqrt(2 / (k·k·out_channels))) = He fan-out normal
  weight (as the official IAU blocks initialise it), PyTorch default bias."""
  return layers.torch_dense(features, fan_in, dtype=dtype, name=name,
                            kernel_init=layers.kaiming_fan_out_init)


def stiau_mask(t: int, parts: int = 4) -> np.ndarray:
  """M f32[t·parts, t·parts]: 1 on masked edges (self-loops, different frame AND different part).

  Node index = frame·parts + part (official STIAUModule.W_init; its top-left block for t < T).
  """
  same_frame = np.kron(np.eye(t), np.ones((parts, parts))).astype(bool)
  same_part = np.kron(np.ones((t, t)), np.eye(parts)).astype(bool)
  allowed = (same_frame & ~same_part) | (~same_frame & same_part)
  return (~allowed).astype(np.float32)


class CIAU(nn.Module):
  """Channel(×time) interaction + update (IAUBlock3D first half). x f[B, T, H, W, C] -> same."""
  query_chunk: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    b, t, h, w, c = x.shape
    # Rows are (channel, frame) pairs, channel-major like the official view(b, c·t, h·w).
    g = x.transpose(0, 4, 1, 2, 3).reshape(b, c * t, h * w)
    y = softmax_attention(g, g, g, self.query_chunk)
    y = y.reshape(b, c, t, h, w).transpose(0, 2, 3, 4, 1).astype(self.dtype)
    y = iau_dense(c, c, 'conv', self.dtype)(y)
    y = bn_apply(zero_init_bn(train, 'bn'), y, self.dtype)
    return (x + y).astype(x.dtype)


class STIAU(nn.Module):
  """Spatio-temporal part interaction + per-frame update (IAUBlock3D second half).

  x f[B, T, H, W, C] -> (f[B, T, H, W, C], part maps a f[B, T, H, W, parts]).
  Official names: sa_* = SA.conv.{conv,bn}, g = g, relation_* = STIAU.module_w.relation.{0,1},
  gconv_* = STIAU.module_l.fsm.{0,1}, update_* = W2.{0,1}.
  """
  seq_len: int = 4
  parts: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, Array]:
    b, t, h, w, c = x.shape
    ci = c // 2
    if t > self.seq_len:
      raise ValueError(f'STIAU: clip of T={t} frames exceeds model.seq_len={self.seq_len} (the '
                       'node mask is built for seq_len frames; use test clips of <= seq_len)')
    xf = x.astype(jnp.float32)
    u = jnp.mean(xf, axis=(1, 2, 3))                                      # [B, C]
    a = iau_dense(self.parts, c, 'sa_conv', self.dtype)(x)
    a = jax.nn.sigmoid(bn_apply(layers.batch_norm(train, name='sa_bn'), a, jnp.float32))
    # Attention-weighted SUM over the frame's positions (no division by the mask area).
    p = layers.einsum_f32('bthwk,bthwc->btkc', a, x, dtype=self.dtype)    # [B, T, parts, C]
    g = iau_dense(ci, c, 'g', self.dtype)
    nodes = g(p.astype(self.dtype)).astype(jnp.float32).reshape(b, t * self.parts, ci)
    u_bar = g(u.astype(self.dtype)).astype(jnp.float32)                   # [B, C']
    n = t * self.parts

    # Wcompute: e_ij from |X_i − X_j| and the clip's global node, BN over all B·n·n pairs.
    diff = jnp.abs(nodes[:, :, None, :] - nodes[:, None, :, :])           # [B, n, n, C']
    pair = jnp.concatenate([diff, jnp.broadcast_to(u_bar[:, None, None, :], diff.shape)], -1)
    e = iau_dense(1, 2 * ci, 'relation_conv', self.dtype)(pair.astype(self.dtype))
    e = bn_apply(layers.batch_norm(train, name='relation_bn'), e, jnp.float32)[..., 0]
    e = e - jnp.asarray(stiau_mask(t, self.parts)) * MASK_PENALTY
    weights = jax.nn.softmax(e, axis=-1)                                  # [B, n, n]

    # Gconv: S = ReLU(BN(conv([X ; W X]))), BN over the B·n nodes.
    neighbours = layers.einsum_f32('bij,bjc->bic', weights, nodes, dtype=self.dtype)
    s = iau_dense(ci, 2 * ci, 'gconv_conv', self.dtype)(
        jnp.concatenate([nodes, neighbours], -1).astype(self.dtype))
    s = nn.relu(bn_apply(layers.batch_norm(train, name='gconv_bn'), s, jnp.float32))
    s = jnp.mean(s.reshape(b, t, self.parts, ci), axis=2)                 # [B, T, C']
    v = jnp.concatenate([s, jnp.broadcast_to(u_bar[:, None, :], s.shape)], -1)  # [B, T, C]
    v = iau_dense(c, c, 'update_conv', self.dtype)(v.astype(self.dtype))
    v = bn_apply(zero_init_bn(train, 'update_bn'), v, jnp.float32)
    return (xf + v[:, :, None, None, :]).astype(x.dtype), a


class IAUBlock(nn.Module):
  """IAUBlock3D = CIAU then STIAU. x f[B, T, H, W, C] -> (same shape, part maps)."""
  seq_len: int = 4
  parts: int = 4
  query_chunk: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, Array]:
    z = CIAU(self.query_chunk, self.dtype, name='ciau')(x, train)
    return STIAU(self.seq_len, self.parts, self.dtype, name='stiau')(z, train)


class IAUnet(nn.Module):
  """Video IAUnet: per-frame ResNet-50 + IAU after res3 and res4 + BN head (module docstring)."""
  num_classes: int
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  last_stride: int = 1
  stem_relu: bool = True
  seq_len: int = 4
  parts: int = 4
  ciau_query_chunk: int = 0
  iau_stages: Sequence[int] = (2, 3)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, frames: Array, train: bool = False) -> dict[str, Array]:
    if frames.ndim != 5:
      raise ValueError(f'IAUnet: frames must be [B, T, H, W, 3], got {frames.shape}')
    b, t = frames.shape[:2]
    maps = {}

    def after_block(stage: int, j: int, x: Array) -> Array:
      # [INFERRED] after the last bottleneck of res3 / res4.
      if stage not in self.iau_stages or j != self.stage_sizes[stage - 1] - 1:
        return x
      clip = x.reshape(b, t, *x.shape[1:])
      clip, maps[f'part_maps{stage + 1}'] = IAUBlock(
          self.seq_len, self.parts, self.ciau_query_chunk, self.dtype, name=f'iau{stage}')(
              clip, train)
      return clip.reshape(b * t, *x.shape[1:])

    x = resnet.trunk(frames.reshape(b * t, *frames.shape[2:]), train,
                     stage_sizes=self.stage_sizes, width=self.width,
                     last_stride=self.last_stride, stem_relu=self.stem_relu, dtype=self.dtype,
                     after_block=after_block)
    feature = jnp.mean(x.astype(jnp.float32).reshape(b, -1, x.shape[-1]), axis=1)
    bn = layers.batch_norm(train, name='bn')(feature)
    if not train:   # The classifier is train-only (initialise with train=True).
      return {'descriptor': bn, 'feature': feature}
    logits = layers.torch_dense(self.num_classes, feature.shape[-1], dtype=self.dtype,
                                f32_result=True, name='classifier')(bn)
    return {'feature': feature, 'bn_feature': bn, 'logits': logits, **maps}


# ------------------------------------------------------------------------------------------------
# config.model <-> IAUnet fields, config checks, registry.

_TRUNK = ('stage_sizes', 'width', 'last_stride')


def model_defaults() -> dict:
  """config.model of IAUnet: the IAUnet dataclass defaults (`iau_stages` is not a field)."""
  d = fields.defaults_of(IAUnet, exclude=_TRUNK + ('iau_stages',))
  d['dtype'] = layers.dtype_name(d['dtype'])
  return {'name': 'iaunet', **resnet.trunk_defaults(IAUnet), **d}


def build_model(model_cfg: Any, num_classes: int) -> IAUnet:
  """IAUnet from `config.model` (fields in the module docstring)."""
  v = fields.read(model_cfg, model_defaults(), 'config.model', "model 'iaunet'")
  schema.check_choice(v['name'], ('iaunet',), 'config.model.name')
  seq_len = int(v['seq_len'])
  if seq_len < 1:
    raise ConfigError(f'config.model.seq_len={seq_len}: expected >= 1')
  return IAUnet(
      num_classes=int(num_classes),
      **resnet.trunk_kwargs(v),
      stem_relu=bool(v['stem_relu']),
      seq_len=seq_len,
      parts=int(v['parts']),
      ciau_query_chunk=int(v['ciau_query_chunk']),
      dtype=layers.compute_dtype(v['dtype']),
  )


def check_config(config: Any) -> None:
  """IAUnet shape constraints on the full config (ConfigError naming the fields)."""
  from grl_jax import objectives  # Lazy: keeps model import light.
  m = build_model(config.model, 1)
  loss = objectives.BNNeckObjective(config.get('loss'), 1)
  if loss.triplet_feature not in ('feature', 'bn_feature'):
    raise ConfigError(f'config.loss.triplet_feature={loss.triplet_feature!r}: IAUnet outputs '
                      "'feature' (pre-BN) and 'bn_feature' (post-BN)")
  t = int(config.data.seq_len)
  if t > m.seq_len:
    raise ConfigError(f'config.data.seq_len={t} exceeds config.model.seq_len={m.seq_len}: the '
                      'STIAU node mask is built for model.seq_len frames, and every train and '
                      f'test clip (test_sampling={config.data.test_sampling!r}) has '
                      'data.seq_len frames')
  if max(m.iau_stages) > len(m.stage_sizes):
    raise ConfigError(f'config.model.stage_sizes={m.stage_sizes}: IAUnet places IAU blocks '
                      f'after stages {tuple(m.iau_stages)}; expected at least '
                      f'{max(m.iau_stages)} stages')
  if m.parts < 1:
    raise ConfigError(f'config.model.parts={m.parts}: expected >= 1')


def _objective(loss_cfg: Any, num_classes: int):
  from grl_jax import objectives  # Lazy: keeps model import light.
  return objectives.BNNeckObjective(loss_cfg, num_classes)


def _loss_defaults() -> dict:
  from grl_jax import objectives  # Lazy: keeps model import light.
  return objectives.BNNeckObjective.defaults()


@register('iaunet')
def iaunet_spec() -> ModelSpec:
  # Image IAUnet / TCLNet test: post-BN feature, cosine distance.
  return ModelSpec(build=build_model, objective=_objective, descriptor_distance='cosine',
                   model_defaults=model_defaults, loss_defaults=_loss_defaults,
                   check_config=check_config)
