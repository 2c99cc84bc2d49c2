#!/bin/bash
# Train gpt-small on a TPU pod slice, e.g. a v5p-64: 8 hosts with 4 chips each, one process per host.
# Run it from your workstation; gcloud starts the same command on every host of the slice (--worker=all).
#
#   docs/recipes/tpu-slice.sh TPU_NAME ZONE [more scalelab train flags, e.g. --dry-run]
#
# Every host runs `scalelab train ... --distributed`: JAX learns the hosts and this host's index from
# the TPU VM (its metadata server, or TPU_WORKER_HOSTNAMES and TPU_WORKER_ID on GKE) and joins them.
# The mesh: 4-way tensor parallelism inside each host (its 4 chips), fsdp over the 8 hosts.
set -euo pipefail
TPU_NAME=${1:?usage: tpu-slice.sh TPU_NAME ZONE [scalelab train flags]}
ZONE=${2:?usage: tpu-slice.sh TPU_NAME ZONE [scalelab train flags]}
shift 2
# Where scalelab is checked out and installed (.venv) on every host.
SCALELAB_DIR=${SCALELAB_DIR:-scalelab}
# Storage every host can reach: each host writes its own shards of every checkpoint.
RUN_DIR=${RUN_DIR:-/mnt/shared/runs/small}

# The command is one string that each host's shell splits again, so every word is quoted for it
# (an override such as --set "mesh.dcn={data: 2}" stays one argument).
extra=""
if (($#)); then extra=$(printf ' %q' "$@"); fi
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "cd $(printf %q "$SCALELAB_DIR") && \
.venv/bin/scalelab train gpt-small --distributed \
--set mesh.data=1 --set mesh.fsdp=-1 --set mesh.tensor=4 --run-dir $(printf %q "$RUN_DIR")$extra"
