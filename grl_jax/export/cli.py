r"""Command line of `python -m grl_jax.export` (see grl_jax/export/__init__.py).

    python -m grl_jax.export --workdir=W --format=stablehlo|onnx|savedmodel --batch=B \
        --output=PATH [--step=N] [--dynamic_batch] [--platforms=cpu,cuda,tpu] \
        [--dtype=float32] [--nocheck]

A user mistake (unknown format, --batch < 1, a missing package, a missing checkpoint or step, a
bad flag) prints one line `export: error: ...` on stderr and exits with status 1.

The flags live in a FlagValues of their own per call, so `main` can run several times in one
process and next to `grl_jax.main`'s global flags.
"""
from __future__ import annotations

from typing import Sequence

from absl import flags

from grl_jax import cli
from grl_jax import schema

PROG = 'export'


def _flag_values() -> flags.FlagValues:
  fv = flags.FlagValues()
  flags.DEFINE_string('workdir', None, 'Training workdir or grl_jax.convert output.',
                      flag_values=fv)
  flags.DEFINE_string('format', None, f'One of {", ".join(schema.EXPORT_FORMATS)}.',
                      flag_values=fv)
  flags.DEFINE_integer('batch', None, 'Clips per call (the check batch with --dynamic_batch).',
                       flag_values=fv)
  flags.DEFINE_string('output', None, 'File (stablehlo, onnx) or directory (savedmodel).',
                      flag_values=fv)
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).', flag_values=fv)
  flags.DEFINE_bool('dynamic_batch', False, 'Accept any batch size (symbolic batch axis).',
                    flag_values=fv)
  flags.DEFINE_list('platforms', None, 'stablehlo / savedmodel: lower for these platforms '
                    f'({", ".join(schema.EXPORT_PLATFORMS)}; default: this machine).',
                    flag_values=fv)
  flags.DEFINE_string('dtype', None, f'Compute dtype ({", ".join(schema.DTYPES)}; default: the '
                      "checkpoint's config.model.dtype).", flag_values=fv)
  flags.DEFINE_bool('check', True, 'Run the artifact next to the JAX extractor afterwards.',
                    flag_values=fv)
  flags.DEFINE_bool('help', False, 'Show this help.', flag_values=fv)
  return fv


def run(argv: Sequence[str]) -> dict | None:
  """Parses `argv` (without the program name) and exports; returns the artifact description.

  Raises the user-facing errors (GrlJaxError, absl flags.Error) instead of exiting.
  """
  fv = _flag_values()
  import grl_jax.export  # pylint: disable=g-import-not-at-top
  if not cli.tool_flags_ok(fv, fv([PROG, *argv]), doc=grl_jax.export.__doc__,
                           required=('workdir', 'format', 'batch', 'output'),
                           example='--workdir=workdir/mars_grl --format=stablehlo --batch=8 '
                           '--output=grl.shlo'):
    return None
  from grl_jax.export import exporter  # pylint: disable=g-import-not-at-top
  return exporter.export(fv['workdir'].value, fv['format'].value, fv['batch'].value,
                         fv['output'].value, step=fv['step'].value,
                         dynamic_batch=fv['dynamic_batch'].value,
                         platforms=fv['platforms'].value, dtype=fv['dtype'].value,
                         check=fv['check'].value)


def main(argv: Sequence[str] | None = None) -> dict | None:
  """`run`, with any user mistake printed as one line `export: error: ...` and exit status 1."""
  return cli.tool_main(PROG, run, argv)
