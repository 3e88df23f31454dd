"""The grl_jax measurements of the device suite: train steps, eval extraction, evaluation.

Every train-step row builds exactly the trainer's jitted step (`grl_jax.trainer.setup.build`)
and feeds random uint8 clips (the identity layout of the model's batch sampler: pairs for GRL,
P x K for the baselines), as benchmarks/train_step.py does, so it times model + objective +
optimiser alone. Per row:

    compile_s       lower + compile of the step (XLA, no persistent cache unless the caller set one)
    step_s          median wall time of the timed steps after one warm-up (block_until_ready)
    clips_per_s     B / step_s
    peak_memory_gib XLA memory analysis of the compiled step: arguments + outputs + temporaries
                    - aliased (donated) bytes, i.e. what one step needs on the device
    device_peak_gib the allocator's peak_bytes_in_use so far in this process (GPU/TPU only;
                    cumulative over the rows run before, so an upper bound for this one)
    flops_per_step  model FLOPs: XLA cost analysis of the lowered (pre-optimisation) step, so
                    rows that differ only in how XLA compiles the same maths count the same.
                    XLA counts a while-loop body once, so for GRL's scanned TRL
                    (config.model.trl_scan) the count is of the same step unrolled

The largest batch that fits is searched with compile-time memory analysis only (no step runs
until the answer is known, so no OOM): `common.search_largest_batch` doubling then bisecting,
against the free device memory (the allocator's bytes_limit - bytes_in_use) x `headroom`.
"""
from __future__ import annotations

import gc
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.device import common
from benchmarks.device import profile
from grl_jax import checkpoint
from grl_jax import sharding
from grl_jax import validation
from grl_jax.trainer import memory
from grl_jax.trainer import setup as setup_lib

GIB = 2.0**30


# ------------------------------------------------------------------------------------------------
# Device, XLA analyses


def device_info() -> dict:
  dev = jax.devices()[0]
  return {'device': f'{dev.device_kind} x{jax.device_count()}', 'platform': dev.platform}


def _sync(x):
  return jax.block_until_ready(x)


def cost_flops(stage) -> float | None:
  """XLA's 'flops' of a jax.stages.Lowered or Compiled (None if the backend gives none)."""
  try:
    cost = stage.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (some backends do not implement it)
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  flops = (cost or {}).get('flops')
  return float(flops) if flops is not None and flops == flops and flops > 0 else None


def step_bytes(compiled) -> float | None:
  """Device bytes one call of `compiled` needs: arguments + outputs + temps + code - aliased
  (the trainer's own pre-training check, grl_jax/trainer/memory.py, counts the same)."""
  b = memory.step_bytes(compiled)
  return None if b is None else float(b)


def device_memory() -> dict | None:
  """{'limit', 'in_use', 'peak'} bytes of device 0's allocator, None where there is none (CPU)."""
  dev = jax.local_devices()[0]
  stats = dev.memory_stats() if hasattr(dev, 'memory_stats') else None
  if not stats or 'bytes_limit' not in stats:
    return None
  return {'limit': float(stats['bytes_limit']), 'in_use': float(stats.get('bytes_in_use', 0)),
          'peak': float(stats.get('peak_bytes_in_use', 0))}


def _device_peak_gib():
  mem = device_memory()
  return mem['peak'] / GIB if mem else None


# ------------------------------------------------------------------------------------------------
# The matmul peak


