"""Shard URLs for a split, and how many samples they hold (from the packer's manifest.json, read
from a local folder or fetched from a remote pack: `shards/location.py`)."""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import braceexpand

from cmgl_dist.shards.location import RemoteError, is_remote_pack, manifest_url_of, pack_file, remote_manifest
from cmgl_dist.shards.manifest import manifest_sha256, pack_sha256, read_manifest
from cmgl_dist.shards.schema import MANIFEST, SPLITS

log = logging.getLogger(__name__)

# `pipe:cmd`, `http://...`, `s3://...`: opened by webdataset's gopen, never touched here.
ALL_SPLITS = "all"
_PASSTHROUGH_PREFIXES = ("pipe:", "http://", "https://", "gs://", "s3://", "ais://")


def is_passthrough(url: str) -> bool:
    return url.startswith(_PASSTHROUGH_PREFIXES)


def shard_urls(shards: str, split: str) -> list[str]:
    """The shard URLs of `split`.

    A folder holding manifest.json, or a remote pack (an http(s) folder URL, a `pipe:` template
    with `{name}`; its manifest fetched from the same place), gives that split's shards in
    manifest order; a brace pattern (`/data/train-{000000..000009}.tar`) is expanded; `pipe:` and
    remote shard URLs are passed through unchanged (webdataset opens them). `split` only selects
    from a manifest; `all` (evaluation of an external corpus) takes every split's shards.
    """
    if not shards:
        raise ValueError("data.shards is empty: set it to a folder written by `cmgl pack` or a shard URL pattern")
    if is_remote_pack(shards):
        return _split_urls(pack_manifest(shards), split, lambda name: pack_file(shards, name),
                           pack_file(shards, MANIFEST))
    if is_passthrough(shards):
        return list(braceexpand.braceexpand(shards))
    folder = Path(shards)
    if folder.is_dir():
        return _split_urls(read_manifest(str(folder)), split, lambda name: str(folder / name), folder / MANIFEST)
    urls = list(braceexpand.braceexpand(shards))
    missing = [u for u in urls if not os.path.exists(u)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(urls)} shards from {shards!r} do not exist (first: {missing[0]}); "
            "give a folder with manifest.json, existing shard paths, or a pipe:/remote URL")
    return urls


def _split_urls(manifest: dict, split: str, url_of, where) -> list[str]:
    if split not in SPLITS + (ALL_SPLITS,):
        raise ValueError(f"split {split!r} is not one of {SPLITS + (ALL_SPLITS,)}")
    urls = [url_of(entry["name"]) for entry in manifest["shards"] if split in (entry["split"], ALL_SPLITS)]
    if not urls:
        raise ValueError(f"{where} lists no {split!r} shards")
    return urls


def pack_manifest(shards: str) -> dict:
    """The manifest of a local folder or a remote pack."""
    return remote_manifest(pack_file(shards, MANIFEST)) if is_remote_pack(shards) else read_manifest(shards)


def _remote_counts(urls: Sequence[str]) -> Optional[list[int]]:
    """Samples in each remote shard, from the manifest.json in the same place; None if any is unknown."""
    manifests: dict[str, dict[str, int]] = {}
    counts = []
    for url in urls:
        found = manifest_url_of(url)
        if found is None:
            return None
        where, name = found
        if where not in manifests:
            try:
                manifests[where] = {e["name"]: int(e["samples"]) for e in remote_manifest(where)["shards"]}
            except (RemoteError, ValueError) as e:
                log.warning("no sample counts for %s: %s", url, e)
                return None
        if name not in manifests[where]:
            return None
        counts.append(manifests[where][name])
    return counts


def shard_sample_counts(urls: Sequence[str]) -> Optional[list[int]]:
    """Samples in each shard, from the manifest.json beside local shards or in the same place as
    remote ones; None if any is unknown."""
    if any(is_passthrough(url) for url in urls):
        return _remote_counts(urls)
    counts_by_folder: dict[Path, dict[str, int]] = {}
    counts = []
    for url in urls:
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


def shards_fingerprint(shards: str) -> str:
    """Content id of `shards` for keying cached results: the pack's content fingerprint for a packed
    folder or remote pack (`pack_sha256`: its shards' names and sha256s); for a pattern of local files without one, their names, sizes and modification times;
    for remote shard URLs only the URLs (a remote pack that changes in place is not detected)."""
    if is_remote_pack(shards):
        return manifest_sha256(pack_manifest(shards))[:16]
    if not is_passthrough(shards) and Path(shards).is_dir():
        return pack_sha256(shards)[:16]
    urls = list(braceexpand.braceexpand(shards))
    parts = [u if is_passthrough(u) or not os.path.exists(u) else f"{u}:{os.stat(u).st_size}:{os.stat(u).st_mtime_ns}"
             for u in urls]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Mixture:
    """Training shards of one or more corpora, each with its weight (`data.sources`)."""
    parts: tuple[tuple[tuple[str, ...], float], ...]  # (shard URLs, weight)

    @classmethod
    def single(cls, urls: Sequence[str]) -> "Mixture":
        return cls(((tuple(urls), 1.0),))

    @property
    def urls(self) -> list[str]:
        return [url for urls, _ in self.parts for url in urls]


def source_folders(data_cfg) -> list[tuple[str, float]]:
    """(shards, weight) of every corpus a training run reads: data.sources, else data.shards."""
    return [(s.shards, s.weight) for s in data_cfg.sources] or [(data_cfg.shards, 1.0)]


def training_mixture(data_cfg, split: str = "train") -> Mixture:
    return Mixture(tuple((tuple(shard_urls(shards, split)), weight) for shards, weight in source_folders(data_cfg)))


def samples_without_text(shards: str, split: str) -> int:
    """Samples of `split` that have no report (a label-only pack's manifest counts them; IU-RR has none)."""
    if not is_remote_pack(shards) and (is_passthrough(shards) or not Path(shards).is_dir()):
        return 0
    manifest = pack_manifest(shards)
    with_text = manifest.get("samples_with_text")
    splits = SPLITS if split == ALL_SPLITS else (split,)
    return 0 if with_text is None else sum(manifest["splits"][s]["samples"] - with_text[s] for s in splits)
