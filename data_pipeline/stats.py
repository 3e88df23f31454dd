"""Prints split statistics of a dataset as one JSON object.

    python -m data_pipeline.stats --dataset=mars --root=/data/MARS [--protocol=torchreid]
        [--split_id=0] [--verify]

Output (one line of JSON on stdout):
  {"dataset": ..., "protocol": ..., "split_id": ..., "root": ...,
   "train": {"ids", "tracklets", "frames", "min_len", "median_len", "max_len"},
   "query": {...}, "gallery": {...}, "load_seconds": ...}
`ids` counts distinct pid values, so MARS's junk (-1) and distractor (0) labels count as one id
each where present (e.g. the MARS 'official' gallery: 636 = 634 people + -1 + 0). Errors (bad
flags, DatasetError) print one message on stderr and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

from data_pipeline.index import TrackletIndex
from grl_jax.errors import GrlJaxError
from grl_jax.schema import DATASETS, PROTOCOLS


def split_stats(index: TrackletIndex) -> dict[str, Any]:
  """ids, tracklets, frames and min/median/max tracklet length of one split."""
  lengths = np.asarray(index.lengths)
  has = len(lengths) > 0
  return {
      'ids': index.num_ids,
      'tracklets': len(index),
      'frames': int(lengths.sum()),
      'min_len': int(lengths.min()) if has else 0,
      'median_len': float(np.median(lengths)) if has else 0.0,
      'max_len': int(lengths.max()) if has else 0,
  }


def dataset_stats(ds) -> dict[str, Any]:
  return {
      'dataset': ds.name,
      'protocol': ds.protocol,
      'split_id': ds.meta.get('split_id', 0),
      'root': ds.meta.get('root'),
      'train': split_stats(ds.train),
      'query': split_stats(ds.query),
      'gallery': split_stats(ds.gallery),
  }


def _parse(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m data_pipeline.stats', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--dataset', required=True, choices=DATASETS)
  parser.add_argument('--root', required=True, help='dataset root (local or gs://)')
  parser.add_argument('--protocol', default='torchreid', choices=PROTOCOLS)
  parser.add_argument('--split_id', type=int, default=0, help='iLIDS-VID / PRID-2011 split')
  parser.add_argument('--verify', action='store_true', help='check every frame file exists')
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  args = _parse(sys.argv[1:] if argv is None else argv)  # exits 2 on bad flags
  from data_pipeline import datasets  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  try:
    ds = datasets.load(args.dataset, args.root, protocol=args.protocol, split_id=args.split_id,
                       verify=args.verify)
  except GrlJaxError as e:  # a user error (the readers raise DatasetError)
    print(f'error: {e}', file=sys.stderr)
    return 2
  out = dataset_stats(ds)
  out['load_seconds'] = round(time.perf_counter() - t0, 3)
  print(json.dumps(out))
  return 0


if __name__ == '__main__':
  sys.exit(main())
