"""The command line of the synthetic MARS generator.

    python -m data_pipeline.synthetic --root=/tmp/synmars [--ids 32] [--test-ids 32] [--seed 0]
        [--height 256 --width 128] [--cameras 6] [--max-len 150] [--quality 90] [--force]

Prints the summary of the tree as one line of JSON. A bad argument, an unwritable root or a
root that holds other data prints `synthetic: error: <message>` on stderr and exits with
status 2 (no traceback).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from data_pipeline.synthetic.planning import SyntheticConfig
from data_pipeline.synthetic.writer import ensure, generate
from grl_jax.errors import GrlJaxError

_DESCRIPTION = ('Synthetic MARS: a complete MARS-layout tree of rendered walking people, for '
                'tests and demos.')


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m data_pipeline.synthetic',
                                   description=_DESCRIPTION)
  parser.add_argument('--root', required=True, help='output directory (local)')
  parser.add_argument('--ids', type=int, default=SyntheticConfig.num_train_ids,
                      help='training identities')
  parser.add_argument('--test-ids', '--test_ids', type=int,
                      default=SyntheticConfig.num_test_ids, help='test identities')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--height', type=int, default=SyntheticConfig.height)
  parser.add_argument('--width', type=int, default=SyntheticConfig.width)
  parser.add_argument('--cameras', type=int, default=SyntheticConfig.num_cameras)
  parser.add_argument('--min-tracklets', '--min_tracklets', type=int,
                      default=SyntheticConfig.min_tracklets)
  parser.add_argument('--max-tracklets', '--max_tracklets', type=int,
                      default=SyntheticConfig.max_tracklets)
  parser.add_argument('--median-len', '--median_len', type=int,
                      default=SyntheticConfig.median_len)
  parser.add_argument('--max-len', '--max_len', type=int, default=SyntheticConfig.max_len)
  parser.add_argument('--quality', type=int, default=SyntheticConfig.quality)
  parser.add_argument('--workers', type=int, default=None,
                      help='processes rendering at once (default: the usable CPUs, at most 8 and one '
                      'per 4000 frames; the bytes are the same for any number)')
  parser.add_argument('--force', action='store_true',
                      help='regenerate even if a complete tree with these parameters exists')
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the generator; returns 0, or 2 after printing a one-line error (argparse exits 2)."""
  args = _parser().parse_args(argv)
  kwargs = dict(num_train_ids=args.ids, num_test_ids=args.test_ids, seed=args.seed,
                height=args.height, width=args.width, num_cameras=args.cameras,
                min_tracklets=args.min_tracklets, max_tracklets=args.max_tracklets,
                median_len=args.median_len, max_len=args.max_len, quality=args.quality)
  try:
    summary = (generate if args.force else ensure)(args.root, workers=args.workers, **kwargs)
  except GrlJaxError as e:
    print(f'synthetic: error: {e}', file=sys.stderr)
    return 2
  print(json.dumps(summary))
  return 0
