"""Optimisers of the three recipes: per-group learning rates, coupled weight decay, step decay.

The update applied to a parameter w of group g (multiplier m_g) at step s is, for SGD
(PyTorch `torch.optim.SGD(nesterov=True)` semantics, as in GRL's official trainer):

    d   = grad + wd * w                        (coupled L2: decay enters the momentum)
    buf = momentum * buf + d
    u   = d + momentum * buf   (Nesterov)  or  buf
    w  <- w - m_g * lr(s) * u

and for Adam with coupled decay (PyTorch `Adam(weight_decay=wd)`, as STE-NVAN trains): d as
above, then the Adam moments of d, then w <- w - m_g * lr(s) * adam(d).

lr(s) = lr * warmup(s) * decay_factor ** #{e in decay_epochs : e <= epoch(s)}, with
epoch(s) = s / steps_per_epoch (a piecewise-constant step schedule that switches at the first step
of each decay epoch, like PyTorch's per-epoch `StepLR`/`MultiStepLR`).

Because momentum/Adam buffers do not contain the learning rate, applying m_g * lr(s) after them
is exactly PyTorch's per-group lr. Groups come from regexes on '/'-joined parameter paths
(`config.optim.lr_mult`); `frozen` parameters get zero updates; `no_decay` parameters skip
the weight decay.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from grl_jax import schema
from grl_jax.errors import ConfigError

PyTree = Any


def param_paths(params: PyTree) -> PyTree:
  """The same tree with every leaf replaced by its '/'-joined path ('backbone/conv1/kernel')."""
  def name(path, _):
    parts = []
    for k in path:
      if isinstance(k, jax.tree_util.DictKey):
        parts.append(str(k.key))
      elif isinstance(k, jax.tree_util.GetAttrKey):
        parts.append(k.name)
      elif isinstance(k, jax.tree_util.SequenceKey):
        parts.append(str(k.idx))
      else:
        parts.append(str(k))
    return '/'.join(parts)
  return jax.tree_util.tree_map_with_path(name, params)


def _matches(patterns: Sequence[str], path: str) -> bool:
  return any(re.search(p, path) for p in patterns)


def group_labels(params: PyTree, lr_mult: Sequence[tuple[str, float]],
                 frozen: Sequence[str] = ()) -> tuple[PyTree, dict[str, float]]:
  """Labels each parameter with its lr group.

  Returns:
    (labels tree of str, {label: multiplier}); label 'frozen' for frozen params, 'x<m>' else.

  Raises:
    ConfigError: a regex of `lr_mult` or `frozen` matches no parameter (a typo would otherwise
      silently train with the wrong learning rate).
  """
  paths = param_paths(params)
  flat = jax.tree.leaves(paths)
  for pattern in list(frozen) + [p for p, _ in lr_mult]:
    re.compile(pattern)
    if not any(re.search(pattern, p) for p in flat):
      raise ConfigError(f'optimizer regex {pattern!r} (config.optim.lr_mult / frozen) matches '
                       f'no parameter; parameter paths look like {flat[:3]}')
  mults: dict[str, float] = {}

  def label(path: str) -> str:
    if _matches(frozen, path):
      return 'frozen'
    m = 1.0
    for pattern, mult in lr_mult:
      if re.search(pattern, path):
        m = float(mult)
        break
    name = f'x{m:g}'
    mults[name] = m
    return name

  labels = jax.tree.map(label, paths)
  return labels, mults


def lr_schedule(optim_cfg, steps_per_epoch: int) -> Callable[[jax.Array], jax.Array]:
  """The base learning rate (group multiplier 1) as a function of the step."""
  base = float(optim_cfg.lr)
  factor = float(optim_cfg.decay_factor)
  boundaries = np.asarray([int(round(e * steps_per_epoch)) for e in optim_cfg.decay_epochs],
                          np.int64)
  warmup = float(optim_cfg.warmup_epochs) * steps_per_epoch

  def schedule(step):
    step = jnp.asarray(step)
    n = jnp.sum(step >= jnp.asarray(boundaries, step.dtype)) if len(boundaries) else 0
    lr = base * jnp.power(jnp.float32(factor), n)
    if warmup > 0:
      lr = lr * jnp.minimum(1.0, (step.astype(jnp.float32) + 1.0) / warmup)
    return lr.astype(jnp.float32)

  return schedule


def _scaled(schedule, mult: float):
  return lambda step: -mult * schedule(step)


def make_optimizer(optim_cfg, params: PyTree, steps_per_epoch: int
                   ) -> tuple[optax.GradientTransformation, Callable[[jax.Array], jax.Array]]:
  """(optax transformation, base lr schedule) for `config.optim` and these params.

  The chain is: optional global-norm clipping -> coupled weight decay -> momentum / Adam ->
  per-group `-m_g * lr(step)` (frozen groups: zero).
  """
  labels, mults = group_labels(params, tuple(tuple(x) for x in optim_cfg.lr_mult),
                               tuple(optim_cfg.frozen))
  schedule = lr_schedule(optim_cfg, steps_per_epoch)
  paths = param_paths(params)
  no_decay = tuple(optim_cfg.no_decay)
  for pattern in no_decay:
    if not any(re.search(pattern, p) for p in jax.tree.leaves(paths)):
      raise ConfigError(f'config.optim.no_decay regex {pattern!r} matches no parameter')
  decay_mask = jax.tree.map(lambda p: not _matches(no_decay, p), paths)

  schema.check_choice(optim_cfg.name, schema.OPTIMIZERS, 'config.optim.name')
  parts = []
  if float(optim_cfg.grad_clip_norm) > 0:
    parts.append(optax.clip_by_global_norm(float(optim_cfg.grad_clip_norm)))
  if float(optim_cfg.weight_decay) > 0:
    parts.append(optax.add_decayed_weights(float(optim_cfg.weight_decay), mask=decay_mask))
  if optim_cfg.name == 'sgd':
    if float(optim_cfg.momentum) > 0:
      parts.append(optax.trace(decay=float(optim_cfg.momentum),
                               nesterov=bool(optim_cfg.nesterov)))
  elif optim_cfg.name == 'adam':
    parts.append(optax.scale_by_adam(b1=float(optim_cfg.b1), b2=float(optim_cfg.b2),
                                     eps=float(optim_cfg.eps)))
  transforms = {name: optax.scale_by_schedule(_scaled(schedule, m)) for name, m in mults.items()}
  if 'frozen' in jax.tree.leaves(labels):
    transforms['frozen'] = optax.set_to_zero()
  parts.append(optax.partition(transforms, labels))
  return optax.chain(*parts), schedule


def describe_groups(params: PyTree, optim_cfg) -> str:
  """One line per lr group: multiplier, tensor count, parameter count (for the start-up log)."""
  labels, _ = group_labels(params, tuple(tuple(x) for x in optim_cfg.lr_mult),
                           tuple(optim_cfg.frozen))
  counts: dict[str, list[int]] = {}
  for label, leaf in zip(jax.tree.leaves(labels), jax.tree.leaves(params)):
    c = counts.setdefault(label, [0, 0])
    c[0] += 1
    c[1] += int(np.prod(leaf.shape))
  return ', '.join(f'{k}: {v[0]} tensors / {v[1]:,} params' for k, v in sorted(counts.items()))
