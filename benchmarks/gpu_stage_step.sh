# GPU stage "step" of benchmarks/gpu_check.sh (its stage_step sources this file and calls
# bench_step_stage; uses its $PY, $WORK, $OUT, $DRY, $TEXT_ENCODER, limited and log, and the shards
# and random BERT that its stage e2e_setup makes):
#   - `cmgl bench step` of the GLoRIA recipe, global-only, micro-batch 128, bf16, ZeRO-1, random
#     weights: step_breakdown.csv/.png to $OUT, the summary,
#     results.csv and a gzipped Chrome trace into $WORK/logs;
#   - with STEP_ABLATIONS (overrides, e.g. "train.channels_last=false train.cudnn_benchmark=false
#     data.persistent_workers=false"), the global-only throughput with each of them in turn, through
#     gpu_check's e2e_run (rows beside the other e2e runs; E2E_S each):
#     STAGES="setup e2e_setup step" STEP_ABLATIONS="..." bash benchmarks/gpu_check.sh   # ~5 min
# Limit (seconds): STEP_BENCH_S (gpu_check.sh's).

bench_step_stage() {
    local out=$WORK/logs/bench_step limit=$STEP_BENCH_S
    [ -d "$WORK/shards" ] || { log "step: no $WORK/shards (run the stage e2e_setup first)"; return 1; }
    local sets=(data.shards="$WORK/shards" data.workers=12 model.image_pretrained=false
                model.text_encoder="$TEXT_ENCODER" loss.local_weight=0 train.micro_batch=128
                train.precision=bf16 zero.stage=1)
    local config=gloria_r50_bert steps=(--steps 30 --warmup 5)
    if [ "$DRY" = 1 ]; then
        config=debug sets=(data.shards="$WORK/shards" model.text_encoder="$TEXT_ENCODER") steps=(--steps 3 --warmup 1)
    fi
    local setting overrides=()
    for setting in "${sets[@]}"; do overrides+=(--set "$setting"); done
    rm -rf "$out"
    # PYTHONSAFEPATH: the ranks torchrun starts keep the repo root (whose cmgl_dist lacks kernels/) off sys.path too
    PYTHONSAFEPATH=1 limited "$limit" $PY -P -m torch.distributed.run --standalone --nproc_per_node 1 -m cmgl_dist.cli bench step \
        --config "$config" "${overrides[@]}" "${steps[@]}" --out "$out" > "$WORK/logs/bench_step.log" 2>&1
    local rc=$?
    log "step rc=$rc: $(grep -E '^(step|sum_of_phases) ' "$WORK/logs/bench_step.log" | tr -s ' ' | paste -sd ';')"
    cp "$out/step_breakdown.csv" "$out/step_breakdown.png" "$OUT/" 2>/dev/null
    gzip -f "$out/trace_rank0.json" 2>/dev/null
    rm -rf "$out/run"
    local ablation
    for ablation in ${STEP_ABLATIONS:-}; do
        e2e_run "global_only_${ablation//[.=]/_}" loss.local_weight=0 "$ablation"
    done
    return $rc
}
