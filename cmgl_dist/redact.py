"""Credentials in URLs are used, never recorded: `redact` takes the userinfo (`user:pw@`) out of
every URL in a text. Every file the project writes from a config (config.yaml in a run and in its
export, checkpoints' client.json) and every log line goes through it; the fetch itself still
uses the URL as given (shards/remote.py). A leaf: imported from anywhere."""
from __future__ import annotations

import re

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s'\"]*@")


def redact(text: str) -> str:
    """`text` with the userinfo of every URL in it replaced by `***` (`http://***@host/...`)."""
    return _USERINFO.sub(r"\1***@", text)


def redacted(value):
    """A JSON-like value (dicts, lists, strings) with every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redacted(v) for v in value]
    return value
