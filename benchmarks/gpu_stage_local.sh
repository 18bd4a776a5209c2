#!/usr/bin/env bash
# Does the local half learn in a full fine-tuning run? Packs phantom shards, trains CONFIG with
# every layer trainable on one GPU, then evaluates in-process retrieval (R@k, finding-aware P@10,
# with chance levels), localisation and zero-shot, and the attention overlays. Results, table.md
# and logs land in $OUT. Needs cmgl installed (`make install`); no downloads: the default is
# GLoRIA's recipe from random weights with a BERT-base built from the MiniLM vocabulary (which is
# BERT-base uncased's; from INPUTS/vocab.txt when INPUTS names `make gpu-wheels`' inputs folder);
# set SETS to change it. E.g. on a GPU:  bash benchmarks/gpu_stage_local.sh
# On a CPU, to check the script:
#     CONFIG=debug SETS="" STEPS=4 LIMIT=300 NPROC=1 DEVICE_SETS="" bash benchmarks/gpu_stage_local.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_stage_local_out}
CONFIG=${CONFIG:-gloria_r50_bert} STEPS=${STEPS:-600} LIMIT=${LIMIT:-0} NPROC=${NPROC:-1}
PACK_S=${PACK_S:-90} TRAIN_S=${TRAIN_S:-300} EVAL_S=${EVAL_S:-120}
DEVICE_SETS=${DEVICE_SETS-"model.image_pretrained=false precision=bf16 train.micro_batch=64 data.workers=8"}
SETS=${SETS-""}
WORK=${WORK:-/tmp/gpu_stage_local}
mkdir -p "$OUT" "$WORK"
log() { echo "[gpu_stage_local $(date -u +%H:%M:%S)] $*" | tee -a "$OUT/stage.log"; }

PY=${PY:-python3}
export PYTHONSAFEPATH=1  # the repo root's kernels/ would shadow the PyPI package `kernels`
CMGL=($PY -P -m cmgl_dist.cli) ENTRY=(-m cmgl_dist.cli)
if [ "$CONFIG" = gloria_r50_bert ] && [ -z "${TEXT_ENCODER:-}" ]; then  # random BERT-base, MiniLM vocabulary
    TEXT_ENCODER=$WORK/bert_random
    files=($($PY -P benchmarks/gpu_inputs.py locate ${INPUTS:-})) && \
        $PY -P -m cmgl_dist.bench.random_bert --vocab "${files[2]}" "$TEXT_ENCODER" 2>&1 | tee -a "$OUT/stage.log"
fi
[ -n "${TEXT_ENCODER:-}" ] && SETS="$SETS model.text_encoder=$TEXT_ENCODER"
overrides=()
for kv in $DEVICE_SETS $SETS; do
    case $kv in precision=*) kv="train.$kv";; esac
    overrides+=(--set "$kv")
done
limit=(); [ "$LIMIT" -gt 0 ] && limit=(--limit "$LIMIT")

log "pack phantom shards"
timeout "$PACK_S" "${CMGL[@]}" pack --images phantom --out "$WORK/shards" --image-size 256 \
    --workers "$(nproc)" "${limit[@]}" > "$OUT/pack.log" 2>&1
log "pack rc=$?"

log "train $CONFIG for $STEPS steps, all layers trainable (${overrides[*]})"
timeout "$TRAIN_S" $PY -P -m torch.distributed.run --standalone --nproc_per_node "$NPROC" \
    "${ENTRY[@]}" train --config "$CONFIG" --set "data.shards=$WORK/shards" \
    --set "train.run_dir=$WORK/run" --set "train.steps=$STEPS" --set model.freeze_image=false \
    --set model.freeze_text_layers=0 "${overrides[@]}" > "$OUT/train.log" 2>&1
log "train rc=$? ($(grep -c '"step"' "$WORK/run/metrics.jsonl" 2>/dev/null) logged steps)"
cp "$WORK/run/metrics.jsonl" "$OUT/" 2>/dev/null

log "evaluate: retrieval, localisation, zero-shot, attention overlays"
timeout "$EVAL_S" "${CMGL[@]}" evaluate --exports "$WORK/run/export" --shards "$WORK/shards" --out "$OUT/eval" \
    --tasks retrieval localisation zero_shot attention > "$OUT/eval.log" 2>&1
log "evaluate rc=$?"
cat "$OUT/eval/table.md" 2>/dev/null | tee -a "$OUT/stage.log"
