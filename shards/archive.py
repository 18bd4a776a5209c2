"""Reading tar archives that may be truncated or corrupt: keep every member read before the damage."""
from __future__ import annotations

import tarfile
from typing import Callable, Iterator

TAR_ERRORS = (OSError, tarfile.TarError, EOFError)


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


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes | str:
    """The member's bytes, or an error message when they cannot be read."""
    try:
        return tar.extractfile(member).read()
    except TAR_ERRORS as e:
        return f"unreadable archive member: {e}"
