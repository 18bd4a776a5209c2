"""PhaseTimer: the exclusive time of every named phase of a step (see `cmgl_dist.phases`).

Each phase is bracketed by two clock marks (CUDA events on a GPU, read once per step; wall clock
on CPU). DeepSpeed's comms logger, on while benchmarking, waits for each of its collectives to
finish, so those are timed exactly and the gradient reduction does not overlap backward here. A phase's exclusive time is its span minus its children's spans
minus the DeepSpeed collectives that ran inside it and not inside a child: those become their own
phase (`gradient_reduction` inside backward and the optimizer step, `zero_param_gather` in the
forward under ZeRO-3). The top-level phases and those collectives partition the step; what no
phase covers is reported as `unattributed`.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Optional

from cmgl_dist.bench.harness import Clock

GRADIENT_PHASES = ("backward", "optimizer_step")
COLLECTIVE_PHASES = ("feature_all_gather", "local_exchange", "loss_all_reduce", "gradient_reduction", "zero_param_gather")


class DeepSpeedComms:
    """Running totals of DeepSpeed's collectives, from its comms logger: ms and bytes so far.

    The logger keeps one timer per op name, whose records grow with every call; each read takes
    the new records and clears them (`elapsed(reset=True)`), so a read costs what happened since
    the last one. (The logger's own latency lists are running sums of those timers; not used.)
    """

    def __init__(self):
        self._ms = 0.0

    def ms(self) -> float:
        from deepspeed.comm import comm as ds_comm

        self._ms += sum(ds_comm.timers(name).elapsed(reset=True) for name in ds_comm.comms_logger.comms_dict)
        return self._ms

    @staticmethod
    def bytes() -> int:
        from deepspeed.comm import comm as ds_comm

        records = ds_comm.comms_logger.comms_dict
        return sum(size * entry[0] for by_size in records.values() for size, entry in by_size.items())


def enable_deepspeed_comm_logging() -> None:
    import deepspeed.comm as ds_comm

    ds_comm.configure(enabled=True, prof_all=True, verbose=False)


@dataclass
class _Span:
    name: str
    start: object
    comm_start: float
    end: object = None
    comm_ms: float = 0.0
    children: list = field(default_factory=list)


class PhaseTimer:
    def __init__(self, device=None, comm_ms: Optional[Callable[[], float]] = None, clock: Optional[Clock] = None):
        self.clock = clock or Clock(device)
        self.comm_ms = comm_ms or (lambda: 0.0)
        self._stack: list[_Span] = []
        self.steps: list[dict[str, float]] = []

    # ---- the Profiler protocol of cmgl_dist.phases ----
    def enter(self, name: str) -> None:
        span = _Span(name, self.clock.mark(), self.comm_ms())
        if self._stack:
            self._stack[-1].children.append(span)
        self._stack.append(span)

    def exit(self, name: str) -> None:
        span = self._stack.pop()
        if span.name != name:
            raise RuntimeError(f"phase {name!r} closed while {span.name!r} was open")
        span.end = self.clock.mark()
        span.comm_ms = self.comm_ms() - span.comm_start

    # ---- steps ----
    def begin_step(self) -> None:
        if self._stack:
            raise RuntimeError(f"a step began inside phase {self._stack[-1].name!r}")
        self.enter("step")
        self._root = self._stack[0]

    def end_step(self) -> dict[str, float]:
        """Close the step: {phase: exclusive ms} with `step` (the whole) and `unattributed`."""
        self.exit("step")
        root = self._root
        phases: dict[str, float] = defaultdict(float)
        for child in root.children:
            self._exclusive(child, phases)
        step_ms = self.clock.elapsed_ms(root.start, root.end)
        covered = sum(phases.values())
        record = {**phases, "unattributed": step_ms - covered, "step": step_ms}
        self.steps.append(record)
        return record

    def _exclusive(self, span: _Span, out: dict[str, float]) -> None:
        total = self.clock.elapsed_ms(span.start, span.end)
        children_ms = sum(self.clock.elapsed_ms(c.start, c.end) for c in span.children)
        own_comm = span.comm_ms - sum(c.comm_ms for c in span.children)
        comm_phase = "gradient_reduction" if span.name in GRADIENT_PHASES else "zero_param_gather"
        if own_comm > 0:
            out[comm_phase] += own_comm
        out[span.name] += total - children_ms - max(own_comm, 0.0)
        for child in span.children:
            self._exclusive(child, out)
