"""The one benchmark harness: timing (warm-up, CUDA events, p20/p50/p80, peak memory) and results.

Every benchmark (the scripts under `benchmarks/` and `cmgl bench`) times through `measure` and
records through `append_results` (or `record_results`, which replaces the rows it supersedes), so
numbers are never typed into docs by hand and every row says where and when it was measured. All
results share one long format (`COLUMNS`): one row per (benchmark, config, metric), the config a
`key=value;...` string. `pivot` turns those rows back into one dict per measured case, for plots
and tables. A row is current unless a later row measured the same case (`case_key`: machine,
benchmark, config, metric) on the same machine; plots read `current_rows` only.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import math
import os
import platform
import resource
import subprocess
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from cmgl_dist.atomic import write_text_atomic

COLUMNS = ("machine", "date", "commit", "benchmark", "config", "metric", "value")


def machine_name() -> str:
    """GPU name when CUDA is present, else the CPU model and core count."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu} x{os.cpu_count()}"


def git_commit(repo: str | os.PathLike | None = None) -> str:
    """The short commit (with -dirty); where the code is a copy without git, CMGL_COMMIT (which
    the GPU check sets from the commit recorded beside its wheels), else "unknown"."""
    repo = repo or Path(__file__).resolve().parent.parent
    sha = _git_commit(repo)
    return (os.environ.get("CMGL_COMMIT") or sha) if sha == "unknown" else sha


