"""Convert benchmark CSVs written before the long format into it, in place.

    python benchmarks/convert_results.py [benchmarks/results/*.csv]

A wide CSV (stamp columns, then shape columns, then measured columns) becomes the long format of
`cmgl_dist.bench.harness.COLUMNS`: the benchmark is the file's stem, the shape columns make the
config string, and each measured column makes one row. Files already in the long format are left
as they are, so running it twice changes nothing.
"""
from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

from cmgl_dist.atomic import write_text_atomic
from cmgl_dist.bench.harness import COLUMNS, config_string

RESULTS = Path(__file__).resolve().parent / "results"

STAMP = ("machine", "date", "commit")
# Measured columns of each wide CSV the earlier scripts wrote; every other column is config.
METRICS = {
    "loader_throughput": ("samples", "seconds", "samples_per_s", "samples_per_s_per_worker", "load_avg_1min"),
    "local_similarity": ("p20_ms", "p50_ms", "p80_ms", "peak_extra_mb", "nominal_tflops"),
    "pack_throughput": ("samples", "images_written", "seconds", "images_per_s", "mbytes", "verify_seconds"),
    "png_compress_level": ("ms_per_image", "kbytes_per_image"),
    "e2e_throughput": ("windows", "last_step", "samples_per_s_p50", "samples_per_s_max", "step_time_s_p50",
                       "gpu_util_pct_p50", "peak_mem_mb", "loss_local_last"),
    "kernel_compile_sm90": ("shared_bytes", "registers", "spill_store_bytes", "spill_load_bytes", "stack_frame_bytes"),
}


def long_rows(benchmark: str, wide: list[dict]) -> list[dict]:
    if benchmark not in METRICS:
        raise ValueError(f"{benchmark}: no list of measured columns; add one to METRICS")
    metrics = METRICS[benchmark]
    out = []
    for row in wide:
        config = {k: v for k, v in row.items() if k not in STAMP and k not in metrics}
        for metric in metrics:
            if row.get(metric, "") != "":
                out.append({**{k: row[k] for k in STAMP}, "benchmark": benchmark,
                            "config": config_string(config), "metric": metric, "value": row[metric]})
    return out


def convert(path: Path) -> bool:
    """Rewrite `path` in the long format; False when it already is."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) == COLUMNS:
            return False
        wide = list(reader)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(long_rows(path.stem, wide))
    write_text_atomic(path, buffer.getvalue())
    return True


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("csvs", nargs="*", type=Path, default=sorted(RESULTS.glob("*.csv")))
    for path in p.parse_args(argv).csvs:
        print(f"{path}: {'converted' if convert(path) else 'already long'}")


if __name__ == "__main__":
    main()
