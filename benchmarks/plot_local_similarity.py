"""Plot time and peak extra memory against batch (T = I) from bench_local_similarity.py's CSV.

One figure per (machine, dtype, mode): p50 time on the left and peak memory on the right, one
line per provider, the p20-p80 band shaded. Only the latest row of each case is drawn.

    python benchmarks/plot_local_similarity.py [--csv ...] [--out benchmarks/results/plots]
"""
from __future__ import annotations

import argparse
import math
import os
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cmgl_dist.bench.harness import current_rows, pivot, read_rows  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def load_cases(csv_path: Path) -> dict:
    """{(machine, dtype, mode): {provider: {batch: case}}} for square (T = I) cases that ran."""
    cases: dict = defaultdict(lambda: defaultdict(dict))
    for case in pivot(current_rows(read_rows(csv_path)), "local_similarity"):
        if case["T"] != case["I"] or case.get("status", "ok") != "ok":
            continue
        cases[(case["machine"], case["dtype"], case["mode"])][case["provider"]][int(case["T"])] = case
    return cases


def draw(key, providers: dict, out_dir: Path) -> Path:
    machine, dtype, mode = key
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4))
    for provider, by_batch in sorted(providers.items()):
        batches = sorted(by_batch)
        p50 = [_number(by_batch[b]["p50_ms"]) for b in batches]
        line, = ax_time.plot(batches, p50, marker="o", label=provider)
        ax_time.fill_between(batches, [_number(by_batch[b]["p20_ms"]) for b in batches],
                             [_number(by_batch[b]["p80_ms"]) for b in batches],
                             color=line.get_color(), alpha=0.2)
        ax_mem.plot(batches, [_number(by_batch[b]["peak_extra_mb"]) / 1024 for b in batches],
                    marker="o", label=provider)
    for ax, label in ((ax_time, "ms (p50, p20-p80 band)"), (ax_mem, "peak extra memory (GiB)")):
        ax.set_xscale("log", base=2)
        if any(math.isfinite(y) and y > 0 for line in ax.get_lines() for y in line.get_ydata()):
            ax.set_yscale("log")  # memory is only measured on CUDA
        ax.set_xlabel("batch T = I")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_time.legend(fontsize=8)
    fig.suptitle(f"local similarity {mode}, {dtype}, {machine}")
    fig.tight_layout()
    slug = "".join(c if c.isalnum() else "_" for c in machine).strip("_")
    path = out_dir / f"local_similarity_{slug}_{dtype}_{mode}.png"
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--csv", type=Path, default=RESULTS / "local_similarity.csv")
    parser.add_argument("--out", type=Path, default=RESULTS / "plots")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cases = load_cases(args.csv)
    if not cases:
        raise SystemExit(f"{args.csv}: no square rows with status ok to plot")
    for key, providers in sorted(cases.items()):
        print(draw(key, providers, args.out))


if __name__ == "__main__":
    main()
