#!/usr/bin/env bash
# `cmgl train` under torchrun, on one node or as one node of many. Arguments go to `cmgl train`.
#
#   NPROC_PER_NODE  ranks on this node (default: its GPUs, or 2 on a CPU-only node)
#   NNODES          nodes in the job (default 1), or MIN:MAX for an elastic job (docs/LAUNCHING.md)
#   MAX_RESTARTS    times torchrun restarts the workers after a failure (default 0; 3 when elastic)
#   RDZV_ENDPOINT   host:port on the first node; needed when NNODES > 1 (c10d rendezvous)
#   RDZV_ID         job id shared by all nodes (default cmgl)
#   RDZV_IS_HOST    1 on the node that hosts the rendezvous, 0 on the others: needed when a node's
#                   host name does not match RDZV_ENDPOINT's host (default: torchrun compares them)
#   RDZV_CONF       more rendezvous settings, key=value,... (e.g. last_call_timeout=10,join_timeout=300)
#   PYTHON          interpreter with cmgl installed (default python)
#
#   launch/torchrun.sh --config iurr_offline --resume auto
#   NNODES=2 RDZV_ENDPOINT=node0:29400 launch/torchrun.sh --config iurr_offline   # on every node
#   NNODES=1:2 RDZV_ENDPOINT=node0:29400 launch/torchrun.sh --config iurr_offline # elastic, --resume auto
set -euo pipefail
PYTHON=${PYTHON:-python}
NNODES=${NNODES:-1}
if [ -z "${NPROC_PER_NODE:-}" ]; then
  NPROC_PER_NODE=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count() or 2)')
fi
# torchrun would set 1 thread per rank; on CPU ranks share the node's cores instead.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / NPROC_PER_NODE > 0 ? $(nproc) / NPROC_PER_NODE : 1 ))}

elastic=0
case "$NNODES" in *:*) elastic=1 ;; esac
MAX_RESTARTS=${MAX_RESTARTS:-$(( elastic ? 3 : 0 ))}
if [ "$elastic" = 1 ]; then
  # The agents' shared TCP store (torch >= 2.4) publishes the workers' store address in the first
  # round only: a node joining a later round waits for it forever. Each round publishes its own
  # when sharing is off.
  export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
fi
args=(--nnodes "$NNODES" --nproc-per-node "$NPROC_PER_NODE" --max-restarts "$MAX_RESTARTS")
if [ "$NNODES" = 1 ] && [ -z "${RDZV_ENDPOINT:-}" ]; then
  args+=(--standalone)   # a free local port, nothing to configure
else
  args+=(--rdzv-backend c10d --rdzv-endpoint "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port of the first node}"
         --rdzv-id "${RDZV_ID:-cmgl}")
  conf=${RDZV_CONF:-}
  case "${RDZV_IS_HOST:-}" in
    1|true) conf=${conf:+$conf,}is_host=true ;;
    0|false) conf=${conf:+$conf,}is_host=false ;;
    "") ;;
    *) echo "torchrun.sh: RDZV_IS_HOST=$RDZV_IS_HOST: use 1 (this node hosts the rendezvous) or 0" >&2; exit 2 ;;
  esac
  if [ -n "$conf" ]; then args+=(--rdzv-conf "$conf"); fi
fi
# Workers restarted at another world size continue from the last complete checkpoint.
train=("$@")
if { [ "$elastic" = 1 ] || [ "$MAX_RESTARTS" != 0 ]; } && [[ " $* " != *" --resume"* ]]; then
  train+=(--resume auto)
fi
# Training's own checks (config, data, resume) once before any rank starts: a refusal is
# `cmgl train`'s one line and exit 2, not a launcher traceback around it. An elastic job is checked
# at its largest size.
WORLD_SIZE=$(( ${NNODES##*:} * NPROC_PER_NODE )) RANK=0 "$PYTHON" -m cmgl_dist.cli train --preflight "${train[@]}"
exec "$PYTHON" -m torch.distributed.run "${args[@]}" -m cmgl_dist.cli train "${train[@]}"
