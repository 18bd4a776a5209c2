"""`cmgl bench scaling`: predicted weak scaling from 1 to 512 GPUs, gather and ring side by side,
checked against 1 vs 2 (or more: `--check-ranks 2 4`) local ranks.

    cmgl bench scaling --out bench/scaling                       # measures debug on 1 and 2 CPU ranks first
    cmgl bench scaling --out DIR --measured DIR1 --zero-stage 3 --nic-gbps 25 --local-negatives 256

The model is in `scaling_model.py`. Its compute comes from a 1-rank `cmgl bench step` folder
(`--measured`, else measured here with `--config`); with `--check` (default) the same config is
also measured on local ranks and the model, given the all-reduce speed those ranks measured,
predicts that step: both rows go into scaling.csv (`kind` measured / predicted_local). Writes
scaling.csv (exchange, gpus, nodes, predicted ms by part, samples/s, efficiency, the exposed
share of the step, the exchange's word buffers), scaling.md (gather and ring side by side),
scaling.png (the ring) and the long rows in results.csv.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import sys
from pathlib import Path
from typing import Optional

from cmgl_dist.atomic import write_text_atomic
from cmgl_dist.bench.scaling_model import (EXCHANGES, Network, Workload, exchange_bytes, link_from_all_reduce,
                                           local_loss_limit, predict, workload_from_breakdown)
from cmgl_dist.bench.harness import append_results

COLUMNS = ("kind", "exchange", "gpus", "nodes", "compute_ms", "loss_ms", "feature_comm_ms", "gradient_comm_ms",
           "step_ms", "samples_per_s", "efficiency", "exposed_share", "exchange_mb", "rank_skew_ms")
PARTS = ("compute_ms", "loss_ms", "feature_comm_ms", "gradient_comm_ms")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="cmgl bench scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--results", type=Path, default=None, help="long-format CSV to append to (default OUT/results.csv)")
    p.add_argument("--measured", type=Path, help="a 1-rank `cmgl bench step` folder (default: measure it here)")
    p.add_argument("--workload", type=Path, help="a JSON of scaling_model.Workload's fields (and a 'source') "
                                                 "instead of a measured folder; no check")
    p.add_argument("--config", default="debug", help="config measured when --measured is not given")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the local-rank measurements")
    p.add_argument("--check-ranks", type=int, nargs="+", default=[2], help="local ranks measured (default 2)")
    p.add_argument("--zero-stage", type=int, choices=range(4), help="default: the measured run's")
    p.add_argument("--local-negatives", type=int, help="loss.local_negatives to model (default: the run's)")
    p.add_argument("--max-gpus", type=int, default=512)
    for field in dataclasses.fields(Network):
        p.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default,
                       help=f"(default {field.default}: H100/H200 HGX node)")
    return p.parse_args(argv)


def measure_step(args, folder: Path, nproc: int) -> Path:
    """`cmgl bench step` on `nproc` local ranks with one thread each (the same compute per rank)."""
    from cmgl_dist.bench.step import main as bench_step

    if not (folder / "summary.json").exists():
        os.environ["OMP_NUM_THREADS"] = "1"
        argv = ["--config", args.config, "--steps", str(args.steps), "--out", str(folder), "--ranks", str(nproc)]
        if bench_step(argv + [a for o in args.overrides for a in ("--set", o)]) != 0:
            raise SystemExit(f"cmgl bench scaling: the {nproc}-rank measurement failed")
    return folder


def read_breakdown(folder: Path) -> tuple[dict[str, float], dict]:
    with open(folder / "step_breakdown.csv", newline="") as f:
        p50 = {row["phase"]: float(row["ms_p50"]) for row in csv.DictReader(f)}
    return p50, json.loads((folder / "summary.json").read_text())


def workload(folder: Path, args) -> Workload:
    p50, summary = read_breakdown(folder)
    if summary["world_size"] != 1:
        raise SystemExit(f"--measured {folder}: measured on {summary['world_size']} ranks; the model needs 1")
    negatives = args.local_negatives if args.local_negatives is not None else summary.get("local_negatives")
    return workload_from_breakdown(
        p50, micro_batch=summary["micro_batch"], embed_dim=summary["embed_dim"], words=summary["words"],
        param_bytes=summary["param_bytes"], local_negatives=negatives,
        zero_stage=summary["zero_stage"] if args.zero_stage is None else args.zero_stage)


def measured_row(folder: Path, work: Workload) -> dict:
    """A measured `cmgl bench step` folder as a scaling.csv row (its phases grouped as the model's parts)."""
    p50, summary = read_breakdown(folder)
    group = {"loss_ms": ("local_loss", "global_loss"),
             "feature_comm_ms": ("feature_all_gather", "local_exchange", "loss_all_reduce"),
             "gradient_comm_ms": ("gradient_reduction", "zero_param_gather")}
    parts = {name: sum(p50.get(phase, 0.0) for phase in phases) for name, phases in group.items()}
    compute = sum(ms for name, ms in p50.items() if name not in ("step", "sum_of_phases")) - sum(parts.values())
    comm = parts["feature_comm_ms"] + parts["gradient_comm_ms"]
    return {"kind": "measured", "exchange": summary.get("local_exchange", "gather"), "gpus": summary["world_size"],
            "nodes": 1, "compute_ms": compute, **parts, "step_ms": p50["step"], "samples_per_s": summary["samples_per_s"],
            "efficiency": (work.fixed_ms + work.loss_ms) / p50["step"], "exposed_share": comm / p50["step"],
            "exchange_mb": "", "rank_skew_ms": summary.get("rank_skew_ms_p50", "")}


def check_rows(work: Workload, folder: Path) -> list[dict]:
    """A measured local-rank step and the model's prediction of it with the link those ranks measured."""
    summary = read_breakdown(folder)[1]
    nproc, exchange = summary["world_size"], summary.get("local_exchange", "gather")
    gbps, latency_us = link_from_all_reduce(summary["all_reduce_small_ms"], summary["all_reduce_big_ms"],
                                            summary["all_reduce_big_bytes"], nproc)
    local = Network(gpus_per_node=nproc, nvlink_gbps=gbps, nvlink_latency_us=latency_us)
    predicted = {"kind": "predicted_local", **predict(work, nproc, local, exchange)}
    measured = measured_row(folder, work)
    print(f"check on this machine: {nproc} ranks ({exchange}) measured {measured['step_ms']:.1f} ms, predicted "
          f"{predicted['step_ms']:.1f} ms (link {gbps:.2f} GB/s, {latency_us:.0f} us from the ranks' all-reduces); "
          f"the ranks' work outside collectives differed by {measured['rank_skew_ms']:.1f} ms per step (p50), "
          "time a collective spends waiting that the lock-step model leaves out")
    print(f"  loss exchange bytes per step, rank 0: measured {summary.get('exchange_bytes_per_step')}, model at "
          f"{work.words} word slots {exchange_bytes(work, nproc, exchange)} (batches with fewer slots send less)")
    return [measured, predicted]


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.workload:
        fields = {k: v for k, v in json.loads(args.workload.read_text()).items() if k != "source"}
        if args.local_negatives is not None:
            fields["local_negatives"] = args.local_negatives
        if args.zero_stage is not None:
            fields["zero_stage"] = args.zero_stage
        work, args.check = Workload(**fields), False
    else:
        one = args.measured or measure_step(args, args.out / "measured_1rank", 1)
        work = workload(one, args)
    net = Network(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Network)})
    rows = []
    gpus = 1
    while gpus <= args.max_gpus:
        rows += [{"kind": "predicted", **predict(work, gpus, net, exchange)} for exchange in EXCHANGES]
        gpus *= 2
    if args.check:
        rows.append(measured_row(one, work))
        for nproc in args.check_ranks:
            rows += check_rows(work, measure_step(args, args.out / f"measured_{nproc}rank", nproc))
    write_outputs(args, work, net, rows)
    return 0


