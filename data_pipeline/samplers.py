"""Batch samplers: which tracklets make up training step `step`.

Every sampler is a pure function of (seed, step): epoch e = step // steps_per_epoch is planned
from `np.random.default_rng([seed, e])` alone, so step s of a resumed run (or of another
process) is exactly step s of a fresh one. The plan of the current epoch is cached.

Two samplers:

* `pair` (GRL `RandomPairSamplerForMars`): each epoch visits a permutation of all N training
  tracklets; every anchor is followed by a partner of the same identity, from another camera
  when the identity has several cameras, else another tracklet of the same camera, else the
  anchor itself. A batch of B rows is B/2 pairs [a0, p0, a1, p1, ...]; the last incomplete
  batch is dropped, so steps_per_epoch = floor(2N / B).
* `pk` (STE-NVAN `Video_train_Dataset`): each epoch visits a permutation of the identities;
  every identity contributes K tracklets; a batch is P identities (rows [id0 x K, id1 x K,
  ...]); steps_per_epoch = floor(num_ids / P). Tracklet choice within an
  identity (`pk_mode`):
    - 'replace' (STE-NVAN default, `cam_type='normal'`): K draws with replacement, any camera.
    - 'distinct': without replacement when the identity has >= K tracklets, else with
      replacement (torchreid `RandomIdentitySampler`).
    - 'cross_cam' (STE-NVAN `cam_type='cross_cam'`): the identity's cameras in random order,
      repeated until there are K, and one random tracklet from each.

In a multi-process run every process computes the same global batch and keeps a contiguous
slice of whole pairs / identities (fast-reid's trick), so pair- or identity-based losses and
per-device BatchNorm see complete groups. Sampler names and pk modes are keyed by
`grl_jax.schema.BATCH_SAMPLERS` / `PK_MODES`; a bad batch composition raises ConfigError.
"""
from __future__ import annotations

import threading
from typing import Optional

import numpy as np

from data_pipeline.index import TrackletIndex
from grl_jax import schema
from grl_jax.errors import ConfigError


class _EpochPlanned:
  """Shared logic: an epoch plan int[steps_per_epoch, B] cached per epoch, sliced per step."""

  group_size: int  # rows per pair / identity; process slices hold whole groups
  global_batch_size: int
  steps_per_epoch: int

  def __init__(self, seed: int):
    self.seed = int(seed)
    self._lock = threading.Lock()
    self._cached_epoch = None
    self._cached_plan = None

  def _plan_epoch(self, rng: np.random.Generator) -> np.ndarray:
    raise NotImplementedError

  def epoch_of(self, step: int) -> int:
    return int(step) // self.steps_per_epoch

  def epoch_plan(self, epoch: int) -> np.ndarray:
    """int32[steps_per_epoch, B]: the tracklet rows of every step of `epoch`."""
    epoch = int(epoch)
    with self._lock:
      if self._cached_epoch != epoch:
        plan = self._plan_epoch(np.random.default_rng([self.seed, epoch]))
        b = self.global_batch_size
        plan = plan[:self.steps_per_epoch * b].reshape(self.steps_per_epoch, b)
        self._cached_epoch, self._cached_plan = epoch, plan.astype(np.int32)
      return self._cached_plan

  def global_batch(self, step: int) -> np.ndarray:
    """int32[B]: tracklet rows (into the train TrackletIndex) of global batch `step`."""
    step = int(step)
    if step < 0:
      raise ValueError(f'step={step}: expected >= 0')
    return self.epoch_plan(self.epoch_of(step))[step % self.steps_per_epoch].copy()

  def check_processes(self, process_count: int) -> int:
    """Rows per process; raises unless every process gets the same number of whole groups."""
    groups = self.global_batch_size // self.group_size
    if process_count < 1 or groups % process_count:
      raise ConfigError(
          f'global_batch_size={self.global_batch_size} holds {groups} groups of '
          f'{self.group_size} ({type(self).__name__}); it must split into whole groups over '
          f'process_count={process_count} processes, i.e. global_batch_size must be a multiple '
          f'of {self.group_size * process_count}')
    return self.global_batch_size // process_count

  def local_batch(self, step: int, process_index: int, process_count: int) -> np.ndarray:
    """int32[B / process_count]: this process's contiguous slice of `global_batch(step)`."""
    b = self.check_processes(process_count)
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index={process_index}: expected 0 <= it < {process_count}')
    return self.global_batch(step)[process_index * b:(process_index + 1) * b]


