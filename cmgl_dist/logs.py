"""Logging for every `cmgl` command, set up once at the top of each `main`.

Diagnostics go through `logging` (one logger per module) to stderr; what a command is asked for
(tables, `cmgl verify`'s verdict, `--dry-run`'s config) stays on stdout, where users pipe it.
In a distributed run every rank logs, rank 0 at INFO and the others at WARNING only, so a
multi-rank log reads like a one-rank log plus whatever went wrong elsewhere.
"""
from __future__ import annotations

import logging
import sys
from typing import Optional

from cmgl_dist.redact import redact


class _Redacting(logging.Formatter):
    """Takes the userinfo out of every URL in a line (`shards/remote.py`): a password given in a
    shard URL is used to fetch, never logged."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _StderrHandler(logging.StreamHandler):
    """Writes to the current sys.stderr, looked up at each record (test runners swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # StreamHandler.__init__ assigns one; the property wins
        pass


def init_logger(rank: Optional[int] = None) -> None:
    """Configure the root logger: INFO on rank 0 (or a single process, rank None), WARNING elsewhere.

    Calling it again replaces the handler it installed; handlers others installed stay."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    where = "" if rank is None else f"[rank {rank}] "
    handler = _StderrHandler()
    handler.setFormatter(_Redacting(f"%(asctime)s {where}%(name)s %(levelname)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO if not rank else logging.WARNING)
