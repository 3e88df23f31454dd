"""Which frames of a tracklet make a clip: pure, seeded index functions.

Every function maps a tracklet length `n` (>= 1) and a clip length `T` (>= 1) to int32 frame
indices in [0, n), in temporal order. Training modes take a random source `rng`: a
`np.random.Generator` or anything `np.random.default_rng` accepts (an int or a tuple of ints,
e.g. `(seed, step, position)`), so a draw is a pure function of its key. Test modes are
deterministic and return every clip of the tracklet as int32[num_clips, T].

Modes, keyed by `grl_jax.schema.TRAIN_SAMPLINGS` / `TEST_SAMPLINGS` (the code path each one
reproduces):

* `rrs` (training) / `rrs_test`: restricted random sampling of GRL and STE-NVAN (their
  `rrs_train` / `rrs_test`): the tracklet is cut into T chunks, one frame is taken per chunk.
* `dense`: GRL's test-all protocol, consecutive T-frame clips covering every frame.
* `evenly`, `random`: torchreid's `VideoDataset` sample methods.
* `stride`: CAS (AP3D/TCLNet) `TemporalRandomCrop(size=T, stride=s)`.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence, Union

import numpy as np

from grl_jax import schema

RngLike = Union[np.random.Generator, int, Sequence[int]]


def as_rng(rng: RngLike) -> np.random.Generator:
  """A Generator as is; an int or a tuple of ints becomes `np.random.default_rng(rng)`."""
  if isinstance(rng, np.random.Generator):
    return rng
  return np.random.default_rng(rng)


def sample_rng(seed: int, step: int, position: int, stream: int) -> np.random.Generator:
  """The random source of one clip of one training step.

  Keyed by (seed, step, position in the global batch, stream) so that a clip's frames and
  augmentation do not depend on the process that loads it nor on what was loaded before
  (resume and multi-process runs reproduce it exactly). `stream` separates independent uses
  (1: frame indices, 2: augmentation), so changing the augmentation leaves the frames alone.
  """
  return np.random.default_rng([int(seed), int(step), int(position), int(stream)])


def _check(n: int, t: int) -> tuple[int, int]:
  n, t = int(n), int(t)
  if n < 1:
    raise ValueError(f'tracklet length n={n}: a tracklet needs at least one frame')
  if t < 1:
    raise ValueError(f'clip length T={t}: expected T >= 1')
  return n, t


def _chunk_size(n: int, t: int) -> int:
  # n < T: chunks of one frame each, the trailing chunks being copies of the last frame.
  return math.ceil(n / t) if n >= t else 1


def rrs_train(n: int, t: int, rng: RngLike) -> np.ndarray:
  """Restricted random sampling (GRL `rrs_train`, STE-NVAN training), int32[T].

  n >= T: c = ceil(n / T); the list 0..n-1 padded with copies of n-1 to length c*T is cut into
  T consecutive chunks of c, and one index is drawn uniformly from each chunk.
  n < T: the chunks are [0], [1], ..., [n-1] followed by T-n chunks [n-1].
  Padded position p holds index min(p, n-1), so chunk s draws min(s*c + U{0..c-1}, n-1).
  """
  n, t = _check(n, t)
  c = _chunk_size(n, t)
  offsets = as_rng(rng).integers(0, c, size=t)
  return np.minimum(np.arange(t) * c + offsets, n - 1).astype(np.int32)


def rrs_test(n: int, t: int) -> np.ndarray:
  """The first index of each RRS chunk (GRL/STE-NVAN `rrs_test`), int32[T]."""
  n, t = _check(n, t)
  return np.minimum(np.arange(t) * _chunk_size(n, t), n - 1).astype(np.int32)


def dense(n: int, t: int) -> np.ndarray:
  """Every frame, as consecutive non-overlapping T-frame clips (GRL `dense`), int32[C, T].

  A full clip is emitted while MORE than T frames remain; the remaining 1..T frames form the
  last clip, padded by cycling its own frames (e.g. T=8, n=26: the last clip is
  [24, 25, 24, 25, 24, 25, 24, 25]).
  """
  n, t = _check(n, t)
  num_full = (n - 1) // t  # full clips taken while n - start > T
  start = num_full * t
  rest = n - start  # 1..T frames
  last = start + np.arange(t) % rest
  clips = np.arange(num_full * t).reshape(num_full, t)
  return np.concatenate([clips, last[None]], axis=0).astype(np.int32)


def evenly(n: int, t: int) -> np.ndarray:
  """torchreid `evenly`: fixed stride over the tracklet, int32[T].

  n >= T: the tracklet is truncated to a multiple of T and indices 0, s, 2s, ... are taken with
  s = n // T (so the last n % T frames are never used). n < T: 0..n-1 then copies of n-1.
  """
  n, t = _check(n, t)
  if n >= t:
    return (np.arange(t) * (n // t)).astype(np.int32)
  return np.minimum(np.arange(t), n - 1).astype(np.int32)


def random(n: int, t: int, rng: RngLike) -> np.ndarray:
  """torchreid `random`: T distinct indices (with replacement when n < T), sorted, int32[T]."""
  n, t = _check(n, t)
  idx = as_rng(rng).choice(n, size=t, replace=n < t)
  return np.sort(idx).astype(np.int32)


def stride_crop(n: int, t: int, stride: int, rng: RngLike) -> np.ndarray:
  """CAS `TemporalRandomCrop(size=T, stride)`, int32[T].

  n >= T*stride: T indices at `stride` from a start drawn uniformly in
  {0, ..., n - (T-1)*stride - 1}. Otherwise T sorted random indices, distinct when n >= T and
  with replacement when n < T.
  """
  n, t = _check(n, t)
  stride = int(stride)
  if stride < 1:
    raise ValueError(f'sample_stride={stride}: expected >= 1')
  rng = as_rng(rng)
  if n >= t * stride:
    begin = rng.integers(0, n - (t - 1) * stride)  # upper bound exclusive
    return (begin + stride * np.arange(t)).astype(np.int32)
  idx = rng.choice(n, size=t, replace=n < t)
  return np.sort(idx).astype(np.int32)


# mode -> f(n, T, rng, stride) -> int32[T]; keys are exactly schema.TRAIN_SAMPLINGS.
TRAIN_REGISTRY: dict[str, Callable[..., np.ndarray]] = {
    'rrs': lambda n, t, rng, stride: rrs_train(n, t, rng),
    'stride': lambda n, t, rng, stride: stride_crop(n, t, stride, rng),
    'evenly': lambda n, t, rng, stride: evenly(n, t),
    'random': lambda n, t, rng, stride: random(n, t, rng),
}
# mode -> f(n, T) -> int32[num_clips, T]; keys are exactly schema.TEST_SAMPLINGS.
TEST_REGISTRY: dict[str, Callable[[int, int], np.ndarray]] = {
    'rrs_test': lambda n, t: rrs_test(n, t)[None],
    'dense': dense,
    'evenly': lambda n, t: evenly(n, t)[None],
}


def train_indices(mode: str, n: int, t: int, rng: RngLike, stride: int = 1) -> np.ndarray:
  """The frames of one training clip, int32[T], for `mode` in schema.TRAIN_SAMPLINGS."""
  schema.check_choice(mode, schema.TRAIN_SAMPLINGS, 'config.data.train_sampling')
  return TRAIN_REGISTRY[mode](n, t, rng, stride)


def test_clips(mode: str, n: int, t: int) -> np.ndarray:
  """Every test clip of a tracklet, int32[num_clips, T], for `mode` in schema.TEST_SAMPLINGS."""
  schema.check_choice(mode, schema.TEST_SAMPLINGS, 'config.data.test_sampling')
  return TEST_REGISTRY[mode](n, t)


def num_test_clips(mode: str, n: int, t: int) -> int:
  """len(test_clips(mode, n, t)) without building the clips."""
  schema.check_choice(mode, schema.TEST_SAMPLINGS, 'config.data.test_sampling')
  if mode == 'dense':
    n, t = _check(n, t)
    return (n - 1) // t + 1
  return 1
