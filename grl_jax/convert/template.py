"""The target model's variables for a conversion: shapes only, or freshly initialised values.

The model comes from the registry (`grl_jax.models.get(model_cfg['name'])`), so nothing here
depends on which model it is. Parameter shapes do not depend on the input size; the clip only
has to be one the model accepts, which a runnable config's own clip always is
(`clip_from_config`).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

PyTree = Any

# A clip (B, T, H, W, C) every model accepts at its recipe defaults, for callers without a
# config: T = 4 is a multiple of 4 (STE-NVAN's temporal pooling) and no longer than IAUnet's
# default model.seq_len; 256 x 128 is every recipe's frame size (16 stripes at layer3).
DEFAULT_CLIP = (1, 4, 256, 128, 3)


def clip_from_config(config: Any) -> tuple[int, int, int, int, int]:
  """(1, T, H, W, 3) from config.data.seq_len / height / width."""
  data = config['data']
  return (1, int(data['seq_len']), int(data['height']), int(data['width']), 3)


def model_variables(model_cfg: Mapping[str, Any], *, num_classes: int = 1, train: bool = False,
                    seed: int | None = None, clip_shape: tuple[int, ...] = DEFAULT_CLIP,
                    jit: bool = True) -> PyTree:
  """Variables of `model_cfg`'s model: ShapeDtypeStructs, or numpy values when `seed` is set.

  Args:
    model_cfg: config.model as a mapping (name and architecture fields).
    num_classes: classifier width (models without a classifier ignore it).
    train: initialise the training graph (holds the classifier where there is one).
    seed: None for shapes only (nothing is computed), else the init seed.
    clip_shape: (B, T, H, W, 3) of the dummy input.
    jit: compile the init (else run it op by op). XLA fuses the initialisers' arithmetic, so
      the two differ in the last ulp of some values; each format keeps the mode its earlier
      checkpoints were written with (grl_jax/convert/formats.py).
  """
  from grl_jax import models  # pylint: disable=g-import-not-at-top
  model = models.get(model_cfg['name']).build(model_cfg, num_classes)
  x = jnp.zeros(tuple(clip_shape), jnp.float32)
  if seed is None:
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=train))
  init = lambda: model.init(jax.random.PRNGKey(seed), x, train=train)  # noqa: E731
  return jax.device_get(jax.jit(init)() if jit else init())
