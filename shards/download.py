"""Locate Open-i's reports archive when `--reports` is not given, downloading it as a last resort.

Order: the copy inside an installed `torchxrayvision` (1.5.7 ships it), then a cached download,
then a fresh download from Open-i checked against a known sha256.
"""
from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from pathlib import Path

from cmgl_dist.atomic import atomic_path

log = logging.getLogger("cmgl.pack")

OPENI_REPORTS_URL = "https://openi.nlm.nih.gov/imgs/collections/NLMCXR_reports.tgz"
# sha256 of the archive torchxrayvision 1.5.7 ships (identical to the shared development copy);
# Open-i's file is expected to be the same bytes: a mismatch stops the download loudly.
OPENI_REPORTS_SHA256 = "8fb6de7eec73d8c3665067ad4bb003ccd57f971ae316d2642e1627ac7268667a"
CACHE_DIR = Path(os.environ.get("CMGL_CACHE", Path.home() / ".cache" / "cmgl"))


class ChecksumError(RuntimeError):
    pass


def fetch(url: str, dest: str | Path, sha256: str, chunk: int = 1 << 20) -> Path:
    """Download `url` to `dest` unless a file with the right sha256 is already there.

    Streams into a temporary file beside `dest`, checks the hash, then renames: `dest` only ever
    holds a complete, verified file.
    """
    dest = Path(dest)
    if dest.exists() and _sha256(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with atomic_path(dest, suffix=".part") as tmp:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            while block := response.read(chunk):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != sha256:
            raise ChecksumError(f"{url}: sha256 {digest.hexdigest()} != expected {sha256}")
    return dest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def packaged_file(name: str) -> Path | None:
    """`torchxrayvision/data/<name>` when torchxrayvision is installed."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("torchxrayvision")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / name
    return path if path.is_file() else None


def default_reports(url: str = OPENI_REPORTS_URL, sha256: str = OPENI_REPORTS_SHA256) -> Path:
    packaged = packaged_file("NLMCXR_reports.tgz")
    if packaged is not None:
        return packaged
    log.info("torchxrayvision not installed: downloading %s", url)
    return fetch(url, CACHE_DIR / "NLMCXR_reports.tgz", sha256)
