"""Shard URLs for a split, and how many samples they hold (from the packer's manifest.json)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import braceexpand

from cmgl_dist.shards.schema import MANIFEST, SPLITS

# `pipe:cmd`, `http://...`, `s3://...`: opened by webdataset's gopen, never touched here.
_PASSTHROUGH_PREFIXES = ("pipe:", "http://", "https://", "gs://", "s3://", "ais://")


def is_passthrough(url: str) -> bool:
    return url.startswith(_PASSTHROUGH_PREFIXES)


def shard_urls(shards: str, split: str) -> list[str]:
    """The shard URLs of `split`.

    A folder holding manifest.json gives that split's shards in manifest order; a brace pattern
    (`/data/train-{000000..000009}.tar`) is expanded; `pipe:` and remote URLs are passed through
    unchanged (webdataset opens them). `split` only selects from a manifest.
    """
    if not shards:
        raise ValueError("data.shards is empty: set it to a folder written by `cmgl pack` or a shard URL pattern")
    if is_passthrough(shards):
        return list(braceexpand.braceexpand(shards))
    folder = Path(shards)
    if folder.is_dir():
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {SPLITS}")
        manifest = read_manifest(str(folder))
        urls = [str(folder / entry["name"]) for entry in manifest["shards"] if entry["split"] == split]
        if not urls:
            raise ValueError(f"{folder / MANIFEST} lists no {split!r} shards")
        return urls
    urls = list(braceexpand.braceexpand(shards))
    missing = [u for u in urls if not os.path.exists(u)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(urls)} shards from {shards!r} do not exist (first: {missing[0]}); "
            "give a folder with manifest.json, existing shard paths, or a pipe:/remote URL")
    return urls


def read_manifest(folder: str) -> dict:
    path = Path(folder) / MANIFEST
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder} has no {MANIFEST}: pack it with `cmgl pack` first") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    for entry in manifest.get("shards", ()):
        if not {"name", "split", "samples"} <= entry.keys():
            raise ValueError(f"{path}: shard entry {entry} lacks name, split or samples")
    return manifest


def shard_sample_counts(urls: Sequence[str]) -> Optional[list[int]]:
    """Samples in each shard, from the manifest.json beside local shards; None if any is unknown."""
    counts_by_folder: dict[Path, dict[str, int]] = {}
    counts = []
    for url in urls:
        if is_passthrough(url):
            return None
        path = Path(url)
        if path.parent not in counts_by_folder:
            try:
                manifest = read_manifest(str(path.parent))
            except FileNotFoundError:
                return None
            counts_by_folder[path.parent] = {entry["name"]: int(entry["samples"]) for entry in manifest["shards"]}
        if path.name not in counts_by_folder[path.parent]:
            return None
        counts.append(counts_by_folder[path.parent][path.name])
    return counts