class PairSampler(_EpochPlanned):
  """GRL's cross-camera positive-pair sampler (see the module docstring)."""

  group_size = 2

  def __init__(self, index: TrackletIndex, *, global_batch_size: int, seed: int):
    super().__init__(seed)
    n = len(index)
    if global_batch_size < 2 or global_batch_size % 2:
      raise ConfigError(f'pair sampler: global_batch_size={global_batch_size} must be a '
                        'positive even number (B/2 anchor-partner pairs)')
    self.global_batch_size = int(global_batch_size)
    self.steps_per_epoch = (2 * n) // self.global_batch_size
    if self.steps_per_epoch < 1:
      raise ConfigError(f'pair sampler: {n} training tracklets give {2 * n} clips per epoch, '
                        f'fewer than global_batch_size={global_batch_size}')
    self.num_tracklets = n
    # Partner candidates of each tracklet, stored CSR-style (offsets into one flat array).
    pids, cams = np.asarray(index.pids), np.asarray(index.camids)
    candidates = []
    for pid in np.unique(pids):
      members = np.flatnonzero(pids == pid)
      member_cams = cams[members]
      multi_cam = len(np.unique(member_cams)) >= 2
      for i in members:
        if multi_cam:
          cand = members[member_cams != cams[i]]
        elif len(members) >= 2:
          cand = members[members != i]
        else:
          cand = members
        candidates.append((i, cand))
    candidates.sort(key=lambda x: x[0])
    self._counts = np.array([len(c) for _, c in candidates], np.int64)
    self._offsets = np.concatenate([[0], np.cumsum(self._counts)[:-1]]).astype(np.int64)
    self._flat = np.concatenate([c for _, c in candidates]).astype(np.int64)

  def partner_candidates(self, row: int) -> np.ndarray:
    """The tracklets a partner of anchor `row` is drawn from (uniformly)."""
    o = self._offsets[row]
    return self._flat[o:o + self._counts[row]]

  def _plan_epoch(self, rng: np.random.Generator) -> np.ndarray:
    anchors = rng.permutation(self.num_tracklets)
    pick = rng.integers(0, self._counts[anchors])
    partners = self._flat[self._offsets[anchors] + pick]
    return np.stack([anchors, partners], axis=1).reshape(-1)


class PKSampler(_EpochPlanned):
  """STE-NVAN's identity sampler: P identities x K tracklets (see the module docstring)."""

  def __init__(self, index: TrackletIndex, *, global_batch_size: int, seed: int,
               p: Optional[int] = None, k: Optional[int] = None, pk_mode: str = 'replace'):
    super().__init__(seed)
    schema.check_choice(pk_mode, schema.PK_MODES, 'config.data.pk_mode')
    if k is None and p is None:
      k = 4
    if k is None:
      if global_batch_size % p:
        raise ConfigError(f'pk sampler: global_batch_size={global_batch_size} is not a '
                          f'multiple of p={p}')
      k = global_batch_size // p
    if p is None:
      if global_batch_size % k:
        raise ConfigError(f'pk sampler: global_batch_size={global_batch_size} is not a '
                          f'multiple of k={k}')
      p = global_batch_size // k
    p, k = int(p), int(k)
    if p < 1 or k < 1 or p * k != global_batch_size:
      raise ConfigError(f'pk sampler: p={p} x k={k} must equal '
                        f'global_batch_size={global_batch_size}')
    self.p, self.k, self.pk_mode = p, k, pk_mode
    self.group_size = k
    self.global_batch_size = int(global_batch_size)
    pids, cams = np.asarray(index.pids), np.asarray(index.camids)
    self.ids = np.unique(pids)
    self._members = [np.flatnonzero(pids == pid) for pid in self.ids]
    self._member_cams = [cams[m] for m in self._members]
    self.steps_per_epoch = len(self.ids) // p
    if self.steps_per_epoch < 1:
      raise ConfigError(f'pk sampler: {len(self.ids)} identities, fewer than p={p}')

  def _draw(self, rng: np.random.Generator, j: int) -> np.ndarray:
    members, k = self._members[j], self.k
    if self.pk_mode == 'replace':
      return rng.choice(members, size=k, replace=True)
    if self.pk_mode == 'distinct':
      return rng.choice(members, size=k, replace=len(members) < k)
    member_cams = self._member_cams[j]
    order = rng.permutation(np.unique(member_cams))
    cams = np.resize(order, k)  # the shuffled cameras, cycled to length K
    return np.array([rng.choice(members[member_cams == c]) for c in cams])

  def _plan_epoch(self, rng: np.random.Generator) -> np.ndarray:
    id_order = rng.permutation(len(self.ids))
    return np.concatenate([self._draw(rng, j) for j in id_order])


def _pair_sampler(index: TrackletIndex, *, global_batch_size: int, seed: int,
                  p: Optional[int], k: Optional[int], pk_mode: str) -> PairSampler:
  del p, pk_mode  # a pair is K=2 of one identity; P = B / 2
  if k not in (None, 2):
    raise ConfigError(f'config.data.k={k}: the pair sampler has K=2 (leave p/k at 0)')
  return PairSampler(index, global_batch_size=global_batch_size, seed=seed)


# config.data.batch_sampler -> constructor; keys are exactly schema.BATCH_SAMPLERS.
_SAMPLERS = {'pair': _pair_sampler, 'pk': PKSampler}


def make_batch_sampler(kind: str, index: TrackletIndex, *, global_batch_size: int, seed: int,
                       p: Optional[int] = None, k: Optional[int] = None,
                       pk_mode: str = 'replace') -> _EpochPlanned:
  """A batch sampler over the training split `index`.

  Args:
    kind: 'pair' (GRL) or 'pk' (STE-NVAN).
    index: the training TrackletIndex (pids relabelled, camids 0-based).
    global_batch_size: B, rows of one global batch (over all processes).
    seed: run seed; epoch e is planned from np.random.default_rng([seed, e]).
    p, k: P identities x K tracklets ('pk' only; either may be derived from B; default K=4).
    pk_mode: 'replace' | 'distinct' | 'cross_cam' ('pk' only).

  Returns:
    An object with `steps_per_epoch`, `global_batch(step) -> int32[B]` and
    `local_batch(step, process_index, process_count) -> int32[B / process_count]`.
  """
  schema.check_choice(kind, schema.BATCH_SAMPLERS, 'config.data.batch_sampler')
  return _SAMPLERS[kind](index, global_batch_size=global_batch_size, seed=seed, p=p, k=k,
                         pk_mode=pk_mode)
