"""Sample keys: a report id becomes a shard member prefix (`{key}.frontal.png`) only when it is safe.

A safe key is 1-64 ASCII letters, digits, `_` or `-`: no dot (WebDataset splits the key at the
first one), no path separator, no control character, nothing that a tar header would truncate.
IU-RR report ids that are not safe are refused with the reason (a counted skip); the other
corpora map their ids to safe keys with `safe_key`.
"""
from __future__ import annotations

import hashlib
import re

MAX_KEY_LENGTH = 64
_SAFE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9_-]")


def key_problem(key: str) -> str | None:
    """None for a safe key, else why it is not one."""
    if not key:
        return "empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"longer than {MAX_KEY_LENGTH} characters ({len(key)})"
    if not _SAFE_KEY.fullmatch(key):
        return f"{key!r} has characters other than letters, digits, '_' and '-'"
    return None


def safe_key(text: str) -> str:
    """`text` as a safe key: every other character becomes `_`; a text that would be longer than
    the limit keeps its start and ends with 16 hex digits of its sha256, so distinct long ids
    stay distinct."""
    key = _UNSAFE_CHARACTERS.sub("_", text) or "_"
    if len(key) <= MAX_KEY_LENGTH:
        return key
    return key[:MAX_KEY_LENGTH - 17] + "_" + hashlib.sha256(text.encode()).hexdigest()[:16]
