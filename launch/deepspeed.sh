#!/usr/bin/env bash
# `cmgl train` under the deepspeed launcher: one node, or several through a hostfile (ssh to each).
#
#   HOSTFILE     lines "hostname slots=GPUS"; unset: this node only
#   NUM_GPUS     GPUs per node to use (default: all)
#   MASTER_PORT  rendezvous port on the first host (default 29500)
#
#   launch/deepspeed.sh --config iurr_offline
#   HOSTFILE=launch/hostfile.example launch/deepspeed.sh --config gloria_r50_bert --resume auto
set -euo pipefail
args=(--master_port "${MASTER_PORT:-29500}")
[ -n "${HOSTFILE:-}" ] && args+=(--hostfile "$HOSTFILE")
[ -n "${NUM_GPUS:-}" ] && args+=(--num_gpus "$NUM_GPUS")
# Training's own checks once before any rank starts (a refusal is one line and exit 2), for the
# world the launcher will start: the hostfile's slots, or this node's GPUs.
PYTHON=${PYTHON:-python}
gpus=${NUM_GPUS:-$("$PYTHON" -c 'import torch; print(torch.cuda.device_count() or 1)')}
if [ -n "${HOSTFILE:-}" ]; then
  if [ -n "${NUM_GPUS:-}" ]; then world=$(( $(grep -c '^[^#]*slots=' "$HOSTFILE") * NUM_GPUS ))
  else world=$(awk -F'slots=' '/^[^#]*slots=/ {s += $2} END {print s}' "$HOSTFILE"); fi
else
  world=$gpus
fi
WORLD_SIZE=$world RANK=0 "$PYTHON" -m cmgl_dist.cli train --preflight "$@"
# --no_local_rank: ranks come from the environment, as under torchrun.
exec deepspeed "${args[@]}" --no_local_rank --module cmgl_dist.cli train "$@"
