"""Where one train step's device time goes: a `jax.profiler` trace of a few steps, read back with
`jax.profiler.ProfileData` and summarised by XLA op, each op named by its HLO instruction and
the JAX operation it came from (the `op_name` metadata of the compiled module's HLO text).

The device suite traces the GRL recipe step with it (`--profile=FILE`), so that one run on a
GPU brings back what a later session needs to find what holds the step below its utilisation
goal, without another run: the summary (JSON), the trace itself (`.xplane.pb.gz`; gunzipped, for
TensorBoard's profile plugin or xprof) and the optimised HLO (`.hlo.txt.gz`).

Summary fields:
  steps, wall_s_per_step      steps traced and their mean wall time
  busy_s_per_step             device time of the leaf ops per step (a `while`, `call` or
                              `conditional` contains other ops and is not counted itself)
  busy_fraction               busy / wall: well below 1 means the device waits (host, launch
                              gaps, synchronisation). On a CPU, ops run concurrently on
                              several threads, so it can exceed 1 there
  categories                  busy time per kind of op: convolution, matmul, fusion (kLoop /
                              kInput / kOutput / ...), copy / transpose, collective, other
  top                         the `top` ops by total time: HLO name, category, opcode, output
                              shape, calls, seconds per step, share of busy, JAX op_name
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import shutil
import tempfile
import time
from typing import Callable

import jax

CONTAINERS = ('while', 'call', 'conditional', 'async-start', 'async-done')
_INSTR = re.compile(r'^\s*(ROOT\s+)?%([\w.\-]+) = (.*)$')
_OPCODE = re.compile(r'(?:^|\s)([a-z][a-z0-9\-]*)\(')
_COMPUTATION = re.compile(r'^(?:ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$')


def parse_hlo(text: str) -> dict[str, dict]:
  """{instruction name: {opcode, shape, op_name, kind, target}} of an HLO module's text.

  A fusion's op_name is its own or, where it has none, its fused computation root's; `kind` is
  a fusion's kind (kLoop, kInput, kOutput, kCustom), `target` a custom-call's target and
  `contains` the opcodes of a fusion's computation (a dot fused with its epilogue is a matmul)."""
  instrs, roots, computation = {}, {}, None
  opcodes = collections.defaultdict(set)   # computation -> opcodes of its instructions
  for line in text.splitlines():
    m = _COMPUTATION.match(line)
    if m:
      computation = m.group(1)
      continue
    m = _INSTR.match(line)
    if not m:
      continue
    is_root, name, rest = m.groups()
    op = _OPCODE.search(rest)
    opcode = op.group(1) if op else '?'
    shape = rest[:op.start()].strip() if op else ''
    info = {'opcode': opcode, 'shape': shape[:120]}
    for key, pattern in (('op_name', r'op_name="([^"]*)"'), ('kind', r'kind=(k\w+)'),
                         ('target', r'custom_call_target="([^"]*)"'),
                         ('calls', r'calls=%([\w.\-]+)')):
      found = re.search(pattern, rest)
      if found:
        info[key] = found.group(1)
    if 'triton' in rest and opcode == 'fusion':
      info['triton'] = True
    instrs[name] = info
    if computation:
      opcodes[computation].add(opcode)
    if is_root and computation:
      roots[computation] = name
  for info in instrs.values():
    if info.get('calls') in opcodes:
      info['contains'] = sorted(opcodes[info['calls']])
    if 'op_name' not in info and info.get('calls') in roots:
      root = instrs.get(roots[info['calls']], {})
      if 'op_name' in root:
        info['op_name'] = root['op_name']
  return instrs


def category(info: dict) -> str:
  """The kind of work an HLO instruction does, for the summary's per-category times."""
  opcode, target = info.get('opcode', '?'), info.get('target', '').lower()
  contains = info.get('contains', ())
  if opcode == 'convolution' or 'conv' in target or 'convolution' in contains:
    return 'convolution'
  if (opcode == 'dot' or 'gemm' in target or 'cublas' in target or info.get('triton')
      or 'dot' in contains):
    return 'matmul'
  if opcode == 'fusion':
    return f'fusion ({info.get("kind", "?")})'
  if opcode in ('copy', 'transpose', 'copy-start', 'copy-done', 'bitcast'):
    return 'copy / transpose'
  if opcode.startswith(('all-', 'reduce-scatter', 'collective')):
    return 'collective'
  if opcode == 'custom-call':
    return f'custom-call ({info.get("target", "?")})'
  return opcode


