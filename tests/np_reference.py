"""Numpy references shared by the model tests (float64 unless the input is lower precision)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

BN_EPS = 1e-5


def randomise(variables, seed: int, scale: float = 0.3):
  """Params ~ N(0, scale) (BN scales 1 ± 0.3), running means ~ N(0, 0.1), vars in [0.5, 1.5].

  BatchNorm statistics and affine parameters are randomised so a test cannot pass by BN being
  an identity at its defaults.
  """
  rng = np.random.RandomState(seed)

  def draw(path, a):
    name = jax.tree_util.keystr(path)
    if "'var'" in name:
      return jnp.asarray(rng.uniform(0.5, 1.5, a.shape), a.dtype)
    if "'mean'" in name:
      return jnp.asarray(rng.normal(0, 0.1, a.shape), a.dtype)
    if "'scale'" in name:
      return jnp.asarray(1 + rng.normal(0, 0.3, a.shape), a.dtype)
    return jnp.asarray(rng.normal(0, scale, a.shape), a.dtype)
  return jax.tree_util.tree_map_with_path(draw, variables)


def softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def dense(p, x):
  """A Flax Dense layer `p` ({'kernel': [in, out], 'bias': [out]}) applied to x[..., in]."""
  return x @ np.asarray(p['kernel'], np.float64) + np.asarray(p['bias'], np.float64)


def bn_eval(p, s, x):
  """Eval-mode BatchNorm: params p (scale, bias), batch_stats s (mean, var), channels last."""
  return ((x - np.asarray(s['mean'])) / np.sqrt(np.asarray(s['var']) + BN_EPS)
          * np.asarray(p['scale']) + np.asarray(p['bias']))
