#!/usr/bin/env bash
# One-call GPU check of the fused local-similarity kernel: CUDA tests, then the benchmark.
# Run from the repo root on the device machine, carrying .whl/ (the wheels it lacks: run
# ../shared/device/prepare.sh here first, plus pytest's wheels if the machine has no pytest):
#     bash benchmarks/gpu_check.sh            # results and logs under $OUT (default ./gpu_check_out)
# Each step has its own time limit (seconds, from the environment) so the whole stays under
# 5 minutes and a slow step still leaves the others' results; the benchmark appends one CSV row
# per finished case.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
TESTS_S=${TESTS_S:-75} TRITON_S=${TRITON_S:-120} BASELINE_S=${BASELINE_S:-40} COMPILE_S=${COMPILE_S:-55}
mkdir -p "$OUT"
log() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$OUT/gpu_check.log"; }

# The wheels, then cmgl_dist laid out as setup.py's package_dir maps it (kernels/ becomes
# cmgl_dist/kernels), without pip building anything. `python -P` keeps the repo root, whose
# cmgl_dist has no kernels/, off sys.path.
site=/tmp/site stage=/tmp/cmgl_stage
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" .whl/*.whl || { log "wheel install failed"; exit 1; }
fi
rm -rf "$stage" && mkdir -p "$stage"
cp -r cmgl_dist "$stage/" && cp -r kernels "$stage/cmgl_dist/kernels" \
    && cp -r shards "$stage/cmgl_dist/shards" && cp -r configs "$stage/cmgl_dist/configs"
export PYTHONPATH="$site:$stage" OMP_NUM_THREADS=4
python3 -P -c "import torch, triton, cmgl_dist.kernels; print(torch.__version__, triton.__version__, torch.cuda.get_device_name(0))" \
    2>&1 | tee -a "$OUT/gpu_check.log"
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv >> "$OUT/gpu_check.log" 2>&1

log "CUDA tests (one kernel config: CMGL_KERNEL_AUTOTUNE=0)"
CMGL_KERNEL_AUTOTUNE=0 timeout "$TESTS_S" python3 -P -m pytest -p no:cacheprovider \
    tests/test_kernel_local_similarity.py tests/test_kernel_bench_forms.py > "$OUT/tests.log" 2>&1
log "tests rc=$? ($(grep -E "passed|failed|error" "$OUT/tests.log" | tail -1))"

bench() {  # bench LIMIT_S NAME ARGS...
    local limit=$1 name=$2; shift 2
    log "benchmark $name"
    timeout "$limit" python3 -P benchmarks/bench_local_similarity.py "$@" > "$OUT/bench_$name.log" 2>&1
    log "benchmark $name rc=$? ($(tail -1 "$OUT/bench_$name.log"))"
}
bench "$TRITON_S" triton --providers triton
bench "$BASELINE_S" baselines --providers reference loop --batches 48 128 --local-global 0 0 --reps 5
bench "$COMPILE_S" compile --providers compile_vectorised compile_gram --batches 128 --local-global 0 0 \
    --dtypes bf16 --modes fwdbwd --reps 5

cp benchmarks/results/local_similarity.csv "$OUT/" 2>/dev/null || log "no CSV written"
python3 -P benchmarks/plot_local_similarity.py --out "$OUT/plots" >> "$OUT/gpu_check.log" 2>&1 \
    || log "plot failed (matplotlib missing?)"
log "done"
