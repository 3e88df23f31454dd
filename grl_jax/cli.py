"""Command-line plumbing shared by `python -m grl_jax.main` and `python -m grl_jax.convert`:
flag parsing whose failures are one line, and a runner that turns user errors into one line.

A user mistake (any `grl_jax.errors.GrlJaxError`, a bad flag, an unknown `--config.x.y`
override, a config module's unknown argument) prints `<prog>: error: <message>` on stderr and
exits with status 1, without a traceback. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import re
import sys
from typing import Any, Callable, NoReturn, Sequence

from absl import flags

from grl_jax.errors import ConfigError, GrlJaxError

# ml_collections reports an exception raised inside `get_config` as a formatted traceback in
# the flag error's text; its last line is "<module>.<Class>: <message>".
_LAST_ERROR_LINE = re.compile(r'^\s*(?:[\w.]+\.)?(\w*Error): (.*)$')


def fail(prog: str, message: str) -> NoReturn:
  print(f'{prog}: error: {message}', file=sys.stderr, flush=True)
  sys.exit(1)


def run_or_fail(prog: str, fn: Callable[[], object]) -> None:
  """Runs `fn`; a GrlJaxError becomes one line on stderr and exit status 1."""
  try:
    fn()
  except GrlJaxError as e:
    fail(prog, str(e))


def tool_flags_ok(fv: flags.FlagValues, rest: Sequence[str], *, doc: str,
                  required: Sequence[str], example: str) -> bool:
  """The common checks of a tool's parsed flags (`rest` = what parsing left, program first):
  prints `doc` and the flags and returns False for --help; ConfigError for positional
  arguments or a required flag left unset (the message quotes `example`)."""
  if fv['help'].value:
    print(doc + '\n' + fv.get_help())
    return False
  if len(rest) > 1:
    raise ConfigError(f'unexpected arguments: {list(rest[1:])}')
  for name in required:
    if fv[name].value is None or fv[name].value == '':
      raise ConfigError(f'--{name} is required (e.g. {example})')
  return True


def tool_main(prog: str, run: Callable[[list[str]], Any], argv: Sequence[str] | None = None,
              one_line: Callable[[BaseException], str] | None = None) -> Any:
  """`run(argv)` (default sys.argv[1:]) for a tool's `main`: a user mistake (GrlJaxError, bad
  flag) becomes one line `<prog>: error: ...` and exit status 1."""
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    return run(argv)
  except (GrlJaxError, flags.Error) as e:
    fail(prog, one_line(e) if one_line else ' '.join(str(e).split()))


def locked_config(config_dict: dict):
  """A plain config dict (e.g. a checkpoint's meta) as a locked ConfigDict."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(config_dict)
  config.lock()
  return config


def _user_message(error: BaseException) -> str | None:
  """The message of a GrlJaxError anywhere in `error`'s chain, or in its formatted text (an
  exception raised in `get_config` reaches us re-raised with the traceback as its text)."""
  seen, text = error, str(error)
  while seen is not None:
    if isinstance(seen, GrlJaxError):
      text = str(seen)
      if '\n' not in text.strip():
        return text.strip()
      break
    seen = seen.__cause__ or seen.__context__
  for line in reversed(text.splitlines()):
    match = _LAST_ERROR_LINE.match(line)
    if match and match.group(1) in ('ConfigError', 'DatasetError'):
      return match.group(2)
  return None


def _bad_override(argv: list[str]) -> str | None:
  """Names the first `--config.a.b=v` of `argv` whose field does not exist in the config."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  if spec is None:
    return None
  probe = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=probe)
  saved, sys.argv = sys.argv, [argv[0], f'--config={spec}']
  try:  # the config flag also reads overrides from sys.argv: show it none
    probe(sys.argv)
    config = probe['config'].value
  except Exception:  # pylint: disable=broad-except
    return None
  finally:
    sys.argv = saved
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    path = arg[len('--config.'):].split('=', 1)[0]
    node, walked = config, 'config'
    for part in path.split('.'):
      if not hasattr(node, 'keys') or part not in node:
        known = sorted(node.keys()) if hasattr(node, 'keys') else []
        return (f'{arg.split("=", 1)[0]}: {walked} has no field {part!r} (configs are locked; '
                f'fields of {walked}: {known})')
      node, walked = node[part], f'{walked}.{part}'
  return None


def parse_flags(prog: str, argv: list[str]) -> list[str]:
  """absl flag parsing (for `app.run(main, flags_parser=...)`) with one-line failures."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = _user_message(e)
    if message is None:
      lines = str(e).strip().splitlines()
      message = lines[0] if len(lines) == 1 else lines[-1]
    fail(prog, message)
  except (AttributeError, KeyError, OSError) as e:
    # ml_collections applies `--config.x.y=v` by attribute access: an unknown field escapes as
    # a bare AttributeError / KeyError; a missing config file as OSError.
    message = _bad_override(argv) or _user_message(e)
    if message is None:
      message = ' '.join(str(e).split())
    fail(prog, message)
