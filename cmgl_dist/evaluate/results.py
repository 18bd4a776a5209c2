"""results.jsonl: one JSON record per finished job, appended as each job ends.

A line is written whole (one write, flush, fsync), so a killed sweep leaves at most one partial
last line; `repair` cuts it off before the next append, and `read_records` never returns it.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

from cmgl_dist.untrusted import json_loads

log = logging.getLogger(__name__)


def repair(path: Path) -> None:
    """Truncate a partial last line (a write cut short by a kill)."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        log.warning("%s: dropping a partial last line (%d bytes) from an interrupted run", path, len(data) - keep)
        with open(path, "r+b") as f:
            f.truncate(keep)


def append_record(path: Path, record: dict) -> None:
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    with open(path, "ab") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_records(path: Path) -> list[dict]:
    """Every newline-terminated record; a malformed or unterminated line is skipped and logged."""
    if not path.is_file():
        return []
    lines = path.read_bytes().split(b"\n")
    if lines.pop():  # text after the last newline: a write cut short
        log.warning("%s: ignoring an unterminated last line", path)
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json_loads(line))
        except ValueError:  # not JSON, not UTF-8, nested too deeply
            log.warning("%s:%d is not a complete JSON record; skipped", path, number)
    return records


def for_inputs(records: list[dict], keys: dict[str, Optional[str]]) -> list[dict]:
    """The records of the jobs in `keys` made for the inputs named by each job's key (see
    evaluate/context.py); records of other inputs (another split, shards, export) are left out."""
    return [r for r in records if r.get("job_id") in keys and r.get("inputs_key") == keys[r["job_id"]]]


def completed_ids(records: list[dict]) -> set[str]:
    return {r["job_id"] for r in records if r.get("status") == "ok"}


def latest_per_job(records: list[dict]) -> list[dict]:
    """The last record of each job (a rerun's success supersedes an earlier failure)."""
    return list({r["job_id"]: r for r in records}.values())
