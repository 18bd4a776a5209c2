"""Sample keys: a report id becomes a shard member prefix (`{key}.frontal.png`) only when it is safe.

A safe key is 1-64 ASCII letters, digits, `_` or `-`: no dot (WebDataset splits the key at the
first one), no path separator, no control character, nothing that a tar header would truncate.
Anything else is refused with the reason, and the packer counts it as a skip.
"""
from __future__ import annotations

import re

MAX_KEY_LENGTH = 64
_SAFE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def key_problem(key: str) -> str | None:
    """None for a safe key, else why it is not one."""
    if not key:
        return "empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"longer than {MAX_KEY_LENGTH} characters ({len(key)})"
    if not _SAFE_KEY.fullmatch(key):
        return f"{key!r} has characters other than letters, digits, '_' and '-'"
    return None
