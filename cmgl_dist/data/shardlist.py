"""Shard URLs for a split, and how many samples they hold (from the packer's manifest.json)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import braceexpand

from cmgl_dist.shards.schema import MANIFEST, SPLITS

# `pipe:cmd`, `http://...`, `s3://...`: opened by webdataset's gopen, never touched here.
ALL_SPLITS = "all"
_PASSTHROUGH_PREFIXES = ("pipe:", "http://", "https://", "gs://", "s3://", "ais://")


def is_passthrough(url: str) -> bool:
    return url.startswith(_PASSTHROUGH_PREFIXES)


def shard_urls(shards: str, split: str) -> list[str]:
    """The shard URLs of `split`.

    A folder holding manifest.json gives that split's shards in manifest order; a brace pattern
    (`/data/train-{000000..000009}.tar`) is expanded; `pipe:` and remote URLs are passed through
    unchanged (webdataset opens them). `split` only selects from a manifest; `all` (evaluation
    of an external corpus) takes every split's shards.
    """
    if not shards:
        raise ValueError("data.shards is empty: set it to a folder written by `cmgl pack` or a shard URL pattern")
    if is_passthrough(shards):
        return list(braceexpand.braceexpand(shards))
    folder = Path(shards)
    if folder.is_dir():
        if split not in SPLITS + (ALL_SPLITS,):
            raise ValueError(f"split {split!r} is not one of {SPLITS + (ALL_SPLITS,)}")
        manifest = read_manifest(str(folder))
        urls = [str(folder / entry["name"]) for entry in manifest["shards"] if split in (entry["split"], ALL_SPLITS)]
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
    if is_passthrough(shards) or not Path(shards).is_dir():
        return 0
    manifest = read_manifest(shards)
    with_text = manifest.get("samples_with_text")
    splits = SPLITS if split == ALL_SPLITS else (split,)
    return 0 if with_text is None else sum(manifest["splits"][s]["samples"] - with_text[s] for s in splits)
