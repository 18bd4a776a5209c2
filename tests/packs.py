"""Reading a packed folder back in tests: every sample's JSON members, by key."""
from __future__ import annotations

import json
import signal
import subprocess
import tarfile
import time
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


def kill_after_some_shards(command: list[str], out: Path, shards: int, timeout: float = 60.0) -> None:
    """Run a `cmgl pack` command and SIGKILL it once `out` holds `shards` finished shards."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while len(list(out.glob("*.tar"))) < shards:
            assert process.poll() is None, "the pack finished before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
