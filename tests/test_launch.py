"""The launchers in launch/: each `--dry-run` prints, in order, the commands a real run issues,
and a real run against stand-in `gcloud`, `tar`, `sbatch`, `srun`, `scontrol` and `python`
programs (written into tmp_path, first on PATH, logging their argv) issues them in that order,
including the resume loop after a preemption; launch/train_done.py on real checkpoints; the
GKE JobSet manifest; JAX's Slurm detection with the Slurm script's GPU binding.

As a program (`python -m tests.test_launch`) this module is the child of the
launch/local_multiprocess.py test: it prints its rank and exits with $CHILD_EXIT_<rank>.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(REPO, 'launch', 'tpu_vm.sh')
SLURM = os.path.join(REPO, 'launch', 'slurm_gpu.sbatch')
CONFIG = 'configs/mars.py:model=grl,accel=tpu'

# A stand-in gcloud: logs its argv and plays a TPU slice whose state lives in $FAKE_DIR/state.
# $FAKE_TRAIN lists what each training attempt does: ok, preempt (the slice goes away under it),
# stopped (SIGTERM: checkpoint saved, exit 0, not done), fail (exit 1 on a healthy slice).
FAKE_GCLOUD = r'''
import json, os, sys
d = os.environ['FAKE_DIR']
argv = sys.argv[1:]
with open(os.path.join(d, 'calls.jsonl'), 'a') as f:
  f.write(json.dumps(['gcloud'] + argv) + '\n')
path = os.path.join(d, 'state')
state = open(path).read() if os.path.exists(path) else 'MISSING'
def put(s):
  open(path, 'w').write(s)
kind, verb = argv[2], argv[3]
queued = kind == 'queued-resources'
if verb == 'create':
  put('WAITING_FOR_RESOURCES' if queued else 'READY')
elif verb == 'delete':
  put('MISSING')
elif verb == 'describe':
  if state == 'MISSING':
    sys.exit(1)
  if queued:
    print({'READY': 'ACTIVE', 'PREEMPTED': 'SUSPENDED'}.get(state, state))
    if state == 'WAITING_FOR_RESOURCES':
      put('READY')
  else:
    print(state)
elif verb in ('ssh', 'scp'):
  if state != 'READY':
    sys.exit(255)
  cmd = argv[argv.index('--command') + 1] if '--command' in argv else ''
  if 'train_done.py' in cmd:
    sys.exit(0 if os.path.exists(os.path.join(d, 'trained')) else 3)
  if 'grl_jax.main' in cmd and '--mode=' not in cmd:
    n = sum(1 for line in open(os.path.join(d, 'calls.jsonl'))
            if 'grl_jax.main' in line and '--mode=' not in line)
    plan = os.environ.get('FAKE_TRAIN', 'ok').split(',')[n - 1]
    if plan == 'preempt':
      put('PREEMPTED')
      sys.exit(255)
    if plan == 'fail':
      sys.exit(1)
    if plan == 'ok':
      open(os.path.join(d, 'trained'), 'w').write('')
'''

# Any other stand-in: logs its argv (and the variables named in $FAKE_ENV), exits $FAKE_<NAME>_RC.
FAKE_LOGGER = r'''
import json, os, sys
d = os.environ['FAKE_DIR']
name = os.path.basename(sys.argv[0])
env = {k: os.environ.get(k) for k in os.environ.get('FAKE_ENV', '').split(',') if k}
with open(os.path.join(d, 'calls.jsonl'), 'a') as f:
  f.write(json.dumps([name] + sys.argv[1:] + ([env] if env else [])) + '\n')
rc = os.environ.get(f'FAKE_{name.upper()}_RC', '0')
if name == 'python' and 'train_done.py' in ' '.join(sys.argv):
  rc = os.environ.get('FAKE_DONE_RC', '0')
sys.exit(int(rc))
'''


@pytest.fixture
def fake(tmp_path):
  """(bin dir with the stand-ins, environment putting it first on PATH, calls() reader)."""
  bindir = tmp_path / 'bin'
  bindir.mkdir()
  for name, body in (('gcloud', FAKE_GCLOUD), ('tar', FAKE_LOGGER), ('sbatch', FAKE_LOGGER),
                     ('srun', FAKE_LOGGER), ('scontrol', FAKE_LOGGER), ('python', FAKE_LOGGER)):
    (bindir / name).write_text(f'#!{sys.executable}\n{body}')
    (bindir / name).chmod(0o755)
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('SLURM_', 'TPU_', 'GRL_JAX_', 'QUEUED', 'SPOT', 'DATA', 'PACKED'))}
  env.update(PATH=f'{bindir}:{env["PATH"]}', FAKE_DIR=str(tmp_path), TMPDIR=str(tmp_path),
             TPU_NAME='grl', ZONE='us-central2-b', BUCKET='gs://bkt', POLL_S='0')

  def calls() -> list[list]:
    log = tmp_path / 'calls.jsonl'
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
  return bindir, env, calls


def _run(args, env, **extra):
  return subprocess.run(args, cwd=REPO, env={**env, **extra}, capture_output=True, text=True,
                        timeout=60)


def _label(argv: list[str]) -> str:
  """A call (gcloud argv, or the command line printed by --dry-run, as words) as one step."""
  words = [w for w in argv if isinstance(w, str)]
  text = ' '.join(words)
  if words[0] == 'tar':
    return 'tar'
  if words[0] != 'gcloud':
    return words[0]
  verb = words[4]
  if verb not in ('ssh',):
    return verb
  if 'uv python install 3.11' in text:
    return 'setup'
  if 'train_done.py' in text:
    return 'done?'
  m = re.search(r'--mode=(\w+)(?: --split=(\w+))?', text)
  return ' '.join(x for x in ('main', *(m.groups() if m else ('train',))) if x)


def _dry_lines(out: str) -> list[list[str]]:
  import shlex  # pylint: disable=g-import-not-at-top
  return [shlex.split(line) for line in out.splitlines() if line and not line.startswith('#')]


RUN_ORDER = ['create', 'tar', 'scp', 'setup', 'describe', 'main train', 'done?', 'main eval',
             'main extract query', 'main extract gallery', 'delete']


def test_tpu_vm_dry_run_prints_the_whole_run_in_order_and_runs_nothing(fake):
  _, env, calls = fake
  proc = _run([TPU, '--dry-run', 'run', CONFIG, 'mars', '--config.optim.lr=2e-3',
               '--config.x=a b'], env, PACKED='gs://bkt/packed/mars')
  assert proc.returncode == 0, proc.stderr
  lines = _dry_lines(proc.stdout)
  assert [_label(w) for w in lines] == RUN_ORDER, proc.stdout
  assert calls() == []                              # nothing ran
  by = {_label(w): w for w in lines}
  assert by['create'][:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create']
  setup = by['setup'][-1]
  assert 'uv venv --python 3.11' in setup and "'jax[tpu]==0.10.2'" in setup, setup
  for step in ('setup', 'main train', 'main eval', 'main extract query', 'scp'):
    assert '--worker=all' in by[step], (step, by[step])
  assert '--worker=0' in by['done?']
  train = by['main train'][-1]
  assert train.startswith('cd grl_jax && GRL_JAX_DISTRIBUTED=1 '), train
  import shlex  # pylint: disable=g-import-not-at-top
  args = shlex.split(train.split(' -m grl_jax.main ', 1)[1])
  assert args == [f'--config={CONFIG}', '--workdir=gs://bkt/workdirs/mars',
                  '--config.data.root=gs://bkt/data/MARS',
                  '--config.data.packed=gs://bkt/packed/mars', '--config.optim.lr=2e-3',
                  '--config.x=a b'], args
  assert '--workdir=gs://bkt/workdirs/mars' in by['main eval'][-1]


def test_tpu_vm_run_resumes_after_a_preemption(fake):
  _, env, calls = fake
  proc = _run([TPU, 'run', CONFIG, 'mars'], env, FAKE_TRAIN='preempt,ok')
  assert proc.returncode == 0, proc.stderr
  got = [_label(c) for c in calls()]
  attempt2 = ['delete', 'create', 'tar', 'scp', 'setup', 'main train', 'done?']
  assert got == (RUN_ORDER[:7] + ['describe'] + attempt2 + RUN_ORDER[7:]), got
  assert 'slice grl is PREEMPTED: recreating it' in proc.stderr, proc.stderr


def test_tpu_vm_queued_spot_slice_waits_for_capacity_and_resumes(fake):
  _, env, calls = fake
  proc = _run([TPU, 'train_until_done', CONFIG, 'mars'], env, QUEUED='1', SPOT='1',
              FAKE_TRAIN='stopped,preempt,ok')
  assert proc.returncode == 0, proc.stderr
  got = [_label(c) for c in calls()]
  # No slice yet: created through the queue (polled until ACTIVE); a SIGTERM stop (exit 0, not
  # done) resumes on the same slice; a preemption (SUSPENDED) recreates it.
  recreate = ['delete', 'create', 'describe', 'describe', 'tar', 'scp', 'setup']
  assert got == (['describe'] + recreate + ['main train', 'done?', 'describe', 'main train',
                                            'done?', 'describe'] + recreate
                 + ['main train', 'done?']), got
  create = next(c for c in calls() if c[3:5] == ['queued-resources', 'create'])
  assert '--spot' in create and '--node-id' in create
  delete = next(c for c in calls() if c[4] == 'delete')
  assert delete[3] == 'queued-resources' and '--force' in delete


def test_tpu_vm_stops_when_training_fails_on_a_healthy_slice(fake):
  _, env, calls = fake
  proc = _run([TPU, 'train_until_done', CONFIG, 'mars'], env, FAKE_TRAIN='fail,fail,ok')
  assert proc.returncode == 1
  assert 'training failed (status 1) twice on a healthy slice' in proc.stderr, proc.stderr
  assert sum(_label(c) == 'main train' for c in calls()) == 2


def test_tpu_vm_eval_and_extract_pass_flags_through(fake):
  _, env, calls = fake
  (fake[0].parent / 'state').write_text('READY')
  for args in (['eval', 'mars', '--step=40'], ['extract', 'mars', '--split=gallery']):
    assert _run([TPU, *args], env).returncode == 0
  cmds = [c[-1] for c in calls()]
  env.pop('BUCKET')
  proc = _run([TPU, 'eval', 'mars'], env)
  assert proc.returncode == 1 and len(calls()) == 2, proc.stderr
  assert proc.stderr.strip() == '[tpu_vm] error: set BUCKET=gs://... (or WORKDIR) for eval'
  assert '--mode=eval --workdir=gs://bkt/workdirs/mars --step=40' in cmds[0], cmds
  assert '--mode=extract --workdir=gs://bkt/workdirs/mars --split=gallery' in cmds[1], cmds


def _sbatch_options() -> dict[str, str]:
  out = {}
  for line in open(SLURM):
    m = re.match(r'#SBATCH --([\w-]+)(?:=(\S+))?', line)
    if m:
      out[m.group(1)] = m.group(2) or ''
  return out


def test_slurm_binding_is_one_that_jax_slurm_detection_accepts(monkeypatch):
  """JAX gives task LOCALID the GPU numbered LOCALID among those it sees, so every task must see
  all its node's GPUs: tasks per node == GPUs per node and no per-task GPU binding."""
  from jax._src import clusters  # pylint: disable=g-import-not-at-top
  opts = _sbatch_options()
  assert 'gpus-per-task' not in opts and 'gpu-bind' not in opts, opts
  gpus = int(opts['gpus-per-node'].split(':')[-1])
  assert int(opts['ntasks-per-node']) == gpus
  assert '--gpu-bind=none' in open(SLURM).read()
  nodes = 2
  for procid in range(nodes * gpus):
    for k, v in dict(SLURM_JOB_ID='4242', SLURM_STEP_NODELIST='gpu[007-008]',
                     SLURM_NTASKS=str(nodes * gpus), SLURM_PROCID=str(procid),
                     SLURM_LOCALID=str(procid % gpus), SLURM_STEP_NUM_NODES=str(nodes)).items():
      monkeypatch.setenv(k, v)
    for k in ('JAX_COORDINATOR_PORT', 'TPU_WORKER_HOSTNAMES', 'OMPI_MCA_orte_hnp_uri'):
      monkeypatch.delenv(k, raising=False)
    addr, count, pid, local = clusters.ClusterEnv.auto_detect_unset_distributed_params(
        None, None, None, None, None, 300)
    assert (addr.split(':')[0], count, pid) == ('gpu007', nodes * gpus, procid)
    # The one GPU this process keeps exists among the node's GPUs it sees.
    assert local == [procid % gpus] and 0 <= local[0] < gpus


