"""The GPU check's last line: each of its figures judged against the project's GPU target.

    python benchmarks/gpu_verdict.py OUT   # reads OUT/local_similarity.csv and OUT/e2e_throughput.csv

Targets (README, "Running the GPU check on your GPU"): the Triton kernel's forward + backward at
T = I = 128 in bf16 within 10 ms and within half of torch.compile's vectorised form; at T = I =
512 within 4 GiB of extra memory; the GLoRIA recipe at >= 1,150 samples/s with the Triton local
loss and >= 1,300 global-only. A figure the check did not produce is judged `missing` (its stage
failed or was cut): the verdict never passes on a figure it has not seen.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

from cmgl_dist.bench.harness import pivot, read_rows

TRITON_128_MS = 10.0
COMPILE_SHARE = 0.5
MEMORY_512_GIB = 4.0
E2E_TRITON = 1150.0
E2E_GLOBAL_ONLY = 1300.0


def _rows(path: Path, benchmark: str) -> list[dict]:
    return pivot(read_rows(path), benchmark) if path.is_file() else []


def _kernel(rows: list[dict], provider: str, T: int, metric: str) -> float:
    """The metric of the last ok bf16 fwdbwd row of `provider` at T = I (nan when there is none)."""
    found = [row[metric] for row in rows if row.get("provider") == provider and row.get("mode") == "fwdbwd"
             and row.get("dtype") == "bf16" and row.get("status") == "ok" and str(row.get("T")) == str(T)
             and str(row.get("I")) == str(T)]
    return float(found[-1]) if found else math.nan


def _e2e(rows: list[dict], run: str) -> float:
    found = [row["samples_per_s_p50"] for row in rows if row.get("run") == run]
    return float(found[-1]) if found else math.nan


def judgements(out: Path) -> list[tuple[str, float, str, bool]]:
    """(figure, value, target, met) in the order of the check's stages."""
    kernel = _rows(out / "local_similarity.csv", "local_similarity")
    e2e = _rows(out / "e2e_throughput.csv", "e2e_throughput")
    triton_ms = _kernel(kernel, "triton", 128, "p50_ms")
    share = triton_ms / _kernel(kernel, "compile_vectorised", 128, "p50_ms")
    memory_gib = _kernel(kernel, "triton", 512, "peak_extra_mb") / 1024
    triton_e2e, global_e2e = _e2e(e2e, "triton"), _e2e(e2e, "global_only")
    return [("triton fwd+bwd T=I=128 bf16 ms", triton_ms, f"<= {TRITON_128_MS:g}", triton_ms <= TRITON_128_MS),
            ("triton / compile_vectorised", share, f"<= {COMPILE_SHARE:g}", share <= COMPILE_SHARE),
            ("triton extra memory T=I=512 GiB", memory_gib, f"<= {MEMORY_512_GIB:g}", memory_gib <= MEMORY_512_GIB),
            ("e2e triton samples/s", triton_e2e, f">= {E2E_TRITON:g}", triton_e2e >= E2E_TRITON),
            ("e2e global_only samples/s", global_e2e, f">= {E2E_GLOBAL_ONLY:g}", global_e2e >= E2E_GLOBAL_ONLY)]


def verdict_line(out: Path) -> str:
    parts = []
    for name, value, target, met in judgements(out):
        judged = "missing" if math.isnan(value) else ("met" if met else "NOT met")
        parts.append(f"{name} {value:.3g} ({target}): {judged}")
    return "verdict: " + "; ".join(parts)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python benchmarks/gpu_verdict.py OUT")
    print(verdict_line(Path(sys.argv[1])))
