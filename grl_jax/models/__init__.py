"""Model registry: `config.model.name` -> (Linen module factory, objective factory).

The contract every model family honours (the trainer, evaluation and inference rely on nothing
else):

* `build(model_cfg, num_classes) -> nn.Module`. `model_cfg` is the `config.model` ConfigDict
  minus nothing: each factory reads the fields it knows. The module is called as
  `module.apply(variables, frames, train=bool, mutable=[...], rngs=...)` with
  `frames: float[B, T, H, W, 3]`, already mean/std normalised (ImageNet, RGB), and returns a
  dict of named outputs. With `train=False` the dict holds `descriptor: float32[B, D]`, the
  per-clip test feature of the official evaluation (GRL: 6,144-d; NVAN/STE-NVAN: 2,048-d).
  `descriptor_distance` says how to compare descriptors: 'dot' (GRL), 'euclidean', 'cosine'.
  Variables are `params` and `batch_stats`.
* `objective(loss_cfg, num_classes) -> Objective` (see `Objective` below): turns the outputs
  and the batch into the loss; it owns extra non-trainable state (e.g. OIM lookup tables).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import flax.linen as nn
import jax

PyTree = Any


class Objective(Protocol):
  """A training objective of one model family.

  `batch` is the device batch: `pid int32[B]`, `camid int32[B]`, `tracklet int32[B]` (and
  `frames`). All methods are pure and jit-traceable.
  """

  def init_state(self) -> PyTree:
    """Extra non-trainable state (e.g. `{'lut_corr': f32[N, D], ...}`); `{}` if none."""

  def loss(self, outputs: dict, batch: dict, state: PyTree) -> tuple[jax.Array, dict]:
    """(scalar float32 loss, dict of scalar float32 metrics named after the loss terms)."""

  def update_state(self, outputs: dict, batch: dict, state: PyTree) -> PyTree:
    """State after the gradient step (outputs are already stop-gradient'ed)."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  build: Callable[[Any, int], nn.Module]
  objective: Callable[[Any, int], Objective]
  descriptor_distance: str = 'dot'


def cfg_get(cfg: Any, key: str, default: Any) -> Any:
  """Field `key` of a ConfigDict / mapping / object, or `default` when absent, None or cfg is None.

  Factories read their `config.model` / `config.loss` fields through this, so a plain dict (tests,
  converted checkpoints' meta) and a ConfigDict behave the same.
  """
  if cfg is None:
    return default
  getter = getattr(cfg, 'get', None)
  value = getter(key, default) if callable(getter) else getattr(cfg, key, default)
  return default if value is None else value


_REGISTRY: dict[str, Callable[[], ModelSpec]] = {}


def register(name: str):
  """Decorator for a zero-argument function returning the ModelSpec of `name` (lazy import)."""
  def wrap(fn):
    _REGISTRY[name] = fn
    return fn
  return wrap


def get(name: str) -> ModelSpec:
  _load_all()
  if name not in _REGISTRY:
    raise ValueError(f'config.model.name={name!r} is not a registered model; '
                     f'known: {sorted(_REGISTRY)}')
  return _REGISTRY[name]()


def names() -> list[str]:
  _load_all()
  return sorted(_REGISTRY)


def _load_all():
  # Each family registers itself on import; importing here keeps `get` the only entry point.
  import importlib
  for module in ('grl', 'nvan', 'iaunet'):
    try:
      importlib.import_module(f'{__name__}.{module}')
    except ModuleNotFoundError as e:
      if e.name != f'{__name__}.{module}':
        raise
