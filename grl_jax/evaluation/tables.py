"""The results table printed after an evaluation."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def format_results(results: Mapping[str, Any], title: str = 'Results') -> str:
  """A small fixed-width table: mAP, R1, R5, R10, R20, mINP (percent) and #queries.

  #queries is the number averaged over; 'valid/all' when some of them had no match
  (protocol 'official').
  """
  cmc = np.asarray(results['cmc'])
  cols = [('mAP', results['mAP'])]
  for k in (1, 5, 10, 20):
    cols.append((f'R{k}', cmc[k - 1] if k <= len(cmc) else float('nan')))
  cols.append(('mINP', results.get('mINP', float('nan'))))
  head = ' '.join(f'{name:>7s}' for name, _ in cols) + f' {"#queries":>9s}'
  # Ranks beyond the CMC's length (tiny galleries) print as '-'.
  vals = ' '.join(f'{"-":>7s}' if np.isnan(float(v)) else f'{100.0 * float(v):7.2f}'
                  for _, v in cols)
  nq = results.get('num_queries', results.get('num_valid_queries', 0))
  nv = results.get('num_valid_queries', nq)
  vals += f' {nq:>9d}' if nq == nv else f' {f"{nv}/{nq}":>9s}'
  proto = results.get('protocol')
  first = f'{title}' + (f' (protocol: {proto})' if proto else '')
  rule = '-' * len(head)
  return '\n'.join([first, rule, head, vals, rule])
