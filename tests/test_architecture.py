"""The layout's rules, checked on the source: the library never imports an experiment config,
nothing edits sys.path, modules stay small, and each enum's values are spelled out only in
grl_jax/schema.py."""
from __future__ import annotations

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = ('grl_jax', 'data_pipeline')
SOURCES = sorted(p for folder in (*LIBRARY, 'configs', 'tests', 'benchmarks', 'launch')
                 for p in (REPO / folder).rglob('*.py'))


def _tree(path: pathlib.Path) -> ast.AST:
  return ast.parse(path.read_text(), filename=str(path))


def _imports(tree: ast.AST) -> set[str]:
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      out.add(node.module)
  return out


@pytest.mark.parametrize('path', [p for p in SOURCES if p.parts[len(REPO.parts)] in LIBRARY],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_library_never_imports_configs(path):
  bad = sorted(m for m in _imports(_tree(path)) if m == 'configs' or m.startswith('configs.'))
  assert not bad, f'{path.relative_to(REPO)} imports {bad}'


def test_nothing_edits_sys_path():
  offenders = []
  for path in SOURCES:
    for node in ast.walk(_tree(path)):
      if (isinstance(node, ast.Attribute) and node.attr == 'path'
          and isinstance(node.value, ast.Name) and node.value.id == 'sys'):
        offenders.append(str(path.relative_to(REPO)))
  assert not offenders, offenders


def test_library_and_config_modules_stay_small():
  big = {str(p.relative_to(REPO)): n for p in SOURCES
         if p.parts[len(REPO.parts)] in (*LIBRARY, 'configs')
         and (n := len(p.read_text().splitlines())) > 500}
  assert not big, big


# Each enum's full value tuple, as grl_jax/schema.py spells it.
def _schema_enums() -> dict[tuple, str]:
  from grl_jax import schema  # pylint: disable=g-import-not-at-top
  return {tuple(v): k for k, v in vars(schema).items()
          if k.isupper() and isinstance(v, tuple) and len(v) > 1}


def test_each_enum_is_spelled_out_only_in_schema():
  enums = _schema_enums()
  assert len(enums) >= 10
  found = []
  for path in SOURCES:
    if path == REPO / 'grl_jax' / 'schema.py' or path.parts[len(REPO.parts)] == 'tests':
      continue
    for node in ast.walk(_tree(path)):
      if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        try:
          value = tuple(ast.literal_eval(node))
          hash(value)
        except (ValueError, TypeError):
          continue
        if value in enums:
          found.append(f'{path.relative_to(REPO)}:{node.lineno} repeats schema.{enums[value]}')
  assert not found, found
