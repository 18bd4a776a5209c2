"""What evaluation needs to know about a packed corpus beyond its features: its name, its
patients (k-fold probes keep a patient in one fold) and the samples whose labels are unknown."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from webdataset.handlers import reraise_exception

from cmgl_dist.data.shardlist import shard_urls
from cmgl_dist.redact import redact
from cmgl_dist.shards.manifest import read_manifest
from cmgl_dist.shards.remote import tar_samples
from cmgl_dist.shards.reports import labels_known
from cmgl_dist.shards.schema import META


def corpus_name(shards: str) -> str:
    """`<source> (<folder>)`: the source the pack was made from (IU-RR packs predate the field)."""
    folder = Path(shards)
    if not folder.is_dir():
        return Path(redact(shards)).name  # a URL's userinfo is never recorded
    return f"{read_manifest(str(folder)).get('source', 'iurr')} ({folder.name})"


def _metas(shards: str, split: str) -> Iterator[tuple[str, dict]]:
    """(sample key, meta.json) for every sample of `split`, without decoding its images."""
    for url in shard_urls(shards, split):  # local, http(s) or pipe: (shards/remote.py opens them)
        stream, samples = tar_samples(url, reraise_exception)
        with stream:
            for sample in samples:
                if META in sample:
                    yield sample["__key__"], json.loads(sample[META])


def patients(shards: str, split: str) -> dict[str, str]:
    """sample key -> patient id from meta.json (IU-RR has none: each report is its own patient)."""
    return {key: str(meta.get("patient_id", key)) for key, meta in _metas(shards, split)}


def unknown_labels(shards: str, split: str) -> set[str]:
    """Keys of the samples whose labels do not state their finding set (unindexed IU-RR reports)."""
    return {key for key, meta in _metas(shards, split) if not labels_known(meta.get("mesh_major"))}
