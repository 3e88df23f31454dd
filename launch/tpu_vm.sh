#!/usr/bin/env bash
# Cloud TPU VM slice (one or many hosts): create, set up, train until done (resuming after
# preemptions), evaluate, extract features, delete. Data, packed shards and workdir on gs://.
#
#   export TPU_NAME=grl-v4 ZONE=us-central2-b ACCELERATOR=v4-32 BUCKET=gs://my-bucket
#   launch/tpu_vm.sh run configs/mars.py:model=grl,accel=tpu mars_grl [--config.x=y ...]
#   launch/tpu_vm.sh --dry-run run configs/mars.py:model=grl,accel=tpu mars_grl  # print only
#
# Commands (each also on its own):
#   create                      the slice (QUEUED=1: through a queued resource; SPOT=1: Spot)
#   setup                       copy this checkout to every host; Python 3.11 + venv + pinned
#                               stack + jax[tpu] with uv (TPU images ship Python 3.10)
#   train CONFIG NAME [FLAGS]   one training attempt on every host (--worker=all)
#   train_until_done CONFIG NAME [FLAGS]
#                               repeats: (re)create + set up the slice if it is not up
#                               (preempted, suspended, deleted), train (resumes from the
#                               workdir's latest checkpoint), until launch/train_done.py says
#                               the workdir reached its last step; at most MAX_ATTEMPTS tries,
#                               and it stops when training fails on a healthy slice
#   done NAME                   launch/train_done.py on worker 0 (exit 0: the run is finished)
#   eval NAME [FLAGS]           --mode=eval on every host (the config comes from the checkpoint)
#   extract NAME [FLAGS]        --mode=extract (e.g. --split=gallery) on every host
#   delete                      the slice (or its queued resource)
#   run CONFIG NAME [FLAGS]     create, setup, train_until_done, eval, extract query and
#                               gallery, delete (KEEP=1 keeps the slice)
#
# Environment: TPU_NAME, ZONE (required); PROJECT; ACCELERATOR (v4-8); RUNTIME
# (tpu-ubuntu2204-base); BUCKET=gs://... and WORKDIR (default $BUCKET/workdirs/NAME); DATA
# (--config.data.root, default $BUCKET/data/MARS; DATA= for the synthetic demo); PACKED
# (--config.data.packed=gs://... packed shards, optional); PYTHON_VERSION (3.11); UV_VERSION;
# MAX_ATTEMPTS (20); POLL_S (30, queued-resource polling); GRL_JAX_*_TIMEOUT (forwarded to every
# host: grl_jax/distributed.py). FLAGS go to `python -m grl_jax.main` unchanged.
#
# Every host runs the same command; GRL_JAX_DISTRIBUTED=1 makes grl_jax call
# jax.distributed.initialize(), which finds the slice's hosts by itself. Preemption: the hosts
# get SIGTERM and save a checkpoint (grl_jax/trainer/preemption.py), or die with the slice; a
# host that dies ends the others within GRL_JAX_HEARTBEAT_TIMEOUT; train_until_done then
# recreates the slice and resumes. (On GKE, launch/gke_tpu_jobset.yaml runs the same command in
# every pod.)
set -euo pipefail

DRY_RUN=0
exec 3>&1   # --dry-run prints here, also from inside $(...)
if [[ ${1:-} == --dry-run || ${1:-} == --dry_run ]]; then DRY_RUN=1; shift; fi
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR=${ACCELERATOR:-v4-8}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
REMOTE_DIR=${REMOTE_DIR:-grl_jax}
PYTHON_VERSION=${PYTHON_VERSION:-3.11}
UV_VERSION=${UV_VERSION:-0.13.8}
MAX_ATTEMPTS=${MAX_ATTEMPTS:-20}
POLL_S=${POLL_S:-30}
QR_NAME=${QR_NAME:-$TPU_NAME-qr}
SRC_TGZ=${SRC_TGZ:-${TMPDIR:-/tmp}/grl_jax_src.tgz}
REPO=$(cd "$(dirname "$0")/.." && pwd)
LOC=(--zone "$ZONE")
[[ -n ${PROJECT:-} ]] && LOC+=(--project "$PROJECT")

say() { echo "[tpu_vm] $*" >&2; }
die() { say "error: $*"; exit 1; }

