#!/usr/bin/env bash
# `cmgl train` under torchrun, on one node or as one node of many. Arguments go to `cmgl train`.
#
#   NPROC_PER_NODE  ranks on this node (default: its GPUs, or 2 on a CPU-only node)
#   NNODES          nodes in the job (default 1)
#   RDZV_ENDPOINT   host:port on the first node; needed when NNODES > 1 (c10d rendezvous)
#   RDZV_ID         job id shared by all nodes (default cmgl)
#   PYTHON          interpreter with cmgl installed (default python)
#
#   launch/torchrun.sh --config iurr_offline --resume auto
#   NNODES=2 RDZV_ENDPOINT=node0:29400 launch/torchrun.sh --config iurr_offline   # on every node
set -euo pipefail
PYTHON=${PYTHON:-python}
NNODES=${NNODES:-1}
if [ -z "${NPROC_PER_NODE:-}" ]; then
  NPROC_PER_NODE=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count() or 2)')
fi
# torchrun would set 1 thread per rank; on CPU ranks share the node's cores instead.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / NPROC_PER_NODE > 0 ? $(nproc) / NPROC_PER_NODE : 1 ))}

args=(--nnodes "$NNODES" --nproc-per-node "$NPROC_PER_NODE")
if [ "$NNODES" = 1 ] && [ -z "${RDZV_ENDPOINT:-}" ]; then
  args+=(--standalone)   # a free local port, nothing to configure
else
  args+=(--rdzv-backend c10d --rdzv-endpoint "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port of the first node}"
         --rdzv-id "${RDZV_ID:-cmgl}")
fi
# Training's own checks (config, data, resume) once before any rank starts: a refusal is
# `cmgl train`'s one line and exit 2, not a launcher traceback around it.
WORLD_SIZE=$(( NNODES * NPROC_PER_NODE )) RANK=0 "$PYTHON" -m cmgl_dist.cli train --preflight "$@"
exec "$PYTHON" -m torch.distributed.run "${args[@]}" -m cmgl_dist.cli train "$@"
