"""What a pack was made from: its inputs by content (sha256) and the arguments that shape its bytes.

Recorded in `DIR/.cmgl-pack.json` when a pack starts and in `manifest.json` when it ends. A rerun
into the same folder compares the two: equal inputs resume (finished shards are kept), other
inputs are refused with the differences unless the caller asks to replace the pack. Paths are
recorded but not compared: moving an input does not change what it holds.
"""
from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from cmgl_dist.shards.writer import sha256_file

# The arguments that change a pack's bytes (not --workers, not --out).
CONTENT_ARGUMENTS = ("image_size", "samples_per_shard", "seed", "limit")


def content_sha256(path: str | Path) -> str:
    """sha256 of a file; of a folder, over (relative path, sha256) of every regular file in it."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        if stat.S_ISREG(os.stat(file).st_mode):
            digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def _source(path: str | Path | None) -> dict | None:
    return None if path is None else {"path": str(path), "sha256": content_sha256(path)}


def pack_inputs(*, reports: str | Path, images: str, metadata: str | Path | None, arguments: dict) -> dict:
    return {"reports": _source(reports), "metadata": _source(metadata),
            "images": "phantom" if images == "phantom" else _source(images),
            "arguments": {k: arguments[k] for k in CONTENT_ARGUMENTS}}


def _content(value):
    return value["sha256"] if isinstance(value, dict) else value


def differences(recorded: dict, wanted: dict) -> list[str]:
    """Readable lines, one per input or argument whose content differs (empty when none does)."""
    lines = []
    for name in ("reports", "metadata", "images"):
        before, after = recorded.get(name), wanted.get(name)
        if _content(before) != _content(after):
            lines.append(f"{name}: {_describe(before)} -> {_describe(after)}")
    old_args, new_args = recorded.get("arguments", {}), wanted["arguments"]
    lines += [f"{k}: {old_args.get(k)} -> {new_args[k]}" for k in CONTENT_ARGUMENTS if old_args.get(k) != new_args[k]]
    return lines


def _describe(value) -> str:
    if isinstance(value, dict):
        return f"{value['path']} (sha256 {value['sha256'][:12]})"
    return str(value)
