#!/usr/bin/env bash
# Print the resolved config, the derived DeepSpeed JSON (rank 0) and each rank's place in the
# world, under the same launcher and knobs as torchrun.sh, without training.
#   NPROC_PER_NODE=8 launch/dry_run.sh --config gloria_r50_bert --set zero.stage=3
set -euo pipefail
exec "$(dirname "$0")/torchrun.sh" "$@" --dry-run
