"""Config sections <-> dataclass fields: option defaults live on the dataclass, reads are strict.

A model's Linen module (and an objective's option dataclass in grl_jax/objectives.py) declares
each option once, with its default, as a dataclass field. `defaults_of` reads those defaults
off the class; `read` takes a config section (`config.model` / `config.loss`: a ConfigDict, a
mapping or None) and returns its values over the defaults, rejecting any field the model or
objective does not know with a ConfigError that lists the known ones.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

from grl_jax.errors import ConfigError

# Dataclass fields every Linen module has; they are not options.
_LINEN_FIELDS = ('parent', 'name')


def defaults_of(cls: type, exclude: Iterable[str] = ()) -> dict[str, Any]:
  """{field: default} of a dataclass (Linen module or plain), in declaration order.

  Fields without a default (e.g. `num_classes`, given by the factory) and `exclude` are left
  out, as are Linen's own `parent` / `name`.
  """
  skip = set(exclude) | set(_LINEN_FIELDS)
  out = {}
  for f in dataclasses.fields(cls):
    if f.name in skip or not f.init:
      continue
    if f.default is not dataclasses.MISSING:
      out[f.name] = f.default
    elif f.default_factory is not dataclasses.MISSING:
      out[f.name] = f.default_factory()
  return out


def items(section: Any, where: str) -> dict[str, Any]:
  """The fields of a ConfigDict / mapping as a plain dict ({} for None)."""
  if section is None:
    return {}
  if not callable(getattr(section, 'keys', None)):
    raise ConfigError(f'{where} must be a ConfigDict or a mapping of fields, got '
                      f'{type(section).__name__}')
  return {k: section[k] for k in section.keys()}


def read(section: Any, defaults: Mapping[str, Any], where: str, owner: str) -> dict[str, Any]:
  """`defaults` overridden by the fields of `section`; absent (or None) fields keep the default.

  Args:
    section: the config section (ConfigDict, mapping or None).
    defaults: every known field with its default.
    where: the section's path in messages, e.g. 'config.model'.
    owner: what the fields belong to, e.g. "model 'grl'".

  Raises:
    ConfigError: naming `<where>.<field>` for a field not in `defaults`.
  """
  given = items(section, where)
  unknown = [k for k in given if k not in defaults]
  if unknown:
    raise ConfigError(f'{where}.{unknown[0]} is not a field of {owner}; known: '
                      f'{sorted(defaults)}')
  out = dict(defaults)
  out.update({k: v for k, v in given.items() if v is not None})
  return out
