"""Compile evidence for the local-similarity kernels on an H100/H200 (sm_90), without a GPU;
`--capability 80` gives the same for an A100 (sm_80, its pinned config).

Each kernel (forward for training, forward for inference, backward word owner, backward region
owner) is compiled by Triton for sm_90 with its pinned config and the shapes of the GLoRIA
recipe (R 361 in tiles of BLOCK_R, W bucket 112, D 768); ptxas -v on the generated PTX gives
registers per thread, spill bytes and shared memory; the PTX and the SASS (nvdisasm) show
whether tensor-core MMA is used (wgmma / HGMMA on sm_90, mma.sync / HMMA otherwise). One row
per kernel and dtype goes to benchmarks/results/kernel_compile_sm90.csv.

Run it with TRITON_INTERPRET unset (the interpreter compiles nothing):
    python benchmarks/kernel_compile_sm90.py --dtypes bf16 [--capability 80] [--csv PATH | --no-csv]
    python benchmarks/kernel_compile_sm90.py --summary PATH   # one line: registers/spills per kernel
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

SIGNATURE = dict(MASK="*u8", NWORDS="*i32", G="*fp32", S="*fp32", COLS="*fp32", DELTA="*fp32", GS="*fp32",
                 GX="*fp32", GY="*fp32", SCRATCH="*fp32", T="i32", I="i32", W="i32", R="i32", D="i32",
                 R_STRIDE="i32", TEXT_GROUPS="i32", stride_xt="i32",
                 stride_xw="i32", stride_mt="i32", stride_yi="i32", stride_yr="i32", gamma1="fp32",
                 gamma2="fp32", eps="fp32")
REGIONS, WORD_BUCKET_RECIPE = 361, 112
MMA = re.compile(r"\b(wgmma\.mma_async|mma\.sync)")
SASS_MMA = re.compile(r"\b(HGMMA|HMMA)\b")


def _kernels(ls):
    """(row name, kernel, extra constexprs)."""
    return [("forward_train", ls._forward_kernel, dict(SAVE_DELTA=True)),
            ("forward_infer", ls._forward_kernel, dict(SAVE_DELTA=False)),
            ("backward_words", ls._backward_words_kernel, {}),
            ("backward_regions", ls._backward_regions_kernel, dict(BLOCK_W=ls.REGION_OWNER_BLOCK_W))]


def _ptxas_stats(ptx: str, ptxas: Path, arch: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        run = subprocess.run([str(ptxas), "-v", f"--gpu-name={arch}", str(src), "-o", str(Path(tmp) / "k.cubin")],
                             capture_output=True, text=True, check=True)
    text = run.stderr + run.stdout
    number = lambda pattern: int(m.group(1)) if (m := re.search(pattern, text)) else 0  # noqa: E731
    return dict(registers=number(r"Used (\d+) registers"),
                spill_store_bytes=number(r"(\d+) bytes spill stores"),
                spill_load_bytes=number(r"(\d+) bytes spill loads"),
                stack_frame_bytes=number(r"(\d+) bytes stack frame"))


def _sass_mma(cubin: bytes, nvdisasm: Path) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([str(nvdisasm), f.name], capture_output=True, text=True, check=True).stdout
    return ",".join(sorted(set(SASS_MMA.findall(sass)))) or "none"


COMPILE_METRICS = ("shared_bytes", "registers", "spill_store_bytes", "spill_load_bytes", "stack_frame_bytes")


def compile_rows(dtype: str, params: dict | None = None, capability: int = 90) -> list[dict]:
    """Rows for every kernel in `dtype` for compute capability `capability` (90: sm_90a, 80:
    sm_80), with that architecture's pinned config or `params` (same keys)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from cmgl_dist.kernels import local_similarity as ls

    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    config = ls._as_config(params or ls.PINNED_CONFIGS[capability // 10])
    precision = "ieee" if dtype == "fp32" else "tf32"
    rows = []
    for name, kernel, extra in _kernels(ls):
        fn = kernel.fn
        constexprs = {**config.kwargs, "BLOCK_W": ls.BLOCK_W, "DOT_PRECISION": precision,
                      "WIDE_GRADS": dtype == "fp16", **extra}
        mine = {p: v for p, v in constexprs.items() if p in fn.arg_names}
        types = dict(SIGNATURE, X=f"*{dtype}", Y=f"*{dtype}")
        signature = {p: "constexpr" if p in mine else types[p] for p in fn.arg_names}
        compiled = triton.compile(ASTSource(fn, signature, mine), target=GPUTarget("cuda", capability, 32),
                                  options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
        ptx = compiled.asm["ptx"]
        arch = re.search(r"^\.target\s+(\S+)", ptx, re.M).group(1)
        rows.append(dict(kernel=name, dtype=dtype, arch=arch, config=json.dumps(config.all_kwargs(), sort_keys=True),
                         block_w=mine["BLOCK_W"], R=REGIONS, W_bucket=WORD_BUCKET_RECIPE, D=768,
                         shared_bytes=compiled.metadata.shared,
                         **_ptxas_stats(ptx, tools / "ptxas", arch),
                         ptx_mma=",".join(sorted(set(MMA.findall(ptx)))) or "none",
                         sass_mma=_sass_mma(compiled.asm["cubin"], tools / "nvdisasm"),
                         triton=triton.__version__))
    return rows


def summary_line(csv_path: Path) -> str:
    """`triton X: kernel dtype registers/spill-store bytes; ...` of a CSV's latest rows."""
    from cmgl_dist.bench.harness import current_rows, pivot, read_rows

    if not csv_path.is_file():
        return f"{csv_path}: no rows"
    rows = pivot(current_rows(read_rows(csv_path)), "kernel_compile_sm90")
    versions = sorted({str(row["triton"]) for row in rows})
    return f"triton {','.join(versions)}: " + "; ".join(
        f"{row['kernel']} {row['dtype']} {row['registers']:g} regs, {row['spill_store_bytes']:g} B spilled" for row in rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["bf16"], choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--csv", default=str(Path(__file__).parent / "results" / "kernel_compile_sm90.csv"))
    parser.add_argument("--config", type=json.loads, help='JSON like {"BLOCK_R": 64, "BLOCK_D": 64, '
                        '"num_warps": 4, "num_stages": 1} instead of the pinned sm_90 config (offline tuning)')
    parser.add_argument("--capability", type=int, default=90, choices=[80, 90],
                        help="compute capability: 90 (H100/H200, sm_90a) or 80 (A100, sm_80)")
    parser.add_argument("--no-csv", action="store_true", help="print the rows as JSON only")
    parser.add_argument("--summary", type=Path, help="print one line of a CSV's rows (the GPU check's log) and stop")
    args = parser.parse_args(argv)
    if args.summary is not None:
        print(summary_line(args.summary))
        return
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("unset TRITON_INTERPRET: the interpreter compiles nothing")
    rows = [row for dtype in args.dtypes for row in compile_rows(dtype, args.config, args.capability)]
    print(json.dumps(rows))
    if not args.no_csv:
        from cmgl_dist.bench.harness import append_results

        for row in rows:
            metrics = {key: row[key] for key in COMPILE_METRICS}
            append_results(args.csv, "kernel_compile_sm90", {k: v for k, v in row.items() if k not in metrics}, metrics)


if __name__ == "__main__":
    main()
