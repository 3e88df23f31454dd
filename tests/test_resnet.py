"""ResNet trunk against a hand-written numpy forward (padding, stride placement, BN)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grl_jax.models import resnet


# ----------------------------------------------------------------------------------------------
# numpy references (NHWC activations, HWIO kernels), also used by test_grl.py
def np_conv(x, k, stride=1, pad=0, bias=None):
  """PyTorch-semantics conv: symmetric zero padding, floor output size."""
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  kh, kw, _, o = k.shape
  n, h, w, _ = x.shape
  oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
  y = np.zeros((n, oh, ow, o), np.float64)
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
      y += patch @ k[i, j]
  return y if bias is None else y + bias


def np_bn(x, p, s, train=False, eps=1e-5):
  """BN over all axes but the last; eval uses running stats `s`, train the batch statistics."""
  axes = tuple(range(x.ndim - 1))
  mean, var = (x.mean(axes), x.var(axes)) if train else (s['mean'], s['var'])
  return (x - mean) / np.sqrt(var + eps) * p['scale'] + p['bias']


def np_maxpool_3x3s2(x):
  x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  n, h, w, c = x.shape
  oh, ow = (h - 3) // 2 + 1, (w - 3) // 2 + 1
  y = np.full((n, oh, ow, c), -np.inf)
  for i in range(3):
    for j in range(3):
      y = np.maximum(y, x[:, i:i + 2 * (oh - 1) + 1:2, j:j + 2 * (ow - 1) + 1:2])
  return y


def relu(x):
  return np.maximum(x, 0)


def np_bottleneck(x, p, s, stride, train=False):
  y = relu(np_bn(np_conv(x, p['conv1']['kernel']), p['bn1'], s.get('bn1'), train))
  y = relu(np_bn(np_conv(y, p['conv2']['kernel'], stride, 1), p['bn2'], s.get('bn2'), train))
  y = np_bn(np_conv(y, p['conv3']['kernel']), p['bn3'], s.get('bn3'), train)
  sc = x
  if 'downsample_conv' in p:
    sc = np_bn(np_conv(x, p['downsample_conv']['kernel'], stride), p['downsample_bn'],
               s.get('downsample_bn'), train)
  return relu(y + sc)


def np_resnet(x, v, stage_sizes, last_stride, stem_relu=True):
  p, s = v['params'], v['batch_stats']
  y = np_bn(np_conv(x, p['conv1']['kernel'], 2, 3), p['bn1'], s['bn1'])
  if stem_relu:
    y = relu(y)
  y = np_maxpool_3x3s2(y)
  for st, n in enumerate(stage_sizes, start=1):
    for j in range(n):
      stride = (1 if st == 1 else last_stride if st == len(stage_sizes) else 2) if j == 0 else 1
      name = f'layer{st}_{j}'
      y = np_bottleneck(y, p[name], s[name], stride)
  return y


def randomize(variables, seed=0):
  """Random params, BN affine and running stats (var > 0) so that eval BN is non-trivial."""
  rng = np.random.default_rng(seed)
  def fill(path, a):
    name = jax.tree_util.keystr(path)
    if name.endswith("['var']"):
      return jnp.asarray(rng.uniform(0.5, 1.5, a.shape), a.dtype)
    if name.endswith("['scale']"):
      return jnp.asarray(rng.uniform(0.5, 1.5, a.shape), a.dtype)
    return jnp.asarray(rng.normal(0, 0.1 if 'kernel' in name else 0.3, a.shape), a.dtype)
  return jax.tree_util.tree_map_with_path(fill, variables)


def init_shapes(model, *args, **kwargs):
  """Variable shapes without running (or compiling) the initialisers."""
  return jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kwargs))


def to_np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize('last_stride,stem_relu', [(1, True), (2, False)])
def test_resnet_matches_numpy(last_stride, stem_relu):
  stage_sizes = (1, 2, 1, 1)
  model = resnet.ResNet(stage_sizes=stage_sizes, width=4, last_stride=last_stride,
                        stem_relu=stem_relu)
  # Odd sizes exercise floor/ceil of the padded stride-2 layers.
  x = np.random.default_rng(1).normal(size=(2, 37, 22, 3)).astype(np.float32)
  v = randomize(init_shapes(model, x, train=False))
  y = jax.jit(lambda v, x: model.apply(v, x, train=False))(v, x)
  ref = np_resnet(x.astype(np.float64), to_np(v), stage_sizes, last_stride, stem_relu)
  assert y.shape == ref.shape
  np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-4)


def test_names_follow_torchvision_layout():
  model = resnet.ResNet(stage_sizes=(2, 1, 1, 1), width=4)
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 16, 3)), False))
  p = v['params']
  assert set(p) == {'conv1', 'bn1', 'layer1_0', 'layer1_1', 'layer2_0', 'layer3_0', 'layer4_0'}
  assert set(p['layer1_0']) == {'conv1', 'bn1', 'conv2', 'bn2', 'conv3', 'bn3',
                                'downsample_conv', 'downsample_bn'}
  assert 'downsample_conv' not in p['layer1_1']
  assert p['conv1']['kernel'].shape == (7, 7, 3, 4)
  assert p['layer2_0']['conv2']['kernel'].shape == (3, 3, 8, 8)
  assert set(v['batch_stats']['bn1']) == {'mean', 'var'}


def test_train_mode_bn_uses_batch_stats_and_momentum_0p1():
  model = resnet.ResNet(stage_sizes=(1, 1, 1, 1), width=4)
  x = np.random.default_rng(2).normal(size=(2, 32, 16, 3)).astype(np.float32)
  v = randomize(init_shapes(model, x, train=False))
  _, upd = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(v, x)
  pre_bn = np_conv(x.astype(np.float64), np.asarray(v['params']['conv1']['kernel'], np.float64),
                   2, 3)
  old = np.asarray(v['batch_stats']['bn1']['mean'])
  np.testing.assert_allclose(np.asarray(upd['batch_stats']['bn1']['mean']),
                             0.9 * old + 0.1 * pre_bn.mean((0, 1, 2)), rtol=1e-4, atol=1e-5)


def test_compact_builders_with_hooks_share_names_and_output():
  import flax.linen as nn
  model = resnet.ResNet(stage_sizes=(1, 1, 2, 1), width=4)
  x = np.random.default_rng(3).normal(size=(1, 32, 16, 3)).astype(np.float32)
  v = randomize(init_shapes(model, x, train=False))
  seen = []

  class Compact(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      x = resnet.stem(x, train, width=4)
      for s, n in enumerate((1, 1, 2, 1), start=1):
        x = resnet.make_stage(x, train, stage=s, num_blocks=n, width=4,
                              stride=resnet.stage_stride(s, 4, 1),
                              after_block=lambda s, j, y: seen.append((s, j)) or y)
      return x

  full = jax.jit(lambda v, x: model.apply(v, x, train=False))(v, x)
  compact = jax.jit(lambda v, x: Compact().apply(v, x, False))(v, x)
  assert jax.tree.structure(init_shapes(Compact(), x, False)) == jax.tree.structure(v)
  np.testing.assert_allclose(compact, full, rtol=1e-6, atol=1e-6)
  assert seen[:5] == [(1, 0), (2, 0), (3, 0), (3, 1), (4, 0)]


def test_feature_size_matches_the_trunk():
  for h, w, last_stride in ((37, 22, 1), (256, 128, 1), (64, 32, 2)):
    model = resnet.ResNet(stage_sizes=(1, 1, 1, 1), width=4, last_stride=last_stride)
    y = init_shapes(model, jnp.zeros((1, h, w, 3)), train=False)
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, h, w, 3)), train=False), y)
    assert out.shape[1:3] == (resnet.feature_size(h, 4, 4, last_stride),
                              resnet.feature_size(w, 4, 4, last_stride))
  assert [resnet.feature_size(256, s, 4, 1) for s in range(5)] == [64, 64, 32, 16, 16]


def test_bfloat16_compute_keeps_float32_variables():
  model = resnet.ResNet(stage_sizes=(1, 1, 1, 1), width=4, dtype=jnp.bfloat16)
  x = jnp.zeros((1, 32, 16, 3))
  v = randomize(init_shapes(model, x, train=False))
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(v))
  y, upd = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(v, x)
  assert y.dtype == jnp.bfloat16
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(upd))


def test_stage_sizes_for():
  from grl_jax.errors import ConfigError
  assert resnet.stage_sizes_for(50) == (3, 4, 6, 3)
  with pytest.raises(ConfigError, match='config.model.resnet_depth=18'):
    resnet.stage_sizes_for(18)


@pytest.mark.parametrize('shape,kernel,stride,pad', [
    ((3, 4, 2, 5), 3, 1, 1),     # the demo trunk's layer4: a 4 x 2 map under a 3x3 kernel
    ((2, 2, 3, 4), 3, 2, 1),
    ((2, 2, 2, 3), 7, 2, 3),
    ((2, 8, 4, 3), 3, 1, 1),     # not smaller than the kernel: the plain convolution
])
def test_conv_on_a_map_smaller_than_its_kernel_matches_the_convolution(shape, kernel, stride, pad):
  from grl_jax.models import layers  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(3)
  x = jnp.asarray(rng.randn(*shape).astype(np.float32))
  w = jnp.asarray(rng.randn(kernel, kernel, shape[-1], 6).astype(np.float32))
  dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, ('NHWC', 'HWIO', 'NHWC'))
  args = dict(window_strides=(stride, stride), padding=((pad, pad), (pad, pad)),
              dimension_numbers=dn)
  ours = lambda x, w: layers.conv_general_dilated(x, w, **args)  # noqa: E731
  ref = lambda x, w: jax.lax.conv_general_dilated(x, w, **args)  # noqa: E731
  np.testing.assert_allclose(ours(x, w), np_conv(np.asarray(x, np.float64), np.asarray(w),
                                                 stride, pad), rtol=1e-5, atol=1e-5)
  grad = lambda f: jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), (0, 1))(x, w)  # noqa: E731
  for a, b in zip(grad(ours), grad(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # The small map is a matmul (XLA would swap a convolution's operands there: the docstring
  # of layers.conv_general_dilated); the larger one stays a convolution.
  prims = {e.primitive.name for e in jax.make_jaxpr(ours)(x, w).jaxpr.eqns}
  small = min(shape[1:3]) < kernel
  assert ('conv_general_dilated' in prims) != small and ('dot_general' in prims) == small
