"""One CSV row of training throughput from a run's metrics.jsonl (the GPU check's end-to-end stage).

The first logged window (start-up, compilation, `auto`'s timing) is left out of the steady
figures; samples/s is the median of the other windows, GPU busy their median pynvml reading. With
the run's wall time (`--wall-s`), the rest of it is reported on its own: `steady_s`, the seconds
the steady windows took, and `startup_s`, everything else (process and loader start-up, the first
window's compiling and tuning, the kill), so a window too short to leave start-up behind shows.

    python benchmarks/e2e_summary.py --name triton --metrics RUN/metrics.jsonl [--rc 124] [--wall-s 55] --csv OUT.csv
    python benchmarks/e2e_summary.py --name reference --metrics H200.jsonl --stamp "NVIDIA H200" 2026-11-28 238607c
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from cmgl_dist.bench.harness import record_results


def read_windows(path: Path) -> list[dict]:
    """The logged windows with a throughput; a torn last line (a run cut by its timeout) is skipped."""
    windows = []
    if not path.is_file():
        return windows
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "samples_per_s" in record:
            windows.append(record)
    return windows


def steady_seconds(windows: list[dict]) -> float:
    """Seconds the windows after the first took: each window's step time over its steps."""
    return sum(w["step_time_s"] * (w["step"] - before["step"]) for before, w in zip(windows, windows[1:])
               if "step_time_s" in w)


def summary_row(name: str, windows: list[dict], rc: int | None, wall_s: float | None = None) -> dict:
    steady = windows[1:]
    median = lambda key: round(statistics.median(w[key] for w in steady), 3) if steady and all(  # noqa: E731
        key in w for w in steady) else float("nan")
    return {"run": name, "rc": "" if rc is None else rc, "windows": len(windows),
            "last_step": windows[-1]["step"] if windows else 0,
            "samples_per_s_p50": median("samples_per_s"),
            "samples_per_s_max": round(max((w["samples_per_s"] for w in steady), default=float("nan")), 1),
            "step_time_s_p50": median("step_time_s"), "gpu_util_pct_p50": median("gpu_util_pct"),
            "peak_mem_mb": round(max((w.get("peak_mem_mb", float("nan")) for w in windows), default=float("nan")), 1),
            "loss_local_last": round(windows[-1].get("loss_local", float("nan")), 4) if windows else float("nan"),
            "steady_s": round(steady_seconds(windows), 2),
            "startup_s": float("nan") if wall_s is None else round(wall_s - steady_seconds(windows), 2)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True)
    parser.add_argument("--metrics", required=True, type=Path)
    parser.add_argument("--rc", type=int, help="the run's exit status (124: cut by its time limit)")
    parser.add_argument("--wall-s", type=float, help="the run's wall time in seconds, launch to exit")
    parser.add_argument("--stamp", nargs=3, metavar=("MACHINE", "DATE", "COMMIT"),
                        help="rows measured elsewhere: their machine, date and commit")
    parser.add_argument("--csv", default=str(Path(__file__).parent / "results" / "e2e_throughput.csv"))
    args = parser.parse_args(argv)
    row = summary_row(args.name, read_windows(args.metrics), args.rc, args.wall_s)
    stamp = dict(zip(("machine", "date", "commit"), args.stamp)) if args.stamp else None
    config = {key: row.pop(key) for key in ("run", "rc")}
    record_results(args.csv, "e2e_throughput", config, row, stamp_with=stamp)
    print(json.dumps({**config, **row}))


if __name__ == "__main__":
    main()
