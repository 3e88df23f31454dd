"""The table of source formats `python -m grl_jax.convert --format=NAME` knows.

Every format is one literal entry of `FORMATS`: the model its weights are for (config.model.name
must match), how to read the source files, which config.model fields the weights imply, and how
to turn the state dicts into that model's variables. A new format is a new entry here.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Mapping

from grl_jax.convert import grl_official
from grl_jax.convert import nvan_official
from grl_jax.convert import torch_layout as tl
from grl_jax.convert import torchvision
from grl_jax.errors import ConversionError

State = tl.State


@dataclasses.dataclass(frozen=True)
class Format:
  """A source format.

  Attributes:
    model: the config.model.name the weights are for.
    read: (input path, siamese path or None) -> named state dicts, e.g. {'cnn', 'siamese'}.
    infer: (state dicts, format name) -> architecture fields of config.model implied by them.
    variables: (state dicts, model config dict, *, seed, clip_shape, source) -> (variables as
      numpy, ignored source keys 'part:key').
    help: one line for `--help`.
    siamese: whether `--siamese=FILE` is read.
  """
  model: str
  read: Callable[[str, str | None], dict[str, State]]
  infer: Callable[[Mapping[str, State], str], dict]
  variables: Callable[..., tuple[dict, list[str]]]
  help: str
  siamese: bool = False


def _trunk_at(prefix: str, jit_init: bool) -> Callable[..., tuple[dict, list[str]]]:
  # prefix: the module holding the ResNet ('' = top level). jit_init: how the fresh variables
  # were initialised when these formats were written, kept so their outputs stay byte-identical
  # (compiled and op-by-op init differ in the last ulp; template.model_variables).
  return functools.partial(torchvision.variables, prefix=prefix, jit_init=jit_init)


FORMATS: dict[str, Format] = {
    'torchvision-resnet50': Format(
        model='grl', read=torchvision.read, infer=torchvision.infer,
        variables=_trunk_at('backbone', jit_init=True),
        help='ImageNet ResNet (.pth or .npz, torchvision keys) -> backbone of a fresh GRL'),
    'torchvision-resnet50-nvan': Format(
        model='nvan', read=torchvision.read, infer=torchvision.infer,
        variables=_trunk_at('', jit_init=False),
        help='ImageNet ResNet (torchvision keys) -> trunk of a fresh nvan'),
    'torchvision-resnet50-ste-nvan': Format(
        model='ste_nvan', read=torchvision.read, infer=torchvision.infer,
        variables=_trunk_at('', jit_init=False),
        help='ImageNet ResNet (torchvision keys) -> trunk of a fresh ste_nvan'),
    'torchvision-resnet50-iaunet': Format(
        model='iaunet', read=torchvision.read, infer=torchvision.infer,
        variables=_trunk_at('', jit_init=False),
        help='ImageNet ResNet (torchvision keys) -> trunk of a fresh iaunet'),
    'grl-official': Format(
        model='grl', read=grl_official.read, infer=grl_official.infer,
        variables=grl_official.variables, siamese=True,
        help='flysnowtiger/GRL CNN + Siamese checkpoints -> GRL'),
    'nvan-official': Format(
        model='nvan', read=nvan_official.read, infer=nvan_official.infer,
        variables=nvan_official.variables,
        help='jackie840129/STE-NVAN nvan DataParallel state dict -> nvan'),
    'ste-nvan-official': Format(
        model='ste_nvan', read=nvan_official.read, infer=nvan_official.infer,
        variables=nvan_official.variables,
        help='jackie840129/STE-NVAN ste_nvan DataParallel state dict -> ste_nvan'),
}


def get(name: str) -> Format:
  """The format `name`, or a ConversionError listing the known ones."""
  if name not in FORMATS:
    raise ConversionError(f'--format={name!r}: expected one of {sorted(FORMATS)}')
  return FORMATS[name]
