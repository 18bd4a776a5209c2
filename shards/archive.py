"""Reading untrusted input files (tar members or files in a folder) with bounded work.

Truncated or corrupt archives keep every member read before the damage. Only regular files are
read (links, devices and FIFOs are refused without opening them), and nothing over
`MAX_MEMBER_BYTES` is read: the size is checked before reading, and copies stream in chunks.
"""
from __future__ import annotations

import os
import shutil
import stat
import tarfile
from pathlib import Path
from typing import Callable, Iterator

from cmgl_dist.atomic import atomic_path

TAR_ERRORS = (OSError, tarfile.TarError, EOFError)
# The largest input file read: a 16-bit 4k x 4k PNG is ~32 MB, a report XML a few kB.
MAX_MEMBER_BYTES = 64 << 20
NOT_REGULAR = "not a regular file"


def tolerant_members(tar: tarfile.TarFile, on_broken: Callable[[str], None]) -> Iterator[tarfile.TarInfo]:
    """The archive's members in order; if it breaks, `on_broken(message)` once, then stop."""
    members = iter(tar)
    while True:
        try:
            member = next(members)
        except StopIteration:
            return
        except TAR_ERRORS as e:
            on_broken(f"unreadable archive after {len(tar.members)} members: {e}")
            return
        yield member


def _size_problem(size: int) -> str | None:
    return f"member too large: {size} bytes > {MAX_MEMBER_BYTES}" if size > MAX_MEMBER_BYTES else None


def member_problem(member: tarfile.TarInfo) -> str | None:
    """Why this member will not be read (special file, over the size cap), or None."""
    return NOT_REGULAR if not member.isfile() else _size_problem(member.size)


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes | str:
    """The member's bytes, or why they cannot be read."""
    if problem := member_problem(member):
        return problem
    try:
        return tar.extractfile(member).read(MAX_MEMBER_BYTES)
    except TAR_ERRORS as e:
        return f"unreadable archive member: {e}"


def copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> str | None:
    """Stream the member to `target` (atomically); None on success, else why not."""
    if problem := member_problem(member):
        return problem
    try:
        with tar.extractfile(member) as source, atomic_path(target) as tmp, open(tmp, "wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 20)
    except TAR_ERRORS as e:
        return f"unreadable archive member: {e}"
    return None


def read_regular_file(path: Path) -> bytes | str:
    """A file's bytes, or why they are not read; a link is not followed, a FIFO or device never opened."""
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode):
            return NOT_REGULAR
        if problem := _size_problem(info.st_size):
            return problem
        with open(path, "rb") as f:
            return f.read(MAX_MEMBER_BYTES)
    except OSError as e:
        return f"unreadable file: {e}"
