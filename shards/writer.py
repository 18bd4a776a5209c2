"""Byte-reproducible shard files: fixed tar headers, sorted members, temp name + rename."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from cmgl_dist.atomic import atomic_path, write_text_atomic
from cmgl_dist.shards.keys import key_problem

# Every member gets the same header fields, so equal content gives equal bytes.
_MTIME = 946684800  # 2000-01-01T00:00:00Z
_ZIP_TIME = (2000, 1, 1, 0, 0, 0)


def json_bytes(obj) -> bytes:
    return (json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=None) + "\n").encode()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """Like np.savez_compressed, but with fixed zip timestamps (np.savez stamps the clock)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            zf.writestr(info, buf.getvalue())
    return out.getvalue()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_shard(path: str | Path, samples: list[tuple[str, dict[str, bytes]]]) -> str:
    """Write [(key, {member: bytes})] as a tar at `path`, atomically; return its sha256.

    Members are named `{key}.{member}` (WebDataset groups on the text before the first dot),
    samples keep the given order and members within a sample are sorted.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for key, members in samples:
                    if problem := key_problem(key):
                        raise ValueError(f"sample key {key[:100]!r} is unsafe: {problem}")
                    for member in sorted(members):
                        data = members[member]
                        info = tarfile.TarInfo(f"{key}.{member}")
                        info.size, info.mtime, info.mode = len(data), _MTIME, 0o644
                        info.uid = info.gid = 0
                        info.uname = info.gname = ""
                        tar.addfile(info, io.BytesIO(data))
            f.flush()
            os.fsync(f.fileno())
    return sha256_file(path)


def write_json_atomic(path: str | Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
