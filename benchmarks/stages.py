"""Where a sample's time goes: wall time summed per named stage, in one process, as CSV metrics.

The sum of the stages over a set of images is the in-process floor of a pipeline on one core
(no worker start-up, no inter-process copies); a pool's per-worker rate is compared against it.
The machine's 1-minute load average goes with every row: on a shared machine other jobs slow
every stage alike, and the figure says by how much to distrust it.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections import defaultdict


class Stages:
    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def time(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def metrics(self, samples: int, unit: str = "sample") -> dict:
        """`<stage>_ms_per_<unit>` for every stage, and `floor_<unit>s_per_s` over their sum."""
        out = {f"{name}_ms_per_{unit}": round(seconds / samples * 1e3, 3) for name, seconds in self.seconds.items()}
        out[f"floor_{unit}s_per_s"] = round(samples / sum(self.seconds.values()), 1)
        return out


def load_average() -> float:
    """The 1-minute load average (runnable processes; above the core count, jobs wait for a core)."""
    return round(os.getloadavg()[0], 2)
