"""Planning a synthetic MARS tree: its parameters, and which tracklets exist (no pixels).

`plan(cfg)` decides the identities of both splits, the cameras and lengths of their tracklets,
the junk (pid -1) and distractor (pid 0) tracklets of the test split and the queries, all from
one Generator seeded by `cfg.seed`. Rendering (data_pipeline/synthetic/render.py) and writing
(data_pipeline/synthetic/writer.py) follow this plan.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import numpy as np

from grl_jax.errors import ConfigError

# MARS names hold a 4-digit pid, a one-digit camera and a 3-digit frame number.
MAX_IDS = 4000
MAX_FRAMES = 999


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Parameters of a synthetic MARS tree (all recorded in the completion marker)."""
  num_train_ids: int = 32
  num_test_ids: int = 32
  seed: int = 0
  height: int = 256
  width: int = 128
  num_cameras: int = 6
  min_tracklets: int = 4       # per identity
  max_tracklets: int = 8
  min_len: int = 2
  median_len: int = 24         # lognormal body of the length distribution
  max_len: int = 150           # cap of the long tail (<= 999: 3-digit frame numbers)
  long_fraction: float = 0.08  # share of tracklets drawn from the long tail
  junk_fraction: float = 0.07  # junk / distractor tracklets, relative to id tracklets in test
  distractor_fraction: float = 0.15
  occlusion_prob: float = 0.25
  quality: int = 90

  @classmethod
  def from_kwargs(cls, **kwargs) -> SyntheticConfig:
    """A validated config; an unknown or bad parameter raises a one-line ConfigError."""
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(k for k in kwargs if k not in known)
    if unknown:
      raise ConfigError(f'synthetic.{unknown[0]}: unknown parameter; expected one of {known}')
    cfg = cls(**kwargs)
    cfg.validate()
    return cfg

  def validate(self) -> None:
    """Raises ConfigError naming the first field out of range."""
    ints = (('num_train_ids', 1, MAX_IDS), ('num_test_ids', 1, MAX_IDS), ('seed', 0, None),
            ('height', 16, None), ('width', 8, None), ('num_cameras', 2, 9),
            ('min_tracklets', 1, None), ('max_tracklets', 1, None), ('min_len', 1, MAX_FRAMES),
            ('median_len', 1, MAX_FRAMES), ('max_len', 1, MAX_FRAMES), ('quality', 1, 100))
    for name, lo, hi in ints:
      value = getattr(self, name)
      if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
          or value < lo or (hi is not None and value > hi)):
        expected = f'{lo}..{hi}' if hi is not None else f'>= {lo}'
        raise ConfigError(f'synthetic.{name}={value!r}: expected an integer {expected}')
    for name, hi in (('long_fraction', 1), ('occlusion_prob', 1), ('junk_fraction', None),
                     ('distractor_fraction', None)):
      value = getattr(self, name)
      if (isinstance(value, bool) or not isinstance(value, numbers.Real) or value < 0
          or (hi is not None and value > hi)):
        expected = 'a probability in [0, 1]' if hi is not None else 'a number >= 0'
        raise ConfigError(f'synthetic.{name}={value!r}: expected {expected}')
    if self.num_train_ids + self.num_test_ids > MAX_IDS:
      raise ConfigError(
          f'synthetic.num_train_ids + num_test_ids = {self.num_train_ids + self.num_test_ids}: '
          f'expected at most {MAX_IDS} (MARS names hold 4-digit pids)')
    if self.min_tracklets > self.max_tracklets:
      raise ConfigError(f'synthetic.min_tracklets={self.min_tracklets}: expected <= '
                        f'max_tracklets={self.max_tracklets}')
    if not self.min_len <= self.median_len <= self.max_len:
      raise ConfigError(f'synthetic.min_len={self.min_len}, median_len={self.median_len}, '
                        f'max_len={self.max_len}: expected min_len <= median_len <= max_len')


# ------------------------------------------------------------------------------------------------
# Planning: which tracklets exist (ids, cameras, lengths, queries)


@dataclasses.dataclass
class Tracklet:
  """One planned tracklet: identity, camera, T number, length and rows in the name list."""
  pid: int         # MARS pid: -1 junk, 0 distractor, else identity
  cam: int         # 1-based
  number: int = 0  # T number, per (pid, cam), 1-based
  length: int = 0
  start: int = 0   # 1-based row range in the name list, filled when laid out
  end: int = 0

  @property
  def code(self) -> str:
    return '00-1' if self.pid == -1 else f'{self.pid:04d}'

  def name(self, frame: int) -> str:
    return f'{self.code}C{self.cam}T{self.number:04d}F{frame:03d}.jpg'


