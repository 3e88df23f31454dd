#!/usr/bin/env bash
# Cloud TPU VM (single- or multi-host slice): create, install, train, evaluate, delete.
#
#   export TPU_NAME=grl-v4 ZONE=us-central2-b ACCELERATOR=v4-32 RUNTIME=tpu-ubuntu2204-base
#   export BUCKET=gs://my-bucket            # holds data/MARS/ (bbox_train, bbox_test, info)
#   launch/tpu_vm.sh create                 # the slice
#   launch/tpu_vm.sh setup                  # copy this checkout + venv + jax[tpu] on every host
#   launch/tpu_vm.sh train configs/mars.py:model=grl,accel=tpu mars_grl [--config.x=y ...]
#   launch/tpu_vm.sh eval mars_grl
#   launch/tpu_vm.sh delete
#
# Every host runs the same command (`--worker=all`); `GRL_JAX_DISTRIBUTED=1` makes grl_jax call
# `jax.distributed.initialize()`, which finds the other hosts of the slice by itself. Data and
# workdir live on GCS: the tf.data pipeline reads gs:// paths, orbax writes checkpoints there,
# and only process 0 writes logs. Re-running `train` with the same workdir resumes. Preemption
# (SIGTERM) saves a checkpoint first. (Cloud TPU API is maintenance-only for newer generations;
# on GKE/xpk run the same `python -m grl_jax.main` command in every pod.)
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR=${ACCELERATOR:-v4-8}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
REMOTE_DIR=${REMOTE_DIR:-grl_jax}
REPO=$(cd "$(dirname "$0")/.." && pwd)
ssh_all() { gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$1"; }

cmd=${1:?usage: tpu_vm.sh create|setup|train|eval|delete ...}; shift
case "$cmd" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" \
      --accelerator-type "$ACCELERATOR" --version "$RUNTIME" ;;
  setup)
    tar -C "$REPO" --exclude=.venv --exclude=.git --exclude='workdir*' --exclude=.jax_cache \
      -czf /tmp/grl_jax_src.tgz .
    gcloud compute tpus tpu-vm scp /tmp/grl_jax_src.tgz "$TPU_NAME":/tmp/ --zone "$ZONE" --worker=all
    ssh_all "mkdir -p $REMOTE_DIR && tar -C $REMOTE_DIR -xzf /tmp/grl_jax_src.tgz && cd $REMOTE_DIR \
      && python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt -e . \
      && .venv/bin/pip install -q 'jax[tpu]==0.10.2'" ;;
  train)
    config=${1:?config, e.g. configs/mars.py:model=grl,accel=tpu}; name=${2:?run name}; shift 2
    : "${BUCKET:?set BUCKET=gs://...}"
    ssh_all "cd $REMOTE_DIR && GRL_JAX_DISTRIBUTED=1 TF_CPP_MIN_LOG_LEVEL=2 \
      .venv/bin/python -m grl_jax.main --config=$config --workdir=$BUCKET/workdirs/$name \
      --config.data.root=$BUCKET/data/MARS $*" ;;
  eval)
    name=${1:?run name}; shift
    : "${BUCKET:?set BUCKET=gs://...}"
    ssh_all "cd $REMOTE_DIR && GRL_JAX_DISTRIBUTED=1 TF_CPP_MIN_LOG_LEVEL=2 \
      .venv/bin/python -m grl_jax.main --mode=eval --workdir=$BUCKET/workdirs/$name $*" ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$ZONE" --quiet ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
