"""Append benchmark rows to a CSV, each stamped with the machine, the date and the commit.

Every script under `benchmarks/` records through `append_rows`, so numbers are never typed into
docs by hand and every row says where and when it was measured.
"""
from __future__ import annotations

import csv
import datetime as dt
import os
import platform
import subprocess
from pathlib import Path


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
    repo = repo or Path(__file__).resolve().parent.parent
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


def append_rows(csv_path: str | os.PathLike, rows: list[dict]) -> None:
    """Append rows (stamped) to csv_path, writing the header when the file is new.

    A file whose header differs from the rows' keys gets the rows under its own header
    (missing keys left empty), so adding a column never corrupts older rows.
    """
    if not rows:
        return
    path = Path(csv_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stamped = [{**stamp(), **row} for row in rows]
    fields = list(stamped[0].keys())
    if path.exists() and path.stat().st_size > 0:
        with open(path, newline="") as f:
            header = next(csv.reader(f), None)
        if header:
            fields = header + [k for k in fields if k not in header]
            if fields != header:
                raise ValueError(f"{path}: new columns {fields[len(header):]}; write to a new CSV instead")
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(stamped)
