#!/usr/bin/env bash
# The GPU check, one call of about 8 minutes with cold caches: the recipe-shape and kernel tests,
# the kernels' compile evidence (registers and spills with the Triton that runs), the
# local-similarity benchmark at T = I = 128 (baselines first, then torch.compile's vectorised
# form, `compiled`, `auto`, Triton) and 512, end-to-end training throughput of the GLoRIA recipe
# (ResNet-50 @224 + BERT-base from random weights, bf16, ZeRO-1, micro-batch 128) global-only, with
# the reference local loss and with the Triton kernel, and the recipe's step breakdown.
#
#   make gpu-check OUT=DIR [DRY=1]       # a GPU machine with the package index: the project's venv
#   make gpu-check-box OUT=DIR [DRY=1]   # a GPU machine without network: its own python3 + wheels
#
# Two ways in, the same stages. With WHEELS (make gpu-check-box), the setup stage installs the
# wheels of WHEELS (`make gpu-wheels`) into $SITE/lib with `pip --no-index --no-deps --target`,
# stages the project as setup.py maps it into $SITE/project (benchmarks/stage_project.py), puts
# both on PYTHONPATH and reads the three input files (IU-RR reports and metadata, BERT-base's
# vocab.txt) from WHEELS/inputs; HF_HUB_OFFLINE=1 throughout. Without WHEELS the running Python
# has cmgl[offline,test] installed and the inputs come from its packages.
#
# Each stage is one function under `timeout -k` (seconds from the environment, *_S); the limits
# add up to under 10 minutes. After every stage the check's CSVs and logs.tar.gz (every log and
# metrics.jsonl) are refreshed in $OUT, so a stage that dies or is cut leaves the others' results.
# $OUT receives: COMMIT, gpu_check.log (summary; its last line the verdict of each figure against
# its target, benchmarks/gpu_verdict.py), tests.log, kernel_compile_sm90.csv,
# local_similarity.csv, e2e_throughput.csv (samples/s of the steady windows; start-up reported
# apart), step_breakdown.csv (and .png where matplotlib is installed) and logs.tar.gz: rows in the
# long format of cmgl_dist/bench/harness.py, stamped with machine, date and commit. To keep them:
# `python benchmarks/merge_results.py $OUT`. DRY=1 runs every stage tiny on a CPU (the BERT-base
# folder is still built and its vocabulary checked). To add a stage: write `stage_x() { ...; }`
# and add `x` to STAGES (or pass STAGES="x" to run only it).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu_check_out}
DRY=${DRY:-0}
WHEELS=${WHEELS:-}
SITE=${SITE:-$ROOT/.gpu_site}
STAGES=${STAGES:-"setup tests compile bench128 bench512 e2e_setup e2e step"}
# Limits (s), at most: 30 + 45 + 30 + 170 (bench 128) + 55 (512) + 2 x 25 + 3 x 50 + 45 = 575, under
# the 10 minutes of one call. torch.compile's forms get the longest benchmark limits: they compile
# cold. DRY=1 runs on a CPU, where torch.compile's C++ builds take minutes: limits of their own.
dry() { [ "$DRY" = 1 ] && echo "$1" || echo "$2"; }  # dry DRY_VALUE GPU_VALUE
SETUP_S=${SETUP_S:-$(dry 120 30)} TESTS_S=${TESTS_S:-$(dry 240 45)} COMPILE_S=${COMPILE_S:-$(dry 240 30)}
E2E_SETUP_S=${E2E_SETUP_S:-$(dry 120 25)} STEP_BENCH_S=${STEP_BENCH_S:-$(dry 240 45)} E2E_S=${E2E_S:-$(dry 240 50)}
declare -A BENCH_S=([128_loop]=15 [128_reference]=15 [128_compile_vectorised]=50 [128_compiled]=35
                    [128_auto]=30 [128_triton]=25 [512_triton]=15 [512_auto]=20 [512_compiled]=20)