# One shell word per argument, quoted only where needed (what --dry-run prints, and how FLAGS
# travel inside the remote command string).
quote() {
  local a out=()
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  printf '%s' "${out[*]}"
}

# Runs a command, or prints it under --dry-run.
x() {
  if (( DRY_RUN )); then { quote "$@"; echo; } >&3; return 0; fi
  say "$(quote "$@")"
  "$@"
}

ssh_on() {  # WORKER COMMAND
  x gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${LOC[@]}" --worker="$1" --command "$2"
}

# The environment every host's grl_jax process starts with.
remote_env() {
  local e="GRL_JAX_DISTRIBUTED=1 TF_CPP_MIN_LOG_LEVEL=2" v
  for v in GRL_JAX_INIT_TIMEOUT GRL_JAX_HEARTBEAT_TIMEOUT GRL_JAX_SHUTDOWN_TIMEOUT; do
    [[ -n ${!v:-} ]] && e+=" $v=$(quote "${!v}")"
  done
  printf '%s' "$e"
}

main_on_all() {  # grl_jax.main arguments
  ssh_on all "cd $REMOTE_DIR && $(remote_env) .venv/bin/python -m grl_jax.main $(quote "$@")"
}

workdir_of() {
  if [[ -n ${WORKDIR:-} ]]; then printf '%s' "$WORKDIR"; return; fi
  : "${BUCKET:?set BUCKET=gs://... (or WORKDIR)}"
  printf '%s' "$BUCKET/workdirs/$1"
}

# READY when the slice is up; otherwise its state (PREEMPTED, SUSPENDED, ...) or MISSING.
slice_state() {
  local s
  if (( DRY_RUN )); then
    if [[ ${QUEUED:-0} == 1 ]]; then
      x gcloud compute tpus queued-resources describe "$QR_NAME" "${LOC[@]}" \
        --format='value(state.state)'
    else
      x gcloud compute tpus tpu-vm describe "$TPU_NAME" "${LOC[@]}" --format='value(state)'
    fi
    echo READY; return
  fi
  if [[ ${QUEUED:-0} == 1 ]]; then
    s=$(gcloud compute tpus queued-resources describe "$QR_NAME" "${LOC[@]}" \
          --format='value(state.state)' 2>/dev/null) || s=MISSING
    [[ $s == ACTIVE ]] && s=READY
  else
    s=$(gcloud compute tpus tpu-vm describe "$TPU_NAME" "${LOC[@]}" --format='value(state)' \
          2>/dev/null) || s=MISSING
  fi
  printf '%s' "${s:-MISSING}"
}

create() {
  local spot=()
  [[ ${SPOT:-0} == 1 ]] && spot=(--spot)
  if [[ ${QUEUED:-0} == 1 ]]; then
    x gcloud compute tpus queued-resources create "$QR_NAME" "${LOC[@]}" --node-id "$TPU_NAME" \
      --accelerator-type "$ACCELERATOR" --runtime-version "$RUNTIME" "${spot[@]}"
    local s i
    for (( i = 0; ; i++ )); do   # the request waits in the queue until capacity is free
      s=$(slice_state)
      [[ $s == READY ]] && break
      [[ $s == FAILED || $s == SUSPENDED ]] && die "queued resource $QR_NAME is $s"
      say "queued resource $QR_NAME: $s; polling every ${POLL_S}s"
      sleep "$POLL_S"
    done
  else
    x gcloud compute tpus tpu-vm create "$TPU_NAME" "${LOC[@]}" \
      --accelerator-type "$ACCELERATOR" --version "$RUNTIME" "${spot[@]}"
  fi
}

delete() {
  if [[ ${QUEUED:-0} == 1 ]]; then
    x gcloud compute tpus queued-resources delete "$QR_NAME" "${LOC[@]}" --force --quiet
  else
    x gcloud compute tpus tpu-vm delete "$TPU_NAME" "${LOC[@]}" --quiet
  fi
}