def matmul_peak_row(n: int, reps: int) -> dict:
  """bf16 [n, n] x [n, n] products (f32 accumulation is XLA's choice): 2 n^3 FLOP each, timed
  as `reps` products chained inside one jitted loop so dispatch overhead does not count."""
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), jnp.bfloat16)
  b = jax.random.normal(kb, (n, n), jnp.bfloat16) / np.sqrt(n)

  def chain(a, b):
    # a_{i+1} = a_i @ b: each product depends on the last, so XLA can neither fuse nor skip any.
    return jax.lax.fori_loop(0, reps, lambda i, x: (x @ b).astype(jnp.bfloat16), a)

  t0 = time.perf_counter()
  f = jax.jit(chain).lower(a, b).compile()
  compile_s = time.perf_counter() - t0
  times = common.time_calls(lambda: f(a, b), _sync, steps=5, warmup=2)
  per = common.median(times) / reps
  flops = 2.0 * n**3
  peak = flops / per / 1e12
  return common.make_row('matmul_bf16_peak', {'n': n, 'dtype': 'bfloat16', 'chained': reps},
                         step_s=per, compile_s=compile_s, flops_per_step=flops,
                         flops_source='2 n^3', tflops_per_s=peak, utilisation=1.0,
                         peak_tflops_per_s=peak, **device_info())


# ------------------------------------------------------------------------------------------------
# Batches


