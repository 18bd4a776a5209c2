"""Random access into local tar shards: where each sample's members lie, and reading one sample.

The world-size-free order (`cmgl_dist.data.order`) reads samples in an order of its own, not the
tar's, so it needs each member's byte offset. webdataset's `wids` keeps such an index beside the
shards; here it is built on demand from the tar headers alone (`tarfile` seeks over member data,
so indexing a shard reads 512 bytes per member) and cached per process by the shard's path, size
and modification time, so a repacked shard is indexed again. A pack needs no extra file.

Members are grouped into samples the way webdataset's reader groups them (`base_plus_ext`,
consecutive members with the same key, lower-case suffixes), so a sample read here is the same
dict `wds.tarfile_samples` yields for it, and everything downstream (`samples.parse`) is shared.
"""
from __future__ import annotations

import logging
import os
import tarfile
from dataclasses import dataclass
from typing import Optional

from webdataset.tariterators import base_plus_ext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleEntry:
    """One sample of a shard: its key and each member's (suffix, data offset, size) in the tar."""
    key: str
    members: tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class ShardIndex:
    url: str
    samples: tuple[SampleEntry, ...]
    error: Optional[str] = None  # why indexing stopped early (a truncated or unreadable tar), or None


_CACHE: dict[tuple[str, int, int], ShardIndex] = {}


def index_shard(path: str) -> ShardIndex:
    """The samples of the tar at `path`, in tar order. A tar that breaks off keeps the samples whose
    members were all listed before the break (`error` says why it stopped); a missing file raises
    FileNotFoundError."""
    stat = os.stat(path)
    cache_key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if cache_key in _CACHE:
        return _CACHE[cache_key]
    samples: list[SampleEntry] = []
    key, members, error = None, [], None
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                prefix, suffix = base_plus_ext(info.name)
                if prefix is None:
                    continue
                if prefix != key:
                    if members:
                        samples.append(SampleEntry(key, tuple(members)))
                    key, members = prefix, []
                members.append((suffix.lower(), info.offset_data, info.size))
    except (tarfile.TarError, OSError, EOFError) as err:
        error = f"{type(err).__name__}: {err}"
        members = []  # the sample open at the break may lack members
    if members:
        if members[-1][1] + members[-1][2] > stat.st_size:  # its data runs past the end of the file
            error = error or "the last member's data runs past the end of the file"
        else:
            samples.append(SampleEntry(key, tuple(members)))
    index = ShardIndex(path, tuple(samples), error)
    _CACHE[cache_key] = index
    return index


class SampleReader:
    """Reads samples by index entry, keeping one open file per shard (per process: a DataLoader
    worker makes its own, since open files do not survive pickling)."""

    def __init__(self):
        self._files: dict[str, object] = {}

    def read(self, url: str, entry: SampleEntry) -> dict:
        """The sample as webdataset yields it: {"__key__", "__url__", suffix: bytes, ...}.
        OSError when the shard is gone or shorter than its index says."""
        f = self._files.get(url)
        if f is None:
            f = self._files[url] = open(url, "rb")
        sample = {"__key__": entry.key, "__url__": url}
        for suffix, offset, size in entry.members:
            f.seek(offset)
            data = f.read(size)
            if len(data) != size:
                raise OSError(f"{url}: member {entry.key}.{suffix} is cut short ({len(data)} of {size} bytes)")
            sample[suffix] = data
        return sample

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __getstate__(self):
        return {"_files": {}}
