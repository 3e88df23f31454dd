"""Re-ID evaluation: blocked distances on the accelerator, then CMC / mAP / mINP per protocol.

Three MARS protocols are supported (`grl_jax.schema.PROTOCOLS`; the gallery composition of
each is the dataset reader's, data_pipeline/datasets/common.py):

* ``'official'``: the MATLAB script of the MARS benchmark (``utils/evaluation_mars.m`` with
  ``utils/compute_AP.m``), which STE-NVAN's ``util/cmc.py`` re-implements. Per query, *junk* =
  gallery entries with pid -1, or with the query's pid and camera; *good* = same pid, other
  camera. Junk is skipped in the ranked list. AP is the trapezoidal form

      AP = sum_k (recall_k - recall_{k-1}) * (precision_{k-1} + precision_k) / 2,
      precision_0 = 1, recall_0 = 0,

  over the junk-free ranked list, where recall divides by the number of good entries. CMC and
  AP are averaged over **all** queries (the official code divides by the number of queries).
  A query without any good entry makes the MATLAB code produce NaN (0/0) and STE-NVAN's Python
  raise ZeroDivisionError; MARS's 1,980 queries all have one, so this never happens there. We
  count such a query with AP 0 and an all-zero CMC (still in the denominator, as the official
  averaging does) and emit a warning.
* ``'torchreid'`` and ``'cas'``: torchreid's ``eval_market1501`` (``torchreid/metrics/rank.py``).
  Per query, gallery entries with the query's pid and camera are removed; queries with no
  remaining match are skipped; AP is the step form ``sum_{hits} precision@hit / num_rel``;
  CMC = ``min(1, cumsum(matches))`` averaged over the valid queries. ``'cas'`` differs only in
  how the gallery is composed (queries prepended to the gallery, done by the dataset reader), so
  it shares this metric code.

mINP (Ye et al., TPAMI'21, as fast-reid computes it) is ``num_rel / (rank of the hardest
positive)`` over the same junk-free list, averaged like mAP.

Implementation. Sorting a ``[chunk, Ng]`` block is the only full-size work: instead of an argsort
we sort the distances (with junk, and everything ranked after the query's farthest positive,
pushed to +inf) and locate only the positives in each sorted row with a vectorised binary
search. The rank of a positive is its position under a *stable*
ordering (ties broken by gallery index, as MATLAB's ``sort`` does); exact ties are resolved by a
direct count. Everything per positive is float64, but nothing of size Nq x Ng is.

Memory: ``evaluate`` works on row chunks of the given float32 distmat; per chunk it needs one
float32 sort buffer (reused across chunks) and transient bool masks of ``chunk x Ng``; the
default chunk is ~2**23 entries (32 MiB as float32).

Galleries beyond memory. ``evaluate_features`` and ``top_k`` never hold the gallery or a
query row whole: they stream the gallery once in row blocks (any array-like, ``np.memmap`` /
``np.load(..., mmap_mode='r')`` included; a memmap's pages are released block by block,
grl_jax/evaluation/gallery.py) and rank with an exact gallery-blocked formulation
(grl_jax/evaluation/blocked.py): per good entry, the same-pid entries before it are counted
from a pre-pass over the same-pid gallery rows, and the negatives before it are summed over
gallery blocks, so the positions, hence CMC / mAP / mINP, equal the whole-row ranking. The peak
is the queries plus O(query chunk x gallery block), independent of Ng: tiles of ~2**24
distances, two gallery blocks in flight and their host buffers (measured 1.3 GiB above the
runtime for 1,980 queries of 2,048-d, benchmarks/RESULTS.md).
"""
from __future__ import annotations

from grl_jax.evaluation.distances import pairwise_distance
from grl_jax.evaluation.features import evaluate_features, top_k
from grl_jax.evaluation.ranking import evaluate
from grl_jax.evaluation.tables import format_results

__all__ = ['evaluate', 'evaluate_features', 'format_results', 'pairwise_distance', 'top_k']
