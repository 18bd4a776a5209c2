#!/usr/bin/env bash
# Local CPU ranks with gloo, for testing the distributed path on a laptop or CI (GPUs hidden).
#   NPROC_PER_NODE  ranks (default 2)
#   launch/local_cpu.sh --config debug --set data.shards=shards/iurr
set -euo pipefail
export CUDA_VISIBLE_DEVICES=""
export NPROC_PER_NODE=${NPROC_PER_NODE:-2}
exec "$(dirname "$0")/torchrun.sh" "$@"
