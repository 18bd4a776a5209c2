"""What evaluation needs to know about a packed corpus beyond its features: its name and its
patients (k-fold probes keep a patient in one fold)."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

from cmgl_dist.data.shardlist import read_manifest, shard_urls
from cmgl_dist.shards.schema import META


def corpus_name(shards: str) -> str:
    """`<source> (<folder>)`: the source the pack was made from (IU-RR packs predate the field)."""
    folder = Path(shards)
    if not folder.is_dir():
        return folder.name
    return f"{read_manifest(str(folder)).get('source', 'iurr')} ({folder.name})"


def patients(shards: str, split: str) -> dict[str, str]:
    """sample key -> patient id from meta.json (IU-RR has none: each report is its own patient)."""
    out = {}
    for url in shard_urls(shards, split):
        with tarfile.open(url) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if ext == META:
                    out[key] = str(json.loads(tar.extractfile(member).read()).get("patient_id", key))
    return out
