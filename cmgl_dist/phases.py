"""Named phases of a training step, timed only while a profiler is installed (`cmgl bench step`).

The loop, the model and the loss mark their phases with `with phase("backward"):`; in a normal
run no profiler is installed and `phase` costs one global lookup. Phases nest (the feature
all-gather inside the global loss, the all-gather's backward inside backward); the profiler
keeps each phase's exclusive time, so the phases of a step partition it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional, Protocol


class Profiler(Protocol):
    def enter(self, name: str) -> None: ...
    def exit(self, name: str) -> None: ...


_profiler: Optional[Profiler] = None


@contextmanager
def phase(name: str) -> Iterator[None]:
    profiler = _profiler
    if profiler is None:
        yield
        return
    profiler.enter(name)
    try:
        yield
    finally:
        profiler.exit(name)


@contextmanager
def installed(profiler: Profiler) -> Iterator[Profiler]:
    """Route every `phase` to `profiler` inside the block (one at a time)."""
    global _profiler
    if _profiler is not None:
        raise RuntimeError("a phase profiler is already installed")
    _profiler = profiler
    try:
        yield profiler
    finally:
        _profiler = None