def markdown_table(rows: list[dict]) -> str:
    """scaling.csv as a Markdown table, the exchanges side by side (docs/PERFORMANCE.md pastes it)."""
    by = {(r["kind"], r["gpus"], r["exchange"]): r for r in rows}
    exchanges = [e for e in EXCHANGES if any(r["exchange"] == e for r in rows)]
    keys = sorted({(r["kind"], r["gpus"]) for r in rows}, key=lambda k: (k[0] != "predicted", k[0], k[1]))
    per = ("loss ms", "step ms", "exposed %", "MB")
    head = ("kind", "GPUs", "compute ms", *(f"{e} {h}" for e in exchanges for h in per))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind, gpus in keys:
        first = next(by[kind, gpus, e] for e in exchanges if (kind, gpus, e) in by)
        cells = [kind, gpus, f"{first['compute_ms']:.1f}"]
        for e in exchanges:
            r = by.get((kind, gpus, e))
            cells += ["-"] * len(per) if r is None else [
                f"{r['loss_ms']:.1f}", f"{r['step_ms']:.1f}", f"{100 * r['exposed_share']:.1f}",
                "-" if r["exchange_mb"] == "" else f"{r['exchange_mb']:.0f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(args, work: Workload, net: Network, rows: list[dict]) -> None:
    from cmgl_dist.bench.plots import scaling_lines

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in rows)
    write_text_atomic(args.out / "scaling.csv", buffer.getvalue())
    predicted = [r for r in rows if r["kind"] == "predicted" and r["exchange"] == "ring"]
    parts = {name: [r[name] for r in predicted] for name in PARTS}
    scaling_lines([r["gpus"] for r in predicted], parts, [r["efficiency"] for r in predicted],
                  args.out / "scaling.png",
                  f"weak scaling (ring), micro-batch {work.micro_batch}, ZeRO {work.zero_stage}, "
                  f"local negatives {work.local_negatives or 'all'}")
    for row in rows:
        config = {"kind": row["kind"], "exchange": row["exchange"], "gpus": row["gpus"], "zero": work.zero_stage,
                  "micro_batch": work.micro_batch, "local_negatives": work.local_negatives or "all"}
        append_results(args.results or args.out / "results.csv", "scaling", config,
                       {k: round(row[k], 4) for k in ("step_ms", "samples_per_s", "efficiency")})
    table = markdown_table(rows)
    write_text_atomic(args.out / "scaling.md", table)
    print(buffer.getvalue())
    print(table)
    for exchange in EXCHANGES:
        limit = local_loss_limit(work, net, args.max_gpus, exchange)
        print(f"{exchange}: the loss compute outgrows the rest of the step at {limit} GPUs" if limit else
              f"{exchange}: the loss compute stays below the rest of the step up to {args.max_gpus} GPUs")
