"""`cmgl bench`: profiling and planning benchmarks over the real training engine.

    cmgl bench step     where a step's time goes, phase by phase (step.py)
    cmgl bench zero     ZeRO stages 0-3 and optimizer offload: time, memory, bytes (zero.py)
    cmgl bench scaling  a weak-scaling model to 512 GPUs, checked on 1 vs 2 ranks (scaling.py)
    cmgl bench gpu      the GPU check: CUDA tests, kernel benchmark, recipe throughput (gpu.py)
"""
from __future__ import annotations

import importlib
import sys
from typing import Optional

from cmgl_dist.logs import init_logger

SUBCOMMANDS = {"step": "cmgl_dist.bench.step", "zero": "cmgl_dist.bench.zero", "scaling": "cmgl_dist.bench.scaling",
               "gpu": "cmgl_dist.bench.gpu"}


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    init_logger()
    if not argv or argv[0] not in SUBCOMMANDS:
        print(f"usage: cmgl bench {{{','.join(SUBCOMMANDS)}}} [args] (--help for each)\n\n{__doc__}", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    return int(importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:]) or 0)
