"""Model registry: `config.model.name` -> (Linen module factory, objective factory).

The contract every model family honours (the trainer, evaluation and inference rely on nothing
else):

* `build(model_cfg, num_classes) -> nn.Module`. `model_cfg` is the `config.model` ConfigDict
  (or a plain mapping). Factories read it strictly: an absent field takes the default, an
  unknown one is a ConfigError naming `config.model.<field>`. The module is called as
  `module.apply(variables, frames, train=bool, mutable=[...], rngs=...)` with
  `frames: float[B, T, H, W, 3]`, already mean/std normalised (ImageNet, RGB), and returns a
  dict of named outputs. With `train=False` the dict holds `descriptor: float32[B, D]`, the
  per-clip test feature of the official evaluation (GRL: 6,144-d; NVAN/STE-NVAN: 2,048-d).
  `descriptor_distance` says how to compare descriptors: 'dot' (GRL), 'euclidean', 'cosine'.
  Variables are `params` and `batch_stats`.
* `objective(loss_cfg, num_classes) -> Objective` (see `Objective` below): turns the outputs
  and the batch into the loss; it owns extra non-trainable state (e.g. OIM lookup tables).
* `model_defaults() -> dict` / `loss_defaults() -> dict`: every `config.model` / `config.loss`
  field of the model with its default (read off the module's / objective's dataclass fields:
  the one place defaults live; configs/models/*.py start from these).
* `check_config(config)`: the model's shape constraints on the FULL config (model + data
  sections), raising ConfigError naming the fields before anything is compiled.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import flax.linen as nn
import jax

from grl_jax import schema

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


def _no_check(config: Any) -> None:
  del config


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A registered model: factories, descriptor distance, config defaults and checks."""
  build: Callable[[Any, int], nn.Module]
  objective: Callable[[Any, int], Objective]
  descriptor_distance: str = 'dot'
  model_defaults: Callable[[], dict] = dict
  loss_defaults: Callable[[], dict] = dict
  check_config: Callable[[Any], None] = _no_check


_REGISTRY: dict[str, Callable[[], ModelSpec]] = {}


def register(name: str):
  """Decorator for a zero-argument function returning the ModelSpec of `name` (lazy import)."""
  def wrap(fn):
    _REGISTRY[name] = fn
    return fn
  return wrap


def get(name: str) -> ModelSpec:
  _load_all()
  schema.check_choice(name, tuple(sorted(_REGISTRY)), 'config.model.name')
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
