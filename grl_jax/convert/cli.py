r"""Command line of `python -m grl_jax.convert`: the flags of `grl_jax.main`, plus the source.

    python -m grl_jax.convert --format=FORMAT --input=PATH --output=DIR \
        --config=configs/mars.py:model=grl [--config.model.dtype=bfloat16 ...] \
        [--siamese=FILE] [--step=0] [--seed=0]

`--config` is the experiment the weights are for (the same file and overrides as training);
the architecture fields the weights imply are written into config.model and the whole config
goes into the checkpoint's meta, so `grl_jax.inference.load(DIR)` and the trainer
(`config.init.checkpoint=DIR`) can rebuild the model. A user mistake (missing file, wrong
format, mismatched key or shape, wrong model) prints one line `convert: error: ...` to stderr
and exits with status 1.

The flags live in a FlagValues of their own per call, so `main` can run several times in one
process and next to `grl_jax.main`'s global flags.
"""
from __future__ import annotations

from typing import Sequence

from absl import flags
from ml_collections import config_flags

from grl_jax import cli
from grl_jax.convert import converter
from grl_jax.convert import formats
from grl_jax.errors import CheckpointError, ConfigError

PROG = 'python -m grl_jax.convert'
_MODEL_OVERRIDE = 'config.model.'


def _flag_values(argv: list[str]) -> flags.FlagValues:
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file(
      'config', None, 'Config file the weights are for, e.g. configs/mars.py:model=grl.',
      flag_values=fv, lock_config=False, sys_argv=argv)
  known = ', '.join(f'{n} ({f.help})' for n, f in formats.FORMATS.items())
  flags.DEFINE_enum('format', None, sorted(formats.FORMATS), f'Source format: {known}.',
                    flag_values=fv)
  flags.DEFINE_string('input', None, 'Source file or folder.', flag_values=fv)
  flags.DEFINE_string('output', None, 'Checkpoint directory to write.', flag_values=fv)
  flags.DEFINE_string('siamese', None, 'grl-official: the Siamese checkpoint file.',
                      flag_values=fv)
  flags.DEFINE_integer('step', 0, 'Step number of the written checkpoint.', flag_values=fv)
  flags.DEFINE_integer('seed', 0, 'Init seed of the variables the source does not hold.',
                       flag_values=fv)
  flags.DEFINE_bool('help', False, 'Show this help.', flag_values=fv)
  return fv


def run(argv: Sequence[str]) -> str | None:
  """Parses `argv` (without the program name), converts, writes; returns the step directory.

  Raises the user-facing errors (`GrlJaxError`, absl `flags.Error`) instead of exiting.
  """
  argv = [PROG, *argv]
  fv = _flag_values(argv)
  try:
    rest = fv(argv)
  except (AttributeError, KeyError) as e:
    # config_flags looks an override's field up while parsing; absl passes that error through.
    raise ConfigError(f'a --config.* override names a field the config does not have ({e}); '
                      'the fields are documented in configs/base.py') from e
  if not cli.tool_flags_ok(fv, rest, doc=__doc__, required=('format', 'input', 'output', 'config'),
                           example='--format=grl-official --input=PATH --output=DIR '
                           '--config=configs/mars.py:model=grl'):
    return None
  from grl_jax import checkpoint  # pylint: disable=g-import-not-at-top
  # Before any compute: orbax refuses to overwrite a step.
  directory, step = checkpoint.resolve_dir(fv['output'].value), fv['step'].value
  if step in checkpoint.complete_steps(directory):
    raise CheckpointError(f'--output={fv["output"].value}: step {step} is already written '
                          f'({directory}/{step}); choose another --output or --step')
  config = _loaded_config(fv)
  overridden = {n[len(_MODEL_OVERRIDE):] for n in fv
                if n.startswith(_MODEL_OVERRIDE) and fv[n].present}
  variables, config, meta = converter.convert(
      fv['format'].value, config, fv['input'].value, fv['siamese'].value,
      seed=fv['seed'].value, overridden=overridden)
  path = checkpoint.write_variables(fv['output'].value, variables, config, step=step,
                                    extra_meta=meta)
  fmt, ignored = fv['format'].value, meta['source']['ignored_keys']
  print(f'[convert] {fmt}: {meta["num_params"]:,} parameters -> {path}')
  print(f'[convert] model: {dict(config.model)}')
  print(f'[convert] {len(ignored)} source keys ignored'
        + (f' (e.g. {ignored[:4]})' if ignored else ''))
  return path


def _loaded_config(fv: flags.FlagValues):
  # config_flags defers a failed load: the flag's value raises OSError on first use.
  config = fv['config'].value
  try:
    config.get('model')
  except OSError as e:
    raise ConfigError(f'--config: {_one_line(e)}') from e
  return config


def main(argv: Sequence[str] | None = None) -> str | None:
  """`run`, with any user mistake printed as one line `convert: error: ...` and exit status 1."""
  return cli.tool_main('convert', run, argv, one_line=_one_line)


def _one_line(e: BaseException) -> str:
  lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
  if any(line.startswith('Traceback') or ': Traceback' in line for line in lines):
    # config_flags embeds the config file's traceback: keep the flag and the final error.
    return f'{lines[0].split(": Error whilst parsing")[0]}: {lines[-1]}'
  return ' '.join(' '.join(lines).split())