def _git_commit(repo) -> str:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        # Rows appended to benchmarks/results by an earlier run do not make the code dirty.
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no",
                                "--", ".", ":!benchmarks/results"], capture_output=True, text=True, timeout=10)
        sha = out.stdout.strip() or "unknown"
        return sha + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def stamp() -> dict:
    return {
        "machine": machine_name(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(),
    }


# ---- timing ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Timing:
    """Milliseconds per call at the 20th, 50th and 80th percentile; peak extra memory in MB (NaN on CPU)."""
    p20_ms: float
    p50_ms: float
    p80_ms: float
    peak_mb: float = math.nan

    def metrics(self) -> dict:
        return {"p20_ms": self.p20_ms, "p50_ms": self.p50_ms, "p80_ms": self.p80_ms, "peak_extra_mb": self.peak_mb}


def percentiles(samples: list[float], qs: Iterable[float] = (0.2, 0.5, 0.8)) -> list[float]:
    """Linear-interpolated quantiles (numpy's default), without needing numpy or torch."""
    if not samples:
        raise ValueError("percentiles of no samples")
    ordered = sorted(samples)
    out = []
    for q in qs:
        pos = q * (len(ordered) - 1)
        low, high = math.floor(pos), math.ceil(pos)
        out.append(ordered[low] + (ordered[high] - ordered[low]) * (pos - low))
    return out


class Clock:
    """Start/stop timestamps: CUDA events on a CUDA device (no host sync until read), else wall clock."""

    def __init__(self, device=None):
        self.cuda = device is not None and getattr(device, "type", str(device)) == "cuda"

    def mark(self):
        if self.cuda:
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def elapsed_ms(self, start, end) -> float:
        """Milliseconds between two marks; on CUDA this waits for `end` to be reached."""
        if self.cuda:
            end.synchronize()
            return start.elapsed_time(end)
        return (end - start) * 1e3


def measure(fn: Callable[..., object], *, device=None, warmup: int = 2, reps: int = 10,
            setup: Optional[Callable[[], object]] = None) -> Timing:
    """Time `fn` over `reps` calls after `warmup` untimed ones.

    `setup` (optional) runs untimed before every call and its result is passed to `fn`, for work
    that must be fresh each time but is not what is measured (e.g. the forward before a timed
    backward). Peak memory is the CUDA allocator's peak above what was allocated at the start.
    """
    clock = Clock(device)
    cuda = clock.cuda
    if cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    samples = []
    for rep in range(warmup + reps):
        args = (setup(),) if setup is not None else ()
        start = clock.mark()
        fn(*args)
        end = clock.mark()
        if rep >= warmup:
            samples.append(clock.elapsed_ms(start, end))
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else math.nan
    return Timing(*percentiles(samples), peak_mb=peak)


def peak_rss_mb() -> float:
    """This process's peak resident set (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- results --------------------------------------------------------------------------------

def config_string(config: dict | str) -> str:
    """`{"T": 4, "dtype": "fp32"}` -> `T=4;dtype=fp32` (keys in the given order)."""
    if isinstance(config, str):
        return config
    for key, value in config.items():
        if any(c in f"{key}{value}" for c in ";="):
            raise ValueError(f"config {key}={value!r}: keys and values may not contain ';' or '='")
    return ";".join(f"{key}={value}" for key, value in config.items())


def parse_config(text: str) -> dict:
    return dict(item.split("=", 1) for item in text.split(";") if item)


def result_rows(benchmark: str, config: dict | str, metrics: dict) -> list[dict]:
    """Long rows (without the stamp) for one measured case: one per metric."""
    cfg = config_string(config)
    return [{"benchmark": benchmark, "config": cfg, "metric": name, "value": value} for name, value in metrics.items()]


def append_rows(csv_path: str | os.PathLike, rows: list[dict], stamp_with: Optional[dict] = None) -> None:
    """Append long-format rows to csv_path, each stamped (machine, date, commit) unless it has a stamp.

    The file is created with the `COLUMNS` header. A file with any other header is refused with a
    ValueError (convert it with `benchmarks/convert_results.py`), so rows are never written under
    the wrong columns.
    """
    if not rows:
        return
    path = Path(csv_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = stamp_with or stamp()
    stamped = [{**fresh, **row} for row in rows]
    for row in stamped:
        if set(row) != set(COLUMNS):
            raise ValueError(f"{path}: a result row needs exactly the columns {COLUMNS}, got {sorted(row)}")
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with open(path, newline="") as f:
            header = next(csv.reader(f), None)
        if tuple(header or ()) != COLUMNS:
            raise ValueError(f"{path}: header {header} is not the long format {COLUMNS}; convert it with "
                             "benchmarks/convert_results.py or write to a new file")
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerows(stamped)


def append_results(csv_path: str | os.PathLike, benchmark: str, config: dict | str, metrics: dict,
                   stamp_with: Optional[dict] = None) -> None:
    """Append one measured case: one long row per metric, all with the same stamp (this machine's,
    or `stamp_with` for figures measured elsewhere)."""
    append_rows(csv_path, result_rows(benchmark, config, metrics), stamp_with)


# Config keys that say how a run went, not what it measured: a later row of the same case
# supersedes an earlier one whatever they say (an "ok" re-run replaces an "oom").
OUTCOME_KEYS = ("status", "rc")


def case_key(row: dict) -> tuple:
    """(machine, benchmark, config without its outcome keys, metric): what a newer row replaces."""
    config = {k: v for k, v in parse_config(row["config"]).items() if k not in OUTCOME_KEYS}
    return row["machine"], row["benchmark"], config_string(config), row["metric"]


def current_rows(rows: Iterable[dict]) -> list[dict]:
    """The rows no later row supersedes (latest date per `case_key`; on a tie the later in the
    file), in file order."""
    rows = list(rows)
    latest: dict = {}
    for index, row in enumerate(rows):
        key = case_key(row)
        if key not in latest or row["date"] >= rows[latest[key]]["date"]:
            latest[key] = index
    keep = set(latest.values())
    return [row for index, row in enumerate(rows) if index in keep]


def update_rows(csv_path: str | os.PathLike, rows: list[dict], stamp_with: Optional[dict] = None) -> None:
    """Write `rows` (stamped as `append_rows` does) into csv_path, replacing the rows of the same
    cases (`case_key`), as Liger-Kernel's update_benchmark_data_csv does; one atomic rewrite."""
    if not rows:
        return
    path = Path(csv_path)
    fresh = stamp_with or stamp()
    stamped = [{**fresh, **row} for row in rows]
    kept, newline = [], "\r\n"  # csv's own line ending, as append_rows writes
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            newline = "\r\n" if f.readline().endswith(b"\r\n") else "\n"  # the file's own, for small diffs
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != COLUMNS:
                raise ValueError(f"{path}: header {reader.fieldnames} is not the long format {COLUMNS}; convert it "
                                 "with benchmarks/convert_results.py or write to a new file")
            replaced = {case_key(row) for row in stamped}
            kept = [row for row in reader if case_key(row) not in replaced]
    for row in stamped:
        if set(row) != set(COLUMNS):
            raise ValueError(f"{path}: a result row needs exactly the columns {COLUMNS}, got {sorted(row)}")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator=newline)
    writer.writeheader()
    writer.writerows(kept + stamped)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text.getvalue())


def record_results(csv_path: str | os.PathLike, benchmark: str, config: dict | str, metrics: dict,
                   stamp_with: Optional[dict] = None) -> None:
    """`append_results`, replacing the earlier rows of the same case on the same machine."""
    update_rows(csv_path, result_rows(benchmark, config, metrics), stamp_with)


def read_rows(csv_path: str | os.PathLike) -> list[dict]:
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


def pivot(rows: Iterable[dict], benchmark: Optional[str] = None) -> list[dict]:
    """Long rows -> one dict per (machine, date, commit, benchmark, config) holding the stamp, the
    config's keys and every metric's value (floats where they parse), in file order."""
    cases: OrderedDict = OrderedDict()
    for row in rows:
        if benchmark is not None and row["benchmark"] != benchmark:
            continue
        key = tuple(row[c] for c in COLUMNS[:5])
        if key not in cases:
            cases[key] = {**{c: row[c] for c in COLUMNS[:4]}, **parse_config(row["config"])}
        cases[key][row["metric"]] = _number(row["value"])
    return list(cases.values())


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return text
