"""`cmgl bench zero`: the same model under ZeRO 0, 1, 2, 3 and with optimizer offload.

    cmgl bench zero --config debug --steps 10 --out bench/zero

Runs `cmgl bench step` once per variant (into DIR/<variant>/) and collects step time, samples/s,
peak memory per rank (CUDA allocator peak; on CPU the process's peak resident set, mostly the
runtime itself), the model state a rank holds (parameters or their ZeRO-3 partition, master
weights, optimizer state: what ZeRO divides) and the bytes DeepSpeed's collectives moved per step
(its comms logger: the gradient reduction, and under ZeRO-3 the parameter gathers; the loss's
feature gathers are the same in every variant and not counted). ZeRO-3 keeps parameters under
`stage3_param_persistence_threshold` elements (DeepSpeed's default 1e5) whole on every rank. Writes zero.csv, zero.png and long rows in results.csv.
A variant that fails is reported and the others still run.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

from cmgl_dist.atomic import write_text_atomic
from cmgl_dist.bench.harness import append_results

log = logging.getLogger("cmgl.bench")

VARIANTS = {"zero0": ["zero.stage=0"], "zero1": ["zero.stage=1"], "zero2": ["zero.stage=2"],
            "zero3": ["zero.stage=3"], "zero2_offload": ["zero.stage=2", "zero.offload_optimizer=true"]}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="cmgl bench zero", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--ranks", type=int, default=None, help="ranks on this machine (default: GPUs, else 2 CPU ranks)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--results", type=Path, default=None, help="long-format CSV to append to (default OUT/results.csv)")
    return p.parse_args(argv)


def run_variant(args, name: str) -> Optional[dict]:
    from cmgl_dist.bench.step import main as bench_step

    folder = args.out / name
    sets = [*args.overrides, *VARIANTS[name]]
    argv = ["--config", args.config, "--steps", str(args.steps), "--warmup", str(args.warmup), "--out", str(folder),
            *(["--ranks", str(args.ranks)] if args.ranks else []), *[a for s in sets for a in ("--set", s)]]
    if bench_step(argv) != 0 or not (folder / "summary.json").exists():
        log.error("variant %s failed; see the output above", name)
        return None
    return json.loads((folder / "summary.json").read_text())


def row_of(name: str, summary: dict) -> dict:
    peaks = summary["peak_mem_mb_per_rank"]
    return {"variant": name, "stage": summary["zero_stage"], "offload": summary["offload_optimizer"],
            "ranks": summary["world_size"], "step_ms_p50": round(summary["step_ms_p50"], 2),
            "samples_per_s": round(summary["samples_per_s"], 2), "peak_mem_mb_max": round(max(peaks), 1),
            "peak_mem_mb_per_rank": " ".join(f"{p:.0f}" for p in peaks),
            "model_state_mb_per_rank": round(max(summary["model_state_bytes_per_rank"]) / 2**20, 3),
            "comm_mb_per_step": round(max(summary["comm_bytes_per_step_per_rank"]) / 2**20, 3)}


def main(argv: Optional[list[str]] = None) -> int:
    from cmgl_dist.bench.plots import grouped_bars

    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.variants:
        summary = run_variant(args, name)
        if summary is not None:
            rows.append(row_of(name, summary))
    if not rows:
        print("cmgl bench zero: no variant ran", file=sys.stderr)
        return 1
    header = list(rows[0])
    write_text_atomic(args.out / "zero.csv", ",".join(header) + "\n"
                      + "".join(",".join(str(r[k]) for k in header) + "\n" for r in rows))
    for r in rows:
        append_results(args.results or args.out / "results.csv", "bench_zero",
                       {"config": Path(args.config).stem, "variant": r["variant"], "ranks": r["ranks"]},
                       {k: r[k] for k in ("step_ms_p50", "samples_per_s", "peak_mem_mb_max", "model_state_mb_per_rank",
                                          "comm_mb_per_step")})
    grouped_bars([r["variant"] for r in rows],
                 {"step ms (p50)": [r["step_ms_p50"] for r in rows],
                  "peak memory MB (max over ranks)": [r["peak_mem_mb_max"] for r in rows],
                  "model state MB per rank": [r["model_state_mb_per_rank"] for r in rows],
                  "DeepSpeed MB moved per step": [r["comm_mb_per_step"] for r in rows]},
                 args.out / "zero.png", f"{Path(args.config).stem}: ZeRO variants on {rows[0]['ranks']} ranks")
    print("\n".join(",".join(str(r[k]) for k in header) for r in rows))
    return 0