setup() {
  x tar -C "$REPO" --exclude-vcs --exclude=.venv --exclude=.jax_cache --exclude='./workdir*' \
    --exclude=./scratch --exclude=__pycache__ -czf "$SRC_TGZ" .
  x gcloud compute tpus tpu-vm scp "$SRC_TGZ" "$TPU_NAME:/tmp/grl_jax_src.tgz" "${LOC[@]}" \
    --worker=all
  # uv installs a supported CPython whatever the image ships, then the pinned stack.
  ssh_on all "set -e; mkdir -p $REMOTE_DIR && tar -C $REMOTE_DIR -xzf /tmp/grl_jax_src.tgz \
&& cd $REMOTE_DIR && (command -v uv >/dev/null || python3 -m pip install -q --user uv==$UV_VERSION \
|| curl -LsSf https://astral.sh/uv/$UV_VERSION/install.sh | sh) \
&& export PATH=\$HOME/.local/bin:\$PATH && uv python install $PYTHON_VERSION \
&& { [ -x .venv/bin/python ] || uv venv --python $PYTHON_VERSION .venv; } \
&& uv pip install -q --python .venv/bin/python -r requirements.txt -e . 'jax[tpu]==0.10.2' \
&& .venv/bin/python -c 'import sys, grl_jax; assert sys.version_info >= (3, 11), sys.version'"
}

data_flags() {  # one per line
  local data=${DATA-${BUCKET:+$BUCKET/data/MARS}}
  if [[ -n $data ]]; then echo "--config.data.root=$data"; fi
  if [[ -n ${PACKED:-} ]]; then echo "--config.data.packed=$PACKED"; fi
}

train() {  # CONFIG NAME [FLAGS]
  local config=${1:?config, e.g. configs/mars.py:model=grl,accel=tpu} name=${2:?run name}
  shift 2
  local flags=()
  mapfile -t flags < <(data_flags)
  main_on_all "--config=$config" "--workdir=$(workdir_of "$name")" "${flags[@]}" "$@"
}

is_done() {  # NAME
  ssh_on 0 "cd $REMOTE_DIR && JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python \
launch/train_done.py $(quote "--workdir=$(workdir_of "$1")")"
}

train_until_done() {  # CONFIG NAME [FLAGS]
  local name=${2:?run name} attempt rc state failures=0
  (( DRY_RUN )) && echo >&3 "# repeated until train_done.py says done (at most $MAX_ATTEMPTS \
attempts); a slice that is not READY is deleted, created and set up first"
  state=$(slice_state)
  for (( attempt = 1; attempt <= MAX_ATTEMPTS; attempt++ )); do
    if [[ $state != READY ]]; then
      say "slice $TPU_NAME is $state: recreating it (attempt $attempt)"
      delete || true
      create
      setup
    fi
    rc=0
    train "$@" || rc=$?
    if is_done "$name"; then say "$name: done"; return 0; fi
    state=$(slice_state)
    if (( rc != 0 )) && [[ $state == READY ]]; then
      (( ++failures >= 2 )) && die "training failed (status $rc) twice on a healthy slice; \
not retrying: see the log above"
    fi
    say "attempt $attempt ended with status $rc, slice $state: resuming"
  done
  die "$name not done after $MAX_ATTEMPTS attempts"
}

COMMANDS='create|setup|train|train_until_done|done|eval|extract|delete|run'
cmd=${1:?usage: tpu_vm.sh [--dry-run] $COMMANDS ...}
shift
case "$cmd" in
  train|train_until_done|done|eval|extract|run)
    [[ -n ${WORKDIR:-} || -n ${BUCKET:-} ]] || die "set BUCKET=gs://... (or WORKDIR) for $cmd" ;;
esac
case "$cmd" in
  create) create ;;
  setup) setup ;;
  delete) delete ;;
  train) train "$@" ;;
  train_until_done) train_until_done "$@" ;;
  done) is_done "${1:?run name}" ;;
  eval)
    name=${1:?run name}; shift
    main_on_all --mode=eval "--workdir=$(workdir_of "$name")" "$@" ;;
  extract)
    name=${1:?run name}; shift
    main_on_all --mode=extract "--workdir=$(workdir_of "$name")" "$@" ;;
  run)
    name=${2:?usage: tpu_vm.sh run CONFIG NAME [FLAGS]}
    create
    setup
    train_until_done "$@"
    main_on_all --mode=eval "--workdir=$(workdir_of "$name")"
    for split in query gallery; do
      main_on_all --mode=extract --split=$split "--workdir=$(workdir_of "$name")"
    done
    if [[ ${KEEP:-0} == 1 ]]; then say "KEEP=1: slice $TPU_NAME left running"; else delete; fi ;;
  *) die "unknown command $cmd ($COMMANDS)" ;;
esac
