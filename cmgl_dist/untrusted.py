"""JSON and YAML from outside the process (manifests, shard members, claims, configs, --set values,
results files) parsed with bounded recursion: input nested deeper than the parser can follow is a
ValueError like any other malformed text, never a RecursionError."""
from __future__ import annotations

import json

import yaml


class TooDeep(ValueError):
    """Nested deeper than the parser's recursion allows."""


def json_loads(text: str | bytes):
    """json.loads; TooDeep (a ValueError) for nesting past Python's recursion limit."""
    try:
        return json.loads(text)
    except RecursionError:
        raise TooDeep("JSON nested too deeply to parse") from None


def yaml_load(stream):
    """yaml.safe_load; TooDeep (a ValueError) for nesting past Python's recursion limit."""
    try:
        return yaml.safe_load(stream)
    except RecursionError:
        raise TooDeep("YAML nested too deeply to parse") from None
