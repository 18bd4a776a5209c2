"""The bytes of the local shards a run reads, checked against their manifest before a resume.

A pack's fingerprint (`shards_fingerprint`) is computed from its manifest, so a shard replaced in
place (same name, other bytes) would leave it unchanged. So when a run starts, rank 0 records the
size and modification time of every local shard it will read, with the manifest's sha256
(`RUN_DIR/shards_seen.json`); when it resumes, every rank compares each shard with that record and
hashes the ones whose size or time changed (or that it has not seen): a shard whose sha256 is no
longer its manifest's refuses the resume, naming it. Nothing is hashed while the shards are
untouched. Remote shards are not checked here (their bytes are the server's; `cmgl verify URL`
reads them all).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

from cmgl_dist.atomic import write_text_atomic
from cmgl_dist.data.shardlist import is_passthrough
from cmgl_dist.shards.manifest import read_manifest
from cmgl_dist.untrusted import json_loads

SEEN = "shards_seen.json"


class ShardChanged(ValueError):
    """A local shard's bytes are no longer those its manifest lists."""


def _listed(urls: Sequence[str]) -> dict[str, str]:
    """path -> the manifest's sha256, for every local shard whose folder has a manifest listing it."""
    by_folder: dict[Path, dict[str, str]] = {}
    listed = {}
    for url in urls:
        if is_passthrough(url):
            continue
        path = Path(url)
        if path.parent not in by_folder:
            try:
                entries = read_manifest(str(path.parent))["shards"]
            except (FileNotFoundError, ValueError):
                entries = []
            by_folder[path.parent] = {e["name"]: e.get("sha256") for e in entries}
        if by_folder[path.parent].get(path.name):
            listed[str(path)] = by_folder[path.parent][path.name]
    return listed


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamp(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _read_seen(run_dir: Path) -> dict:
    try:
        seen = json_loads((run_dir / SEEN).read_bytes())
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return {}
    return seen if isinstance(seen, dict) else {}


def check_unchanged(urls: Sequence[str], run_dir: Path, resuming: bool, record: bool) -> None:
    """On a resume, ShardChanged naming the first local shard whose bytes differ from its manifest's
    sha256 (only shards whose size or time changed since they were recorded are hashed). With
    `record` (rank 0), write the record of what was checked, for the next resume."""
    listed = _listed(urls)
    seen = _read_seen(run_dir)
    now = {}
    for path, sha256 in listed.items():
        if not os.path.exists(path):
            continue  # a missing shard is data.on_missing_shard's to handle
        stamp = _stamp(path)
        known = seen.get(path)
        if resuming and not (isinstance(known, dict) and known.get("stamp") == stamp and known.get("sha256") == sha256):
            if _sha256(path) != sha256:
                raise ShardChanged(f"{path} was replaced since the run started: its sha256 is not the one its "
                                   "manifest lists. Repack, or train on the pack the checkpoint was trained on")
        now[path] = {"stamp": stamp, "sha256": sha256}
    if record:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / SEEN, json.dumps(now, indent=1))
