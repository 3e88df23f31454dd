"""benchmarks/device_suite.py: the --smoke run with TensorFlow blocked (about 90 s of CPU cold,
30 s with a warm compile cache), the largest-batch search and the RESULTS.md table."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest

from benchmarks import device_suite
from benchmarks.device import common
from tests import helpers

# Installed in every Python the suite starts (parent, workers, torch child) via PYTHONPATH.
_BLOCKER = textwrap.dedent('''
    import importlib.abc, sys

    class _Block(importlib.abc.MetaPathFinder):
      BLOCKED = ('tensorflow', 'data_pipeline.pipeline', 'grl_jax.reporting')

      def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + '.') for b in self.BLOCKED):
          raise ImportError(f'blocked by tests/test_device_suite.py: {name}')
        return None

    sys.meta_path.insert(0, _Block())
''')

NUMERIC = {
    'matmul_bf16_peak': ('step_s', 'compile_s', 'flops_per_step', 'tflops_per_s'),
    'evaluate_features': ('step_s', 'compile_s', 'queries_per_s', 'mAP'),
}
TRAIN_NUMERIC = ('clips_per_s', 'step_s', 'compile_s', 'peak_memory_gib', 'flops_per_step',
                 'tflops_per_s', 'utilisation', 'peak_tflops_per_s')


def _finite_positive(row, key):
  v = row.get(key)
  assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, (row['name'], key, v)


def test_smoke_run_without_tensorflow(tmp_path):
  (tmp_path / 'sitecustomize.py').write_text(_BLOCKER)
  # The suite's persistent compile cache, as every test's (tests/helpers.py): warm, the smoke
  # run's compiles are cache loads (cold, the run takes about twice as long).
  env = helpers.subprocess_env()
  env['PYTHONPATH'] = os.pathsep.join([str(tmp_path), helpers.REPO])
  check = subprocess.run([sys.executable, '-c', 'import tensorflow'], env=env,
                         capture_output=True, text=True, check=False)
  assert check.returncode != 0 and 'blocked by tests' in check.stderr
  out = tmp_path / 'rows.jsonl'
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.device_suite', '--smoke', '--no-record', f'--out={out}',
       f'--profile={tmp_path / "grl_profile.json"}'],
      cwd=helpers.REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  printed = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert printed == rows
  assert [r['name'] for r in rows] == list(device_suite.ALL_ROWS)
  by_name = {r['name']: r for r in rows}
  for r in rows:
    assert set(common.FIELDS) <= set(r), r['name']
    assert r['date'] == common.DATE
    if r['name'] in device_suite.SMOKE_SAME_AS:
      # --smoke runs each code path once; the repeats say which row covers them.
      assert r['skipped'] and device_suite.SMOKE_SAME_AS[r['name']] in r['skipped'], r
      continue
    if r['skipped']:
      # Otherwise only the official rows may be skipped (no torch in this venv / no copy in CI).
      assert r['name'] in device_suite.OFFICIAL, (r['name'], r['skipped'])
      assert isinstance(r['skipped'], str) and len(r['skipped']) > 10
      continue
    for key in NUMERIC.get(r['name'], TRAIN_NUMERIC):
      _finite_positive(r, key)
  peak = by_name['matmul_bf16_peak']['tflops_per_s']
  for name in ('grl_train_f32_recipe', 'ste_nvan_train', 'grl_eval_extract'):
    r = by_name[name]
    assert r['peak_tflops_per_s'] == pytest.approx(peak)
    assert r['utilisation'] == pytest.approx(r['flops_per_step'] / r['step_s'] / 1e12 / peak)
  assert by_name['grl_train_f32_recipe']['config']['dtype'] == 'float32'
  assert by_name['grl_train_f32_recipe']['config']['batch'] == '4x2x64x32'
  assert by_name['ste_nvan_train']['config']['sampler'] == 'pk'
  assert by_name['grl_eval_extract']['config']['mode'] == 'eval'
  for name in ('grl_train_f32_max',):
    r = by_name[name]
    probes = r['search_probes']
    assert probes[0][:2] == [4, True] and any(not ok for _, ok, _ in probes), probes
    fit = [b for b, ok, _ in probes if ok]
    assert r['config']['batch'].startswith(f'{max(fit)}x')
    assert all(need <= r['search_limit_gib'] for _, ok, need in probes if ok)
    assert all(need > r['search_limit_gib'] for _, ok, need in probes if not ok)
  # --profile traced the GRL recipe step: the summary, the trace and the HLO beside it.
  prof = by_name[device_suite.PROFILE_ROW[True]]
  assert prof['profile_file'] == str(tmp_path / 'grl_profile.json'), prof.get('profile_error')
  summary = json.loads((tmp_path / 'grl_profile.json').read_text())
  assert (tmp_path / 'grl_profile.xplane.pb.gz').stat().st_size > 0
  assert (tmp_path / 'grl_profile.hlo.txt.gz').stat().st_size > 0
  assert summary['steps'] >= 1 and summary['busy_s_per_step'] > 0
  assert sum(c['share'] for c in summary['categories'].values()) == pytest.approx(1.0)
  assert 'convolution' in summary['categories'] or 'matmul' in summary['categories']
  assert all(r['s_per_step'] > 0 for r in summary['top'])
  assert any('backbone' in r['op_name'] for r in summary['top']), summary['top'][:5]
  # GRL's TRL is an nn.scan: XLA counts a loop body once, so the count comes from the unrolled
  # lowering, and it covers the whole step (more than the eval forward at the same batch).
  assert 'TRL unrolled' in by_name['grl_train_f32_recipe']['flops_source']
  assert (by_name['grl_train_f32_recipe']['flops_per_step']
          > by_name['grl_eval_extract']['flops_per_step'])


def test_search_doubles_then_bisects():
  calls = []

  def fits(b):
    calls.append(b)
    return b <= 100

  r = common.search_largest_batch(fits, 16, multiple=2, resolution=4)
  assert r['batch'] == 100 and r['stopped'] is None
  assert calls[:4] == [16, 32, 64, 128] and r['upper'] - r['batch'] <= 4
  r = common.search_largest_batch(fits, 16, multiple=2, resolution=4, max_probes=5)
  assert r['stopped'] == 'probe limit 5' and r['batch'] == 96
  r = common.search_largest_batch(lambda b: b <= 8, 16)
  assert r['batch'] == 0 and r['upper'] == 16
  r = common.search_largest_batch(lambda b: True, 16, max_batch=64)
  assert r['batch'] == 64 and 'max_batch' in r['stopped']
  with pytest.raises(ValueError, match='multiple'):
    common.search_largest_batch(fits, 15, multiple=2)


def test_markdown_table_and_utilisation():
  rows = [common.make_row('matmul_bf16_peak', {'n': 8, 'dtype': 'bfloat16'}, step_s=1.0,
                          flops_per_step=2e12, device='dev', platform='gpu'),
          common.make_row('grl_train_bf16_recipe', {'dtype': 'bfloat16', 'batch': '16x8x256x128'},
                          clips_per_s=16.0, step_s=1.0, flops_per_step=1e12, device='dev',
                          profile_busy_fraction=0.8,
                          profile_categories={'convolution': 0.6, 'fusion (kLoop)': 0.25}),
          common.skipped_row('official_grl_train_amp', {}, 'no torch here')]
  rows = device_suite.finish(rows)
  assert [r['name'] for r in rows][0] == 'official_grl_train_amp'
  assert rows[2]['utilisation'] == pytest.approx(0.5)
  md = device_suite.markdown(rows, 'cmd')
  assert md.startswith('## Device suite') and common.DATE in md and 'dev' in md
  assert '| grl_train_bf16_recipe | bfloat16 | 16x8x256x128 | 16.0 |' in md
  assert '50.0%' in md and 'no torch here' in md
  assert 'device busy 80% of the wall time; convolution 60%, fusion (kLoop) 25%' in md


def test_profile_names_ops_by_hlo_and_jax_op(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from benchmarks.device import profile  # pylint: disable=g-import-not-at-top

  def f(x, w):
    def body(c, _):
      return jnp.tanh(c @ w), None
    return jax.lax.scan(body, x, None, length=3)[0].sum()

  x, w = jnp.ones((256, 256)), jnp.full((256, 256), 1e-3)
  compiled = jax.jit(f).lower(x, w).compile()
  summary = profile.profile_step(lambda: compiled(x, w), lambda y: y.block_until_ready(),
                                 compiled, str(tmp_path / 'p.json'), steps=2)
  assert json.loads((tmp_path / 'p.json').read_text()) == summary
  assert summary['steps'] == 2 and summary['ops_seen'] >= 1
  instrs = profile.parse_hlo(compiled.as_text())
  # Every op in the summary is an instruction of the compiled module, never a container.
  assert all(r['op'] in instrs and r['opcode'] not in profile.CONTAINERS
             for r in summary['top'])
  matmuls = [r for r in summary['top'] if r['category'] == 'matmul']
  assert matmuls and any('dot_general' in r['op_name'] for r in matmuls), summary['top']
  # The matmul runs once per scan step: 3 calls per traced step.
  assert max(r['calls_per_step'] for r in matmuls) == 3