E2E_BACKENDS=${E2E_BACKENDS:-$(dry reference "global_only reference triton")}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}
TEXT_ENCODER=$WORK/$(dry bert_tiny_random bert_base_random)  # the one the training stages use
mkdir -p "$OUT" "$WORK/logs"
OUT=$(cd "$OUT" && pwd)
PY=${PY:-python3}
log() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$OUT/gpu_check.log"; }
# limited SECONDS CMD...: rc 124 when cut; -k: a command that ignores SIGTERM is killed 10 s later.
limited() { local limit=$1; shift; timeout -k 10 "$limit" "$@"; }
# `python -P` and PYTHONSAFEPATH keep the repo root off sys.path: its folder kernels/ would shadow
# the PyPI package `kernels` that transformers probes for (and its cmgl_dist lacks kernels/).
export PYTHONSAFEPATH=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# DeepSpeed reads TORCH_CUDA_ARCH_LIST as numbers before any op it JIT-builds: "9.0a" (set by some
# CUDA images) stops it with a ValueError, "9.0" builds the same code for Hopper.
[ "${TORCH_CUDA_ARCH_LIST:-}" = 9.0a ] && export TORCH_CUDA_ARCH_LIST=9.0
# The commit: git's, else the one `make gpu-wheels` recorded beside the wheels (a copied tree).
if [ -z "${CMGL_COMMIT:-}" ] && [ -n "$WHEELS" ] && [ -f "$WHEELS/COMMIT" ]; then
    export CMGL_COMMIT=$(cat "$WHEELS/COMMIT")
fi

save() {  # results and every log so far into $OUT (atomic: a cut leaves the last complete copy)
    local csv
    for csv in local_similarity.csv e2e_throughput.csv kernel_compile_sm90.csv; do
        [ -f "$WORK/$csv" ] && cp "$WORK/$csv" "$OUT/$csv.tmp" && mv "$OUT/$csv.tmp" "$OUT/$csv"
    done
    tar -czf "$OUT/logs.tar.gz.tmp" -C "$WORK" logs 2>/dev/null && mv "$OUT/logs.tar.gz.tmp" "$OUT/logs.tar.gz"
}