def test_slurm_dry_run_and_submission(fake):
  _, env, calls = fake
  args = [SLURM, 'configs/mars.py:model=grl,accel=gpu', '/shared/w', '--config.x=a b']
  proc = _run([args[0], '--dry-run', *args[1:]], env)
  assert proc.returncode == 0, proc.stderr
  lines = _dry_lines(proc.stdout)
  assert [w[0] for w in lines] == ['sbatch', 'srun', 'env', 'scontrol'], proc.stdout
  assert lines[1][:4] == ['srun', '--kill-on-bad-exit=1', '--gpu-bind=none', '.venv/bin/python']
  assert lines[1][4:] == ['-m', 'grl_jax.main', '--config=configs/mars.py:model=grl,accel=gpu',
                          '--workdir=/shared/w', '--config.x=a b'], lines[1]
  assert calls() == []
  # Outside a job, the script submits itself with the same arguments.
  proc = _run(args, env)
  assert proc.returncode == 0, proc.stderr
  assert calls() == [['sbatch', *args]]


@pytest.mark.parametrize('done_rc,srun_rc,requeued,status', [
    (3, 0, True, 0),       # stopped by the time-limit signal, not done: requeue
    (0, 0, False, 0),      # done
    (3, 1, False, 1),      # training failed: no requeue, the failure is the job's status
])
def test_slurm_job_trains_then_requeues_until_done(fake, done_rc, srun_rc, requeued, status):
  bindir, env, calls = fake
  job = dict(SLURM_JOB_ID='77', SLURM_NTASKS_PER_NODE='4', SLURM_GPUS_ON_NODE='4',
             SLURM_SUBMIT_DIR=REPO, PYTHON=str(bindir / 'python'), FAKE_ENV='GRL_JAX_DISTRIBUTED',
             FAKE_DONE_RC=str(done_rc), FAKE_SRUN_RC=str(srun_rc))
  proc = _run([SLURM, 'configs/mars.py:model=grl,accel=gpu', '/shared/w'], env, **job)
  assert proc.returncode == status, proc.stderr
  got = calls()
  assert got[0][0] == 'srun' and got[0][-1] == {'GRL_JAX_DISTRIBUTED': '1'}, got
  assert got[1][:2] == ['python', 'launch/train_done.py'] and '--workdir=/shared/w' in got[1]
  assert (got[2:] == [['scontrol', 'requeue', '77', {'GRL_JAX_DISTRIBUTED': '1'}]]) == requeued


