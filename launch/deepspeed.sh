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
# --no_local_rank: ranks come from the environment, as under torchrun.
exec deepspeed "${args[@]}" --no_local_rank --module cmgl_dist.cli train "$@"