stage_setup() {  # the wheels and the project's path when WHEELS is given; COMMIT, versions and the GPU
    if [ -n "$WHEELS" ]; then
        rm -rf "$SITE/lib"
        limited "$SETUP_S" $PY -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
            --target "$SITE/lib" "$WHEELS"/*.whl > "$WORK/logs/setup.log" 2>&1 || return 1
        $PY "$ROOT/benchmarks/stage_project.py" "$SITE/project" >> "$WORK/logs/setup.log" 2>&1 || return 1
        export PYTHONPATH="$SITE/project:$SITE/lib${PYTHONPATH:+:$PYTHONPATH}"
        export PATH="$SITE/lib/bin:$PATH"
        INPUTS=${INPUTS:-$WHEELS/inputs}
    fi
    $PY -P -c 'from cmgl_dist.bench.harness import git_commit; print(git_commit())' > "$OUT/COMMIT" 2>> "$WORK/logs/setup.log" \
        || echo "${CMGL_COMMIT:-unknown}" > "$OUT/COMMIT"
    export CMGL_COMMIT=$(cat "$OUT/COMMIT")
    log "commit $CMGL_COMMIT"
    export OMP_NUM_THREADS=4
    limited "$SETUP_S" $PY -P -c "import torch, triton, transformers, deepspeed, webdataset, cmgl_dist.kernels
print('python', '.'.join(map(str, __import__('sys').version_info[:3])), 'torch', torch.__version__, 'triton',
      triton.__version__, 'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__)
print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')" >> "$OUT/gpu_check.log" 2>> "$WORK/logs/setup.log" || return 1
    nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv >> "$OUT/gpu_check.log" 2>&1
    return 0
}

stage_tests() {  # the recipe-shape and kernel tests; no -x: one failing file leaves the others' results
    local tests="tests/test_kernel_recipe_shape.py tests/test_kernel_local_similarity.py tests/test_local_backends.py
                 tests/test_compiled_graphs.py tests/test_kernel_bench_forms.py"
    [ "$DRY" = 1 ] && tests="tests/test_kernel_bench_forms.py"  # the others take minutes in the interpreter
    limited "$TESTS_S" $PY -P -m pytest -p no:cacheprovider $tests > "$OUT/tests.log" 2>&1
    local rc=$?
    log "tests: $(grep -E "passed|failed|error" "$OUT/tests.log" | tail -1)"
    return $rc
}

stage_compile() {  # registers, spills and MMA of every kernel (bf16, fp16) with this machine's Triton
    (unset TRITON_INTERPRET; limited "$COMPILE_S" $PY -P benchmarks/kernel_compile_sm90.py --dtypes bf16 $(dry "" fp16) \
        --csv "$WORK/kernel_compile_sm90.csv" > "$WORK/logs/compile.log" 2>&1)
    local rc=$?
    log "compile rc=$rc: $($PY -P benchmarks/kernel_compile_sm90.py --summary "$WORK/kernel_compile_sm90.csv" 2>&1)"
    return $rc
}

bench() {  # bench T PROVIDER MODES...: one provider under its own limit, bf16, rows to local_similarity.csv
    local T=$1 provider=$2 limit; shift 2
    limit=$(dry 300 "${BENCH_S[${T}_$provider]}")
    local args=(--batches "$T" --reps "$([ "$T" = 512 ] && echo 3 || echo 5)")
    # DRY: tiny shapes and one mode (torch.compile's C++ build of each mode takes minutes on a CPU)
    [ "$DRY" = 1 ] && args=(--batches 4 --reps 2 --words 12 --regions 16 --dim 32) && set -- "$1"
    limited "$limit" $PY -P benchmarks/bench_local_similarity.py --dtypes bf16 --local-global 0 0 \
        --csv "$WORK/local_similarity.csv" --providers "$provider" --modes "$@" "${args[@]}" \
        > "$WORK/logs/bench${T}_$provider.log" 2>&1
    local rc=$?
    local timings
    timings=$(grep -E ' p50 ' "$WORK/logs/bench${T}_$provider.log" | cut -d' ' -f3- | tr -s ' ' | paste -sd ';')
    log "bench $T $provider rc=$rc: ${timings:-$(tail -n 1 "$WORK/logs/bench${T}_$provider.log" | cut -d' ' -f3-)}"
    return $rc
}

stage_bench128() {  # the baselines first, so a cut leaves what the kernel is judged against
    local provider rc=0
    for provider in loop reference compile_vectorised compiled auto triton; do
        bench 128 "$provider" fwdbwd fwd || rc=1
    done
    return $rc
}

stage_bench512() {  # the bounded-memory forms at 512 (the 4 GiB target is the kernel's)
    local provider rc=0
    for provider in triton auto compiled; do
        bench 512 "$provider" fwdbwd || rc=1
    done
    return $rc
}

stage_e2e_setup() {  # phantom shards from IU-RR's reports; BERT-base from random weights (DRY too)
    local extra=(--image-size 256 --workers 14) files
    [ "$DRY" = 1 ] && extra=(--image-size 96 --workers 1 --limit 60)
    files=$($PY -P benchmarks/gpu_inputs.py locate ${INPUTS:-} 2>> "$WORK/logs/pack.log") || return 1
    set -- $files
    rm -rf "$WORK/shards" "$WORK/bert_base_random" "$WORK/bert_tiny_random"
    limited "$E2E_SETUP_S" $PY -P -m cmgl_dist.cli pack --reports "$1" --metadata "$2" \
        --images phantom --out "$WORK/shards" "${extra[@]}" > "$WORK/logs/pack.log" 2>&1 || return 1
    limited "$E2E_SETUP_S" $PY -P -m cmgl_dist.bench.random_bert --vocab "$3" "$WORK/bert_base_random" \
        > "$WORK/logs/bert.log" 2>&1
    local rc=$?
    log "$(tail -n 1 "$WORK/logs/bert.log")"
    [ "$DRY" = 1 ] && [ "$rc" = 0 ] || return $rc
    # DRY trains a tiny BERT with the same vocabulary (BERT-base takes half a minute a step on a CPU)
    limited "$E2E_SETUP_S" $PY -P -m cmgl_dist.bench.random_bert --tiny --vocab "$3" "$TEXT_ENCODER" \
        >> "$WORK/logs/bert.log" 2>&1
}

e2e_run() {  # e2e_run NAME OVERRIDES...: one training run, its metrics summarised to e2e_throughput.csv
    local name=$1; shift
    local run=$WORK/runs/$name config=(--config gloria_r50_bert)
    local sets=(data.shards="$WORK/shards" data.workers=12 model.image_pretrained=false
                model.text_encoder="$TEXT_ENCODER" train.micro_batch=128 train.precision=bf16
                train.steps=1000 train.log_every=5 train.ckpt_every=100000 train.export=false
                train.tensorboard=false schedule.warmup_steps=0 train.run_dir="$run")
    if [ "$DRY" = 1 ]; then
        config=(--config debug) sets=(data.shards="$WORK/shards" model.text_encoder="$TEXT_ENCODER"
                                     train.steps=4 train.log_every=1
                                     train.ckpt_every=100 train.export=false train.tensorboard=false
                                     train.run_dir="$run")
    fi
    local setting overrides=()
    for setting in "${sets[@]}" "$@"; do overrides+=(--set "$setting"); done
    rm -rf "$run"
    local start=$(date +%s.%N)
    limited "$E2E_S" $PY -P -m torch.distributed.run --standalone --nproc_per_node 1 -m cmgl_dist.cli train \
        "${config[@]}" "${overrides[@]}" > "$WORK/logs/e2e_$name.log" 2>&1
    local rc=$? wall
    wall=$($PY -c "print($(date +%s.%N) - $start)")
    cp "$run/metrics.jsonl" "$WORK/logs/e2e_$name.metrics.jsonl" 2>/dev/null
    $PY -P benchmarks/e2e_summary.py --name "$name" --metrics "$run/metrics.jsonl" --rc "$rc" --wall-s "$wall" \
        --csv "$WORK/e2e_throughput.csv" >> "$OUT/gpu_check.log" 2>&1
    # A run cut by its limit is the plan (rc 124): the steady windows before the cut are the figure.
    [ "$rc" = 0 ] || { [ "$rc" = 124 ] && [ "$DRY" != 1 ]; }
}

stage_e2e() {
    local name rc=0
    for name in $E2E_BACKENDS; do
        case $name in
            global_only) e2e_run global_only loss.local_weight=0 ;;
            auto_detector) e2e_run auto_detector loss.local_backend=auto model.global_region_detector=512 ;;
            *) e2e_run "$name" loss.local_backend="$name" ;;
        esac || rc=1
        save
    done
    return $rc
}

stage_step() {  # cmgl bench step of the recipe, global-only (benchmarks/gpu_stage_step.sh)
    source "$ROOT/benchmarks/gpu_stage_step.sh" && bench_step_stage
}

# One compound command, read whole before it runs, ending in exit: bash reads a script as it goes,
# so a checkout edited while the check runs cannot change what the check does next.
{
    log "stages: $STAGES (DRY=$DRY${WHEELS:+, wheels $WHEELS}), work folder $WORK"
    failed=0
    for stage in $STAGES; do
        log "stage $stage"
        "stage_$stage"
        rc=$?
        log "stage $stage rc=$rc"
        [ "$rc" = 0 ] || failed=1
        save
    done
    log "$($PY -P benchmarks/gpu_verdict.py "$OUT" 2>&1 | tail -n 1)"
    exit $failed
}