def test_slurm_job_refuses_tasks_that_do_not_match_the_gpus(fake):
  _, env, calls = fake
  proc = _run([SLURM, 'c', '/w'], env, SLURM_JOB_ID='1', SLURM_NTASKS_PER_NODE='1',
              SLURM_GPUS_ON_NODE='8')
  assert proc.returncode == 1 and calls() == []
  assert 'slurm_gpu: error: 1 tasks per node but 8 GPUs per node' in proc.stderr


def _load_train_done():
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('train_done',
                                                os.path.join(REPO, 'launch', 'train_done.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_train_done_reads_the_latest_checkpoint(tmp_path, capsys):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from grl_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from tests import helpers as c  # pylint: disable=g-import-not-at-top
  train_done = _load_train_done()
  config = c.toy_config(tmp_path)                 # 3 epochs
  variables = {'params': {'w': np.zeros(2, np.float32)}}
  work = str(tmp_path / 'w')
  assert train_done.main([f'--workdir={work}']) == train_done.NOT_DONE
  # 4 steps per epoch: step 8 is epoch 2 of 3, step 12 the end.
  checkpoint.write_variables(work, variables, config, step=8, extra_meta={'epoch': 2.0})
  assert train_done.main([f'--workdir={work}']) == train_done.NOT_DONE
  assert 'not done: ' in capsys.readouterr().out
  checkpoint.write_variables(work, variables, config, step=12, extra_meta={'epoch': 3.0})
  assert train_done.main([f'--workdir={work}']) == 0
  assert f'done: {work}: step 12 of 12' in capsys.readouterr().out
  # config.train.num_steps overrides the epochs.
  short = c.toy_config(tmp_path, train__num_steps=6)
  other = str(tmp_path / 'short')
  checkpoint.write_variables(other, variables, short, step=6, extra_meta={'epoch': 1.5})
  assert train_done.main([f'--workdir={other}']) == 0


def test_gke_jobset_runs_the_training_command_on_every_host():
  import yaml  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from grl_jax import main as main_lib  # pylint: disable=g-import-not-at-top,unused-import
  doc = yaml.safe_load(open(os.path.join(REPO, 'launch', 'gke_tpu_jobset.yaml')))
  assert doc['kind'] == 'JobSet' and doc['spec']['failurePolicy']['maxRestarts'] > 0
  (rjob,) = doc['spec']['replicatedJobs']
  job = rjob['template']['spec']
  pod = job['template']['spec']
  chips = 1
  for n in pod['nodeSelector']['cloud.google.com/gke-tpu-topology'].split('x'):
    chips *= int(n)
  (container,) = pod['containers']
  per_host = int(container['resources']['limits']['google.com/tpu'])
  assert job['parallelism'] == job['completions'] == chips // per_host
  assert job['backoffLimit'] == 0 and pod['restartPolicy'] == 'Never'
  env = {e['name']: e['value'] for e in container['env']}
  assert env['GRL_JAX_DISTRIBUTED'] == '1'
  cmd = container['command']
  assert cmd[:3] == ['python', '-m', 'grl_jax.main'], cmd
  # Every flag is one grl_jax.main defines (or a --config.* override); data and workdir on gs://.
  names = [a[2:].split('=', 1)[0] for a in cmd[3:]]
  assert all(n in flags.FLAGS or n.startswith('config.') for n in names), names
  values = dict(a[2:].split('=', 1) for a in cmd[3:])
  assert values['workdir'].startswith('gs://') and values['config.data.root'].startswith('gs://')
  assert os.path.exists(os.path.join(REPO, values['config'].split(':')[0]))


def test_local_multiprocess_dry_run_and_a_failing_process():
  script = os.path.join(REPO, 'launch', 'local_multiprocess.py')
  proc = subprocess.run([sys.executable, script, '--dry-run', '--processes=3',
                         '--devices_per_process=2', '--', '--workdir=w'],
                        capture_output=True, text=True, timeout=30)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert len(lines) == 3
  coordinators = {re.search(r'GRL_JAX_COORDINATOR=(\S+)', x).group(1) for x in lines}
  assert len(coordinators) == 1
  for i, line in enumerate(lines):
    assert f'GRL_JAX_PROCESS_ID={i} ' in line and 'GRL_JAX_NUM_PROCESSES=3' in line
    assert 'device_count=2' in line and line.endswith('-m grl_jax.main --workdir=w')
  # A real launch of this module: process 1 fails, so process 0 (sleeping) is killed at once.
  env = dict(os.environ, CHILD_EXIT_1='3', CHILD_SLEEP_0='60')
  t0 = time.time()
  proc = subprocess.run([sys.executable, script, '--processes=2', '--module=tests.test_launch',
                         '--timeout=50'], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 3, proc.stdout + proc.stderr
  assert time.time() - t0 < 30
  out = proc.stdout
  assert '[p1] rank 1 of 2' in out and '[launch] p1 exited with status 3' in out, out
  assert re.search(r'\[launch\] killing p0 \(pid \d+\)', out), out


if __name__ == '__main__':
  rank = os.environ['GRL_JAX_PROCESS_ID']
  print(f'rank {rank} of {os.environ["GRL_JAX_NUM_PROCESSES"]} at '
        f'{os.environ["GRL_JAX_COORDINATOR"]}', flush=True)
  time.sleep(float(os.environ.get(f'CHILD_SLEEP_{rank}', '0')))
  sys.exit(int(os.environ.get(f'CHILD_EXIT_{rank}', '0')))
