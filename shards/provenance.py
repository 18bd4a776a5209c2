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

# The arguments that change an IU-RR pack's bytes (not --workers, --ray, or --out).
CONTENT_ARGUMENTS = ("image_size", "samples_per_shard", "seed", "limit", "image_format", "quality")
# What a pack recorded before an argument existed meant: packs older than --format are PNG.
RECORDED_BEFORE = {"image_format": "png", "quality": None}


def content_sha256(path: str | Path, skip: Path | None = None) -> str:
    """sha256 of a file's content; of a folder, over its listing (relative path, size, modification
    time of every regular file): corpus folders hold up to terabytes, and each shard's own
    fingerprint covers the images it uses by content. Links are not followed (a dangling one is
    no error), and the folder `skip` (the pack's own --out, when it lies inside) is left out."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    inside = skip.resolve().relative_to(path.resolve()).parts if skip and skip.resolve().is_relative_to(
        path.resolve()) else None
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        if inside and file.relative_to(path).parts[:len(inside)] == inside:
            continue
        info = os.lstat(file)
        if stat.S_ISREG(info.st_mode):
            digest.update(f"{file.relative_to(path).as_posix()}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _source(path: str | Path | None, out: Path | None) -> dict | str | None:
    if path is None or path == "phantom":
        return path
    return {"path": str(path), "sha256": content_sha256(path, skip=out)}


def pack_inputs(sources: dict[str, str | Path | None], arguments: dict, out: Path | None = None) -> dict:
    """{input name: {path, sha256} | "phantom" | None, ..., "arguments": arguments}; `out`, the
    pack's own folder, never counts as an input even inside one."""
    return {**{name: _source(path, out) for name, path in sources.items()}, "arguments": dict(arguments)}


def _content(value):
    return value["sha256"] if isinstance(value, dict) else value


def differences(recorded: dict, wanted: dict) -> list[str]:
    """Readable lines, one per input or argument whose content differs (empty when none does)."""
    names = sorted((set(recorded) | set(wanted)) - {"arguments"})
    lines = [f"{name}: {_describe(recorded.get(name))} -> {_describe(wanted.get(name))}"
             for name in names if _content(recorded.get(name)) != _content(wanted.get(name))]
    old_args, new_args = {**RECORDED_BEFORE, **(recorded.get("arguments") or {})}, wanted.get("arguments") or {}
    lines += [f"{k}: {old_args.get(k)} -> {new_args.get(k)}" for k in sorted(set(old_args) | set(new_args))
              if old_args.get(k) != new_args.get(k)]
    return lines


def _describe(value) -> str:
    if isinstance(value, dict):
        return f"{value['path']} (sha256 {value['sha256'][:12]})"
    return str(value)