def batch_layout(config, batch_size: int) -> int:
  """Clips per identity in a batch of the config's sampler: 2 for pairs, K for P x K."""
  d = config.data
  if str(d.batch_sampler) == 'pair':
    return 2
  k = int(d.k) or (batch_size // int(d.p) if int(d.p) else 4)
  return max(1, min(k, batch_size))


def random_batch(config, batch_size: int, num_classes: int, seed: int = 0) -> dict:
  """uint8 clips [B, T, H, W, 3]; consecutive runs of K rows share an identity, and the two
  rows of a pair (K = 2) come from cameras 0 and 1 (what the pair objective expects)."""
  d = config.data
  rng = np.random.default_rng(seed)
  k = batch_layout(config, batch_size)
  ids = -(-batch_size // k)
  frames = rng.integers(0, 256, (batch_size, int(d.seq_len), int(d.height), int(d.width), 3),
                        dtype=np.uint8)
  pid = np.repeat(rng.choice(num_classes, ids, replace=ids > num_classes), k)[:batch_size]
  camid = np.tile(np.arange(k, dtype=np.int32) % 6, ids)[:batch_size]
  return {'frames': frames, 'pid': pid.astype(np.int32), 'camid': camid.astype(np.int32),
          'tracklet': np.arange(batch_size, dtype=np.int32)}


# The trainer's batch as sharded ShapeDtypeStructs (the same one the memory check compiles).
abstract_batch = memory.abstract_batch


def unrolled_config(config):
  """A copy of `config` with GRL's TRL unrolled (trl_scan=False: same maths, and XLA's cost
  analysis counts each of its T steps, where it counts a scanned loop's body once)."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.trl_scan = False
  return config


def _describe(config, batch_size: int, smoke: bool) -> dict:
  d, m = config.data, config.model
  out = {'model': str(m.name), 'dtype': str(m.get('dtype', 'float32')),
         'batch': f'{batch_size}x{d.seq_len}x{d.height}x{d.width}',
         'sampler': str(d.batch_sampler), 'smoke': bool(smoke)}
  if 'trl_scan' in m:
    out['trl'] = 'scan' if m.trl_scan else 'unrolled'
  return out


# ------------------------------------------------------------------------------------------------
# Train steps


def _profile(step, compiled, profile_file: str) -> dict:
  """The row's profile fields: where the summary went and its headline, or why there is none
  (a profiler failure must not cost the row its timing)."""
  try:
    summary = profile.profile_step(step, _sync, compiled, profile_file)
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).splitlines()[0][:200] if str(e) else ''
    return {'profile_error': f'{type(e).__name__}: {first}'}
  return {'profile_file': profile_file, 'profile_busy_fraction': summary['busy_fraction'],
          'profile_categories': {k: round(v['share'] or 0.0, 4)
                                 for k, v in list(summary['categories'].items())[:6]}}


class TrainBench:
  """One config's trainer pieces, built once and reused by the recipe row, the search and the
  largest-batch row (so the model is traced once per config, not once per probe)."""

  def __init__(self, config, num_classes: int, smoke: bool):
    validation.validate(config, device_count=jax.device_count(),
                        process_count=jax.process_count(), check_data=False)
    self.config, self.num_classes, self.smoke = config, num_classes, smoke
    # check_memory=False: the suite sizes batches itself and times the compile it runs.
    self.setup = setup_lib.build(config, num_classes=num_classes, steps_per_epoch=1000,
                                 check_memory=False)
    self.abstract_state = checkpoint.abstract_tree(self.setup.abstract_state,
                                                   sharding.replicated(self.setup.mesh))
    self._flops_per_clip = None
    self.compiled: dict[int, tuple] = {}   # batch -> (compiled step, compile seconds)
    # The state a row ended with, handed to the next row of this config: the initialiser (a
    # compile of the whole forward pass) then runs once per config, not once per row. Step
    # times do not depend on the values.
    self._state = None

  def take_state(self):
    """The held state (or a fresh one); the caller owns it (train steps donate it)."""
    state, self._state = self._state, None
    return state if state is not None else self.setup.init_state(int(self.config.seed))

  def give_state(self, state) -> None:
    self._state = state

  def held_bytes(self) -> float:
    """Device bytes of the held state (counted as in use by the allocator, yet also an
    argument of every step the memory analysis sizes)."""
    if self._state is None:
      return 0.0
    return float(sum(x.nbytes for x in jax.tree.leaves(self._state) if hasattr(x, 'nbytes')))

  def compile(self, batch_size: int):
    if batch_size not in self.compiled:
      t0 = time.perf_counter()
      c = self.setup.train_step.lower(
          self.abstract_state, abstract_batch(self.config, batch_size, self.setup.mesh)).compile()
      self.compiled[batch_size] = (c, time.perf_counter() - t0)
    return self.compiled[batch_size]

  def flops(self, batch_size: int) -> tuple[float | None, str]:
    """Model FLOPs of one step at `batch_size` and where the figure comes from: XLA's count on
    the lowered (pre-optimisation) HLO, so a scanned and an unrolled TRL count the same maths.
    XLA counts a loop body once, so a scanned TRL is counted on the same step unrolled."""
    if self._flops_per_clip is None:
      # One lowering (no compile) at the first batch asked; the count is linear in B.
      config, setup, abstract = self.config, self.setup, self.abstract_state
      if config.model.get('trl_scan', False):
        config = unrolled_config(config)
        setup = setup_lib.build(config, num_classes=self.num_classes, steps_per_epoch=1000,
                                check_memory=False)
        abstract = checkpoint.abstract_tree(setup.abstract_state,
                                            sharding.replicated(setup.mesh))
      f = cost_flops(setup.train_step.lower(abstract,
                                            abstract_batch(config, batch_size, setup.mesh)))
      self._flops_per_clip = (f / batch_size if f else None, batch_size)
    per_clip, counted_at = self._flops_per_clip
    unrolled = ' with the TRL unrolled' if self.config.model.get('trl_scan', False) else ''
    src = f'XLA cost analysis of the lowered step{unrolled}, {counted_at} clips'
    if counted_at != batch_size:
      src += f', scaled to {batch_size}'
    return (per_clip * batch_size if per_clip else None), src

  def run(self, name: str, batch_size: int, steps: int, profile_file: str | None = None) -> dict:
    """Times the step at `batch_size` (compiles it if the search has not); with
    `profile_file`, then traces a few more steps (benchmarks/device/profile.py)."""
    desc = _describe(self.config, batch_size, self.smoke)
    compiled, compile_s = self.compile(batch_size)
    flops, flops_src = self.flops(batch_size)
    batch = sharding.to_global(random_batch(self.config, batch_size, self.num_classes),
                               self.setup.mesh)
    holder = {'state': self.take_state()}

    def step():
      holder['state'], holder['metrics'] = compiled(holder['state'], batch)
      return holder['metrics']

    try:
      times = common.time_calls(step, _sync, steps=steps, warmup=1)
      loss = float(holder['metrics']['loss'])
      profiled = _profile(step, compiled, profile_file) if profile_file else {}
      self.give_state(holder['state'])
    except Exception as e:  # pylint: disable=broad-except  (an OOM at run time: report, go on)
      return common.skipped_row(name, desc, f'step failed at batch {batch_size}: '
                                f'{type(e).__name__}: {str(e).splitlines()[0][:200]}')
    finally:
      del holder, batch
      gc.collect()
    step_s = common.median(times)
    need = step_bytes(compiled)
    return common.make_row(
        name, desc, clips_per_s=batch_size / step_s, step_s=step_s, step_s_min=min(times),
        compile_s=compile_s, peak_memory_gib=need / GIB if need else None,
        memory_source='XLA memory analysis (args + outputs + temps - aliased)',
        device_peak_gib=_device_peak_gib(), flops_per_step=flops, flops_source=flops_src,
        loss=loss, steps=steps, **profiled, **device_info())

  def largest_batch(self, start: int, *, limit_bytes: float | None, headroom: float,
                    resolution: int, max_probes: int, deadline: float | None) -> dict:
    """`common.search_largest_batch` with compile-time memory analysis as the probe."""
    mem = device_memory()
    if limit_bytes is None:
      if mem is None:
        raise ValueError('no device memory limit known (CPU): pass limit_bytes')
      limit_bytes = (mem['limit'] - mem['in_use'] + self.held_bytes()) * headroom
    needs = {}

    def fits(b: int) -> bool:
      compiled, _ = self.compile(b)
      needs[b] = step_bytes(compiled)
      if needs[b] is None:
        raise RuntimeError('the backend gives no memory analysis')
      if needs[b] > limit_bytes:
        del self.compiled[b]     # free the executable of a batch that will not run
      return needs[b] <= limit_bytes

    multiple = 2 if str(self.config.data.batch_sampler) == 'pair' else batch_layout(
        self.config, start)
    result = common.search_largest_batch(fits, start, multiple=multiple, resolution=resolution,
                                         max_probes=max_probes, deadline=deadline)
    for b in list(self.compiled):
      if b != result['batch'] and b != start:
        del self.compiled[b]
    result['limit_gib'] = limit_bytes / GIB
    result['need_gib'] = {b: n / GIB for b, n in needs.items()}
    return result


def search_row(bench: TrainBench, name: str, start: int, steps: int, **search) -> dict:
  """The largest-batch row: search, then time the step at the batch found."""
  t0 = time.perf_counter()
  try:
    found = bench.largest_batch(start, **search)
  except Exception as e:  # pylint: disable=broad-except
    return common.skipped_row(name, _describe(bench.config, start, bench.smoke),
                              f'search failed: {type(e).__name__}: {e}')
  search_s = time.perf_counter() - t0
  extra = {'search_s': search_s, 'search_limit_gib': found['limit_gib'],
           'search_probes': [[b, ok, round(found["need_gib"].get(b, 0.0), 6)]
                             for b, ok in found['probes']],
           'search_stopped': found['stopped'], 'search_upper': found['upper']}
  if not found['batch']:
    row = common.skipped_row(name, _describe(bench.config, start, bench.smoke),
                             f'the recipe batch {start} does not fit '
                             f'{found["limit_gib"]:.1f} GiB')
  else:
    row = bench.run(name, found['batch'], steps)
  row.update(extra)
  return row


# ------------------------------------------------------------------------------------------------
# Eval extraction and evaluation


def eval_extract_row(bench: TrainBench, batch_size: int, steps: int) -> dict:
  """Clips/s of the eval step (descriptor extraction, eval mode) on random uint8 clips, with
  the variables of `bench`'s held state (its train rows' setup and initialiser are reused)."""
  name = 'grl_eval_extract'
  config, num_classes, smoke, s = bench.config, bench.num_classes, bench.smoke, bench.setup
  state = bench.take_state()
  bench.give_state(state)      # the eval step reads the variables, it does not donate them
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  b = random_batch(config, batch_size, num_classes)
  g = sharding.to_global({'frames': b['frames'], 'tracklet': b['tracklet']}, s.mesh)
  t0 = time.perf_counter()
  lowered = s.eval_step.lower(variables, g['frames'], g['tracklet'])
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  if config.model.get('trl_scan', False):
    u = setup_lib.build(unrolled_config(config), num_classes=num_classes, steps_per_epoch=1000,
                        train=False)
    flops = cost_flops(u.eval_step.lower(variables, g['frames'], g['tracklet']))
    src = 'XLA cost analysis of the lowered eval step with the TRL unrolled'
  else:
    flops, src = cost_flops(lowered), 'XLA cost analysis of the lowered eval step'
  times = common.time_calls(lambda: compiled(variables, g['frames'], g['tracklet']), _sync,
                            steps=steps, warmup=1)
  step_s = common.median(times)
  need = step_bytes(compiled)
  desc = _describe(config, batch_size, smoke)
  desc['mode'] = 'eval'
  return common.make_row(
      name, desc, clips_per_s=batch_size / step_s, step_s=step_s, compile_s=compile_s,
      peak_memory_gib=need / GIB if need else None,
      memory_source='XLA memory analysis (args + outputs + temps - aliased)',
      device_peak_gib=_device_peak_gib(), flops_per_step=flops, flops_source=src, steps=steps,
      **device_info())


def _small_problem(nq: int, ng: int, dim: int, seed: int = 0):
  """A random re-ID problem: noisy id centres over 6 cameras (queries' ids all in the gallery)."""
  rng = np.random.default_rng(seed)
  ids = max(2, nq // 2)
  centres = rng.standard_normal((ids, dim)).astype(np.float32)
  q_pids = rng.integers(0, ids, nq)
  g_pids = np.concatenate([q_pids, rng.integers(0, ids, ng - nq)])
  noise = lambda n: 2.0 * rng.standard_normal((n, dim)).astype(np.float32)  # noqa: E731
  qf, gf = centres[q_pids] + noise(nq), centres[g_pids] + noise(ng)
  q_cams = rng.integers(0, 6, nq)
  g_cams = np.concatenate([(q_cams + 1) % 6, rng.integers(0, 6, ng - nq)])
  return qf, gf, q_pids, g_pids, q_cams, g_cams


def evaluation_row(smoke: bool, repeats: int) -> dict:
  """`grl_jax.evaluation.evaluate_features` on a MARS-sized problem (cas: 1,980 x 11,310 x 2048,
  benchmarks/evaluation.py's generator); smoke: 64 x 256 x 64."""
  from grl_jax import evaluation  # pylint: disable=g-import-not-at-top
  if smoke:
    problem, protocol = _small_problem(64, 256, 64), 'torchreid'
  else:
    from benchmarks import evaluation as eval_bench  # pylint: disable=g-import-not-at-top
    problem, protocol = eval_bench.make_problem('cas', 1), 'cas'
  qf, gf = problem[:2]
  desc = {'num_query': int(qf.shape[0]), 'num_gallery': int(gf.shape[0]), 'dim': int(qf.shape[1]),
          'protocol': protocol, 'metric': 'euclidean', 'smoke': bool(smoke)}
  call = lambda: evaluation.evaluate_features(*problem, metric='euclidean',  # noqa: E731
                                              protocol=protocol)
  t0 = time.perf_counter()
  result = call()
  first_s = time.perf_counter() - t0
  times = common.time_calls(call, lambda r: r, steps=repeats, warmup=0)
  step_s = common.median(times)
  return common.make_row(
      'evaluate_features', desc, step_s=step_s, compile_s=max(0.0, first_s - step_s),
      queries_per_s=qf.shape[0] / step_s, mAP=float(result['mAP']),
      rank1=float(result['rank1']), device_peak_gib=_device_peak_gib(),
      memory_source='not measured (host ranking; see benchmarks/evaluation.py)',
      **device_info())
