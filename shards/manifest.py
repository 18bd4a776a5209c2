"""`DIR/manifest.json`: what a pack read, wrote and skipped, and every shard's sha256.

Written last and atomically: a folder without it is not a finished pack. Readers go through
`read_manifest` (checked) and key what they compute from a pack by `pack_sha256`.
"""
from __future__ import annotations

import hashlib
import platform
from collections import Counter
from importlib import metadata
from pathlib import Path

from cmgl_dist.shards.schema import LABEL_KEYS, MANIFEST, SPLITS, shard_entry_problem
from cmgl_dist.untrusted import json_loads

FORMAT_VERSION = 1


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("cmgl", "numpy", "pillow", "webdataset", "torchxrayvision"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def split_summary(records: list[dict]) -> dict:
    """Per-split sample counts and per-label positives, from the shards' progress records."""
    out = {}
    for split in SPLITS:
        samples = [s for r in records if r["split"] == split for s in r["samples"]]
        out[split] = {"samples": len(samples),
                      "positives": {k: sum(s["labels"][k] for s in samples) for k in LABEL_KEYS}}
    return out


def shards_sha256(shards: list[dict]) -> str:
    """One content fingerprint of a pack: sha256 over its shards' names and sha256s, in name order.

    Equal for byte-identical packs wherever they lie; what caches of results computed from a
    pack (features, evaluations) key on."""
    lines = "".join(f"{s['name']} {s['sha256']}\n" for s in sorted(shards, key=lambda s: s["name"]))
    return hashlib.sha256(lines.encode()).hexdigest()


def build_manifest(*, arguments: dict, inputs: dict, reports_read: int, report_skips: list[dict], image_skips: list[dict],
                   records: list[dict], image_source: str) -> dict:
    records = sorted(records, key=lambda r: r["name"])
    shard_skips = [s for r in records for s in r["skips"]]
    image_skips = image_skips + [s for s in shard_skips if "image" in s]
    report_skips = report_skips + [s for s in shard_skips if "image" not in s]
    splits = split_summary(records)
    shards = [{"name": r["name"], "split": r["split"], "samples": len(r["samples"]),
               "sha256": r["sha256"], "bytes": r["bytes"]} for r in records]
    return {
        "format": FORMAT_VERSION,
        "image_source": image_source,
        "reports_read": reports_read,
        "samples_written": sum(len(r["samples"]) for r in records),
        "images_written": sum(r["images_written"] for r in records),
        "splits": splits,
        "positives": {k: sum(splits[s]["positives"][k] for s in SPLITS) for k in LABEL_KEYS},
        "skipped_reports": report_skips,
        "skipped_images": image_skips,
        "skip_reasons": skip_counts(report_skips + image_skips),
        "shards": shards,
        "shards_sha256": shards_sha256(shards),
        "arguments": arguments,
        "inputs": inputs,
        "versions": package_versions(),
    }


def skip_counts(skips: list[dict]) -> dict[str, int]:
    """Skips counted by reason (the text before the first ':')."""
    return dict(sorted(Counter(s["reason"].split(":")[0] for s in skips).items()))


def describe_skips(skips: list[dict], examples: int = 5) -> str:
    """Skip counts by reason, and the first few skips in full (for a message to the user)."""
    shown = "; ".join(f"{s['uid']}{' ' + s['image'] if s.get('image') else ''}: {s['reason']}"
                      for s in skips[:examples])
    return f"{skip_counts(skips)}; for example {shown}" if skips else "nothing was recorded as skipped"


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a packed folder; a clear error when it is missing, not JSON or lacks shard fields."""
    path = Path(folder) / MANIFEST
    try:
        with open(path, "rb") as f:
            manifest = json_loads(f.read())
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder} has no {MANIFEST}: pack it with `cmgl pack` first") from None
    except ValueError as e:  # not JSON, not UTF-8, nested too deeply
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    return checked_manifest(manifest, path)


def checked_manifest(manifest, where) -> dict:
    """`manifest` (parsed from `where`: a path or URL) when its shard entries can be read."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards", []), list):
        raise ValueError(f"{where} is not a pack manifest (a JSON object with a list of shards)")
    for entry in manifest.get("shards", ()):
        if not isinstance(entry, dict) or not {"name", "split", "samples"} <= entry.keys():
            raise ValueError(f"{where}: shard entry {str(entry)[:200]} lacks name, split or samples")
        if problem := shard_entry_problem(entry["name"], entry["split"]):
            raise ValueError(f"{where}: shard entry {problem}: refused (a shard name never reaches a path, "
                             "URL or command unchecked)")
    return manifest


def pack_sha256(folder: str | Path) -> str:
    """The content fingerprint of a finished pack (`shards_sha256`; computed for older manifests)."""
    return manifest_sha256(read_manifest(folder))


def manifest_sha256(manifest: dict) -> str:
    """A manifest's content fingerprint (`shards_sha256`; computed for older manifests)."""
    return manifest.get("shards_sha256") or shards_sha256(manifest["shards"])
