"""The kernels compile for an H100/H200 (sm_90) with the ptxas bundled in triton, without a GPU,
and the generated code keeps what the committed compile evidence
(benchmarks/results/kernel_compile_sm90.csv) shows: no register spills in any kernel,
tensor-core MMA in every kernel's SASS (every MMA kind recorded there, so wgmma does not fall
back to mma.sync unnoticed) and shared memory within the SM. The interpreter runs the Python semantics only, so this is what catches
what the GPU compiler rejects or degrades on a CPU-only machine."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cmgl_dist.bench.harness import pivot, read_rows

ROOT = Path(__file__).resolve().parents[1]
EVIDENCE = ROOT / "benchmarks" / "results" / "kernel_compile_sm90.csv"
# Located without importing triton: importing it here, before the interpreter tests set
# TRITON_INTERPRET, would fix the JIT mode for the whole session.
PTXAS = Path(importlib.util.find_spec("triton").origin).parent / "backends" / "nvidia" / "bin" / "ptxas"


def committed_rows(dtype: str) -> dict[str, dict]:
    rows = [row for row in pivot(read_rows(EVIDENCE), "kernel_compile_sm90")
            if row["dtype"] == dtype and row["arch"] == "sm_90a"]  # the file also holds sm_80 rows
    return {row["kernel"]: row for row in rows}  # the latest row per kernel


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA tests compile the kernels for this GPU")
@pytest.mark.skipif(not PTXAS.exists(), reason=f"no ptxas bundled with triton at {PTXAS}")
def test_kernels_compile_for_sm90_with_tensor_cores_and_no_spills(dtype="bf16"):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernel_compile_sm90.py"), "--no-csv",
                          "--dtypes", dtype], env=env, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {row["kernel"]: row for row in json.loads(run.stdout.strip().splitlines()[-1])}
    assert set(rows) == {"forward_train", "forward_infer", "backward_words", "backward_regions"}
    recorded = committed_rows(dtype)
    for name, row in rows.items():
        assert row["arch"] == "sm_90a" and row["sass_mma"] != "none", f"{name}: no tensor-core MMA: {row}"
        assert set(recorded[name]["sass_mma"].split(",")) <= set(row["sass_mma"].split(",")), \
            f"{name}: lost an MMA kind of the committed evidence ({recorded[name]['sass_mma']}): {row}"
        assert 0 < row["shared_bytes"] <= 227 * 1024, f"{name}: shared memory {row['shared_bytes']}"
        assert row["spill_store_bytes"] == row["spill_load_bytes"] == 0, f"{name} spills registers: {row}"