def _length(rng: np.random.Generator, cfg: SyntheticConfig, median: float) -> int:
  if rng.random() < cfg.long_fraction:
    value = rng.lognormal(math.log(max(median * 3.5, 1.0)), 0.45)
  else:
    value = rng.lognormal(math.log(median), 0.55)
  return int(np.clip(round(value), cfg.min_len, cfg.max_len))


def _identity_tracklets(rng, cfg: SyntheticConfig, pid: int) -> list[Tracklet]:
  # Cameras per id: 2 plus a binomial tail (MARS ids average about 3 cameras).
  k = min(cfg.num_cameras, 2 + int(rng.binomial(cfg.num_cameras - 2, 0.3)))
  cams = np.sort(rng.choice(np.arange(1, cfg.num_cameras + 1), size=k, replace=False))
  n = max(k, int(rng.integers(cfg.min_tracklets, cfg.max_tracklets + 1)))
  chosen = list(cams) + list(rng.choice(cams, size=n - k))
  return [Tracklet(pid, int(c), length=_length(rng, cfg, cfg.median_len)) for c in chosen]


def _number_and_sort(tracklets: list[Tracklet]) -> list[Tracklet]:
  """Assigns T numbers per (pid, cam) and sorts like the MARS name lists; fills start/end."""
  tracklets.sort(key=lambda t: (t.code, t.cam))  # stable: keeps generation order within
  counters: dict[tuple[int, int], int] = {}
  row = 1
  for t in tracklets:
    counters[(t.pid, t.cam)] = counters.get((t.pid, t.cam), 0) + 1
    t.number = counters[(t.pid, t.cam)]
    t.start, t.end = row, row + t.length - 1
    row = t.end + 1
  return tracklets


def _choose_queries(rng, tracklets: list[Tracklet]) -> list[int]:
  """One query per (id, camera) while every query keeps a non-query match in another camera."""
  by_id: dict[int, list[int]] = {}
  for i, t in enumerate(tracklets):
    if t.pid > 0:
      by_id.setdefault(t.pid, []).append(i)
  queries = []
  for pid in sorted(by_id):
    rows = by_id[pid]
    cams = sorted({tracklets[i].cam for i in rows})
    chosen: list[int] = []
    for cam in rng.permutation(cams):
      candidates = [i for i in rows if tracklets[i].cam == cam]
      trial = chosen + [int(rng.choice(candidates))]
      gallery = [i for i in rows if i not in trial]
      if all(any(tracklets[g].cam != tracklets[q].cam for g in gallery) for q in trial):
        chosen = trial
    queries.extend(chosen)
  return sorted(queries)


def plan(cfg: SyntheticConfig) -> dict[str, Any]:
  """The tracklet layout of both splits (no pixels).

  Returns:
    {'train', 'test': list[Tracklet] sorted like the MARS name lists, 'query_rows': sorted
    0-based rows of 'test', 'train_ids', 'test_ids': sorted pids}.
  """
  rng = np.random.default_rng([cfg.seed, 0])
  total = cfg.num_train_ids + cfg.num_test_ids
  pool = np.arange(1, min(9999, 2 * total) + 1)
  pids = rng.choice(pool, size=total, replace=False)
  train_ids = sorted(int(p) for p in pids[:cfg.num_train_ids])
  test_ids = sorted(int(p) for p in pids[cfg.num_train_ids:])
  train = [t for p in train_ids for t in _identity_tracklets(rng, cfg, p)]
  test = [t for p in test_ids for t in _identity_tracklets(rng, cfg, p)]
  n_id = len(test)
  for pid, frac in ((-1, cfg.junk_fraction), (0, cfg.distractor_fraction)):
    count = int(round(frac * n_id)) if frac > 0 else 0
    count = max(count, 1) if frac > 0 else 0
    for _ in range(count):
      cam = int(rng.integers(1, cfg.num_cameras + 1))
      test.append(Tracklet(pid, cam, length=_length(rng, cfg, max(cfg.min_len,
                                                                  cfg.median_len // 2))))
  train = _number_and_sort(train)
  test = _number_and_sort(test)
  queries = _choose_queries(rng, test)
  return {'train': train, 'test': test, 'query_rows': queries, 'train_ids': train_ids,
          'test_ids': test_ids}