def _leaf_events(data) -> list[tuple[str, float]]:
  """(hlo op name, seconds) of every op event: on a device plane's 'XLA Ops' line where there
  is one (GPU / TPU), else every event that carries an `hlo_op` stat (the CPU's thunks)."""
  planes = list(data.planes)
  device = [p for p in planes if p.name.startswith('/device:')]
  events = []
  for plane in device or planes:
    lines = list(plane.lines)
    ops_lines = [l for l in lines if l.name == 'XLA Ops']
    for line in ops_lines or lines:
      for e in line.events:
        stats = dict(e.stats)
        name = stats.get('hlo_op')
        if name is None and ops_lines:
          name = e.name
        if name is not None:
          events.append((str(name), float(e.duration_ns) * 1e-9))
  return events


def summarise(xplane_path: str, hlo_text: str, steps: int, wall_s: float,
              top: int = 40) -> dict:
  """The summary of a trace of `steps` steps that took `wall_s` (see the module docstring)."""
  data = jax.profiler.ProfileData.from_file(xplane_path)
  instrs = parse_hlo(hlo_text)
  total = collections.defaultdict(float)
  calls = collections.Counter()
  for name, seconds in _leaf_events(data):
    total[name] += seconds
    calls[name] += 1
  leaf = {n: s for n, s in total.items()
          if instrs.get(n, {}).get('opcode') not in CONTAINERS}
  busy = sum(leaf.values())
  cats = collections.defaultdict(float)
  for name, seconds in leaf.items():
    cats[category(instrs.get(name, {}))] += seconds
  rows = []
  for name, seconds in sorted(leaf.items(), key=lambda kv: -kv[1])[:top]:
    info = instrs.get(name, {})
    rows.append({'op': name, 'category': category(info), 'opcode': info.get('opcode', '?'),
                 'shape': info.get('shape', ''), 'calls_per_step': calls[name] / steps,
                 's_per_step': seconds / steps, 'share': seconds / busy if busy else None,
                 'op_name': info.get('op_name', '')[-160:]})
  return {
      'steps': steps, 'wall_s_per_step': wall_s / steps, 'busy_s_per_step': busy / steps,
      'busy_fraction': busy / wall_s if wall_s else None,
      'ops_seen': len(leaf), 'ops_in_hlo': len(instrs),
      'categories': {k: {'s_per_step': v / steps, 'share': v / busy if busy else None}
                     for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
      'top': rows,
  }


def profile_step(step: Callable[[], object], sync: Callable[[object], None], compiled,
                 out_file: str, steps: int = 3) -> dict:
  """Traces `steps` calls of `step` (already compiled and warm), writes the summary to
  `out_file` (JSON) with the trace (`<stem>.xplane.pb.gz`) and `compiled`'s HLO
  (`<stem>.hlo.txt.gz`) beside it, and returns the summary."""
  stem = out_file[:-len('.json')] if out_file.endswith('.json') else out_file
  hlo = compiled.as_text()
  trace_dir = tempfile.mkdtemp(prefix='grl_jax_trace_')
  try:
    sync(step())   # the first traced call can carry the profiler's own start-up
    with jax.profiler.trace(trace_dir):
      t0 = time.perf_counter()
      for _ in range(steps):
        out = step()
      sync(out)
      wall = time.perf_counter() - t0
    found = glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True)
    if not found:
      raise RuntimeError(f'jax.profiler.trace wrote no .xplane.pb under {trace_dir}')
    summary = summarise(found[0], hlo, steps, wall)
    os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
    with open(found[0], 'rb') as src, gzip.open(stem + '.xplane.pb.gz', 'wb') as dst:
      shutil.copyfileobj(src, dst)
  finally:
    shutil.rmtree(trace_dir, ignore_errors=True)
  with gzip.open(stem + '.hlo.txt.gz', 'wt') as f:
    f.write(hlo)
  with open(out_file, 'w') as f:
    json.dump(summary, f, indent=1)
  return summary
