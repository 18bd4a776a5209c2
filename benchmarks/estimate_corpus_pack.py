"""Pack time, shard count and size for CheXpert and MIMIC-CXR-JPG, estimated from measured rows.

    python benchmarks/estimate_corpus_pack.py [--workers 16]

Reads the newest one-worker `real-nih` row per image size of benchmarks/results/pack_throughput.csv
(the 354 real 1024-px NIH PNGs, `pack_throughput.py --source nih --workers 1`) and prints a markdown table: per image size, the
measured images/s per worker, bytes per packed image, and for each corpus's frontal images the
shard count (128 per shard), the pack size, and the hours on one worker and on `--workers`
(assuming linear scaling, which the 2-core rows bound but do not prove). Full-resolution JPEGs
decode at a reduced scale (PIL draft mode), so JPEG corpora likely pack faster than these PNGs.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from cmgl_dist.bench.harness import pivot, read_rows

RESULTS = Path(__file__).resolve().parent / "results" / "pack_throughput.csv"
# Frontal images packed per corpus: CheXpert from torchxrayvision's train table (191,027) plus
# valid.csv's 202 frontals; MIMIC-CXR-JPG 2.0.0 PA + AP as its metadata publishes them.
CORPORA = {"CheXpert (frontal)": 191_229, "MIMIC-CXR-JPG (PA/AP)": 243_334}
SAMPLES_PER_SHARD = 128


def newest_rows(path: Path) -> dict[int, dict]:
    """image size -> the newest one-worker real-nih row (its images/s is the per-worker rate)."""
    rows = {}
    for row in pivot(read_rows(path), "pack_throughput"):
        if row["images"] == "real-nih" and int(row["workers"]) == 1:
            rows[int(row["image_size"])] = row
    return rows


def table(rows: dict, workers: int) -> list[str]:
    lines = ["| corpus | image size | images/s per worker (measured) | shards | size | hours, 1 worker | "
             f"hours, {workers} workers (linear) |", "|---|---|---|---|---|---|---|"]
    for size, row in sorted(rows.items(), reverse=True):
        per_worker = float(row["images_per_s"])
        bytes_per_image = float(row["mbytes"]) * 1e6 / int(row["images_written"])
        for corpus, n in CORPORA.items():
            hours = n / per_worker / 3600
            lines.append(f"| {corpus} | {size} | {per_worker:.1f} ({row['date'][:10]}, {row['machine']}) | "
                         f"{math.ceil(n / SAMPLES_PER_SHARD):,} | "
                         f"{n * bytes_per_image / 1e9:.1f} GB | {hours:.1f} | {hours / workers:.1f} |")
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=16)
    args = p.parse_args(argv)
    rows = newest_rows(RESULTS)
    if not rows:
        raise SystemExit(f"no real-nih rows in {RESULTS}: run benchmarks/pack_throughput.py --source nih first")
    print("\n".join(table(rows, args.workers)))


if __name__ == "__main__":
    main()
