"""`python -m data_pipeline.pack`: pack a dataset reader's tracklets into a TFDS directory.

    python -m data_pipeline.pack --dataset=NAME --root=ROOT --output=OUT
        [--protocols=torchreid,cas,official] [--split_id=0] [--tracklets_per_shard=512]

NAME is a reader of data_pipeline/datasets/ (mars, duke, ilids, prid, lsvid, custom; a synthetic
tree is MARS-format: --dataset=mars). ROOT and OUT may be local or gs://. Re-running the same
command after an interruption finishes the pack, skipping the shards already written. Prints a
one-line JSON summary; a user mistake prints `pack: error: <message>` and exits with status 1.
"""
from __future__ import annotations

import json
from typing import Sequence

from absl import flags

from grl_jax import cli
from grl_jax.errors import ConfigError

PROG = 'pack'


def _flag_values() -> flags.FlagValues:
  from data_pipeline.pack import writer  # pylint: disable=g-import-not-at-top
  fv = flags.FlagValues()
  flags.DEFINE_string('dataset', None, 'Reader name (data_pipeline/datasets/).', flag_values=fv)
  flags.DEFINE_string('root', None, 'Dataset root (local or gs://).', flag_values=fv)
  flags.DEFINE_string('output', None, 'Pack directory to write (local or gs://).',
                      flag_values=fv)
  flags.DEFINE_list('protocols', [], 'Protocol galleries to keep (default: all).',
                    flag_values=fv)
  flags.DEFINE_integer('split_id', 0, 'iLIDS-VID / PRID-2011 split (0..9).', flag_values=fv)
  flags.DEFINE_integer('tracklets_per_shard', writer.DEFAULT_TRACKLETS_PER_SHARD,
                       'Records per ArrayRecord shard.', flag_values=fv)
  flags.DEFINE_bool('help', False, 'Show this help.', flag_values=fv)
  return fv


def run(argv: Sequence[str]) -> dict | None:
  """Parses `argv` (without the program name) and packs; returns the summary.

  Raises the user-facing errors (GrlJaxError, absl flags.Error) instead of exiting.
  """
  from data_pipeline import datasets  # pylint: disable=g-import-not-at-top
  from data_pipeline.datasets import common  # pylint: disable=g-import-not-at-top
  from data_pipeline.pack import writer  # pylint: disable=g-import-not-at-top
  from grl_jax import schema  # pylint: disable=g-import-not-at-top
  argv = [PROG, *argv]
  fv = _flag_values()
  rest = fv(argv)
  if not cli.tool_flags_ok(fv, rest, doc=__doc__, required=('dataset', 'root', 'output'),
                           example='--dataset=mars --root=/data/MARS --output=/data/mars_pack'):
    return None
  schema.check_choice(fv['dataset'].value, datasets.NAMES, '--dataset')
  for p in fv['protocols'].value:
    schema.check_choice(p, schema.PROTOCOLS, '--protocols')
  if fv['tracklets_per_shard'].value < 1:
    raise ConfigError(f'--tracklets_per_shard={fv["tracklets_per_shard"].value}: expected >= 1')
  root = common.normalize_root(fv['root'].value)
  dataset = datasets.load(fv['dataset'].value, root, split_id=fv['split_id'].value)
  summary = writer.pack(dataset, fv['output'].value, root=root, split_id=fv['split_id'].value,
                        protocols=fv['protocols'].value or None,
                        tracklets_per_shard=fv['tracklets_per_shard'].value)
  print(json.dumps(summary))
  return summary


def main(argv: Sequence[str] | None = None) -> dict | None:
  return cli.tool_main(PROG, run, argv)
