"""`<run_dir>/samples.jsonl` (train.record_samples): the sample keys of every optimizer step, per rank.

One line per rank per step, `{"step": s, "rank": r, "keys": [...]}`, in step order. Rank 0 is the
file's one writer: the other ranks' keys reach it by one gather per step, so the file needs no
merge and no cross-process locking. A step's lines go out in one append of whole lines after the
step, so a kill leaves at most one torn last line; at start-up the file is cut back to the step the
run resumes from (`telemetry.truncate_jsonl_after`, as metrics.jsonl is), so it always holds exactly
the steps of the run's own trajectory, each once: an audit of which samples trained the weights.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch.distributed as dist

from cmgl_dist.engine.telemetry import truncate_jsonl_after

SAMPLES = "samples.jsonl"


class SampleLog:
    def __init__(self, run_dir: Path, rank: int, start_step: int):
        self.path = Path(run_dir) / SAMPLES
        self.rank = rank
        if rank == 0:
            truncate_jsonl_after(self.path, start_step)

    def record(self, step: int, keys: list[str]) -> None:
        """Collective: every rank passes the keys it trained on in `step`."""
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, keys)
        if self.rank != 0:
            return
        lines = "".join(json.dumps({"step": step, "rank": r, "keys": k}) + "\n" for r, k in enumerate(gathered))
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, lines.encode())
        finally:
            os.close(fd)
