"""CheXpert and MIMIC-CXR-JPG: pack time and size, and loader cores per 8-GPU node, from measured rows.

    python benchmarks/estimate_corpus_pack.py [--gpu-rate 1300] [--gpus 8]

Pack: the one-worker `real-nih` row per (image size, format) measured under the lowest load of
benchmarks/results/pack_throughput.csv (the 354 real 1024-px NIH PNGs, `pack_throughput.py --source
nih --workers 1 --format png jpeg`): images/s per worker and bytes per image -> for each corpus's
frontal images the shards (128 each), the pack size, hours on one worker and the workers that
pack it in one hour (linear scaling, which Ray tasks over separate machines give; on one machine
cores and disk bound it). Loader: the newest `loader_throughput` rows of
benchmarks/results/loader_throughput.csv per format (one worker, lowest load):
samples/s per worker -> loader cores an 8-GPU node needs at `--gpu-rate` samples/s per GPU.
Every figure names its row's date, machine and load average: on a loaded machine the rates
are low by about the load over the cores, so the least-loaded row is the closest to an idle one.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from cmgl_dist.bench.harness import pivot, read_rows

RESULTS = Path(__file__).resolve().parent / "results"
# Frontal images packed per corpus (of 224,316 CheXpert and 377,110 MIMIC-CXR-JPG images in all):
# CheXpert from torchxrayvision's train table (191,027) plus valid.csv's 202 frontals; MIMIC-CXR-JPG
# 2.0.0 PA + AP as its metadata publishes them.
CORPORA = {"CheXpert (frontal)": 191_229, "MIMIC-CXR-JPG (PA/AP)": 243_334}
SAMPLES_PER_SHARD = 128


def _format(row: dict) -> str:
    return row.get("format") or "png"


def _where(row: dict) -> str:
    return f"{row['date'][:10]}, load {float(row['load_avg_1min']):.1f} on {row['machine']}" \
        if row.get("load_avg_1min") not in (None, "") else f"{row['date'][:10]}, {row['machine']}"


def _load(row: dict) -> float:
    """The row's load average; rows measured before it was recorded count as the most loaded."""
    return float(row["load_avg_1min"]) if row.get("load_avg_1min") not in (None, "") else math.inf


def _least_loaded(rows, key) -> dict:
    """key(row) -> the row measured under the lowest load average (the newest among equals)."""
    best: dict = {}
    for row in rows:
        if key(row) not in best or _load(row) <= _load(best[key(row)]):
            best[key(row)] = row
    return best


def pack_rows(path: Path) -> dict[tuple[int, str], dict]:
    """(image size, format) -> the least-loaded one-worker real-nih pack row."""
    rows = [r for r in pivot(read_rows(path), "pack_throughput") if r["images"] == "real-nih" and int(r["workers"]) == 1]
    return _least_loaded(rows, lambda r: (int(r["image_size"]), _format(r)))


def loader_rows(path: Path) -> dict[str, dict]:
    """format -> the least-loaded one-worker loader row measured beside its floor (one worker process
    per core: on a machine with few cores, more workers share them with the main process and other
    jobs; rows without a floor are of other images, e.g. phantoms)."""
    rows = [r for r in pivot(read_rows(path), "loader_throughput")
            if int(r["workers"]) == 1 and r.get("decode", "cpu") == "cpu" and r.get("floor_samples_per_s")]
    return _least_loaded(rows, _format)


def pack_table(rows: dict) -> list[str]:
    lines = ["| corpus | image size | format | images/s per worker (measured) | shards | size | hours, 1 worker | "
             "workers for 1 hour |", "|---|---|---|---|---|---|---|---|"]
    for (size, fmt), row in sorted(rows.items(), key=lambda item: (-item[0][0], item[0][1])):
        per_worker = float(row["images_per_s"])
        bytes_per_image = float(row["mbytes"]) * 1e6 / int(row["images_written"])
        for corpus, n in CORPORA.items():
            hours = n / per_worker / 3600
            lines.append(f"| {corpus} | {size} | {fmt} | {per_worker:.1f} ({_where(row)}) | "
                         f"{math.ceil(n / SAMPLES_PER_SHARD):,} | {n * bytes_per_image / 1e9:.1f} GB | {hours:.1f} | "
                         f"{math.ceil(hours)} |")
    return lines


def loader_table(rows: dict, gpu_rate: float, gpus: int) -> list[str]:
    lines = [f"| shard format | stored / crop | samples/s per loader worker (measured) | in-process floor | "
             f"loader cores per {gpus}-GPU node at {gpu_rate:,.0f} samples/s per GPU |", "|---|---|---|---|---|"]
    for fmt, row in sorted(rows.items()):
        per_worker = float(row["samples_per_s_per_worker"])
        lines.append(f"| {fmt} | {row['stored_size']} / {row['crop_size']} | {per_worker:.1f} "
                     f"({_where(row)}) | {row['floor_samples_per_s']} | "
                     f"{math.ceil(gpus * gpu_rate / per_worker)} |")
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu-rate", type=float, default=1300.0, help="training samples/s per GPU")
    p.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    args = p.parse_args(argv)
    packs = pack_rows(RESULTS / "pack_throughput.csv")
    if not packs:
        raise SystemExit("no real-nih rows: run benchmarks/pack_throughput.py --source nih --workers 1 first")
    print("\n".join(pack_table(packs)))
    loaders = loader_rows(RESULTS / "loader_throughput.csv")
    if loaders:
        print()
        print("\n".join(loader_table(loaders, args.gpu_rate, args.gpus)))


if __name__ == "__main__":
    main()
