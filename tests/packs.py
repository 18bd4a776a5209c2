"""Reading a packed folder back in tests: every sample's JSON members, by key."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path


def read_pack(folder: Path) -> dict[str, dict]:
    """key -> {member ('labels.json', 'meta.json', 'report.json'): parsed JSON, 'split': the shard's split}."""
    manifest = json.loads((folder / "manifest.json").read_text())
    out = {}
    for shard in manifest["shards"]:
        with tarfile.open(folder / shard["name"]) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if ext.endswith(".json"):
                    out.setdefault(key, {"split": shard["split"]})[ext] = json.loads(tar.extractfile(member).read())
    return out
