"""One writer per folder: an exclusive lock held for a whole command, with its holder on record.

Every command that writes a folder it owns takes `folder_lock(folder, purpose)` for its whole run:
`cmgl pack --out`, `cmgl train`'s run dir (rank 0), `cmgl evaluate` / `cmgl sweep --out`. A second
writer is refused at once with `FolderBusy`, whose message names the holder (purpose, pid, host,
start time); nothing waits, nothing is replaced. A lock path that is not a regular file (a planted
symbolic link, a folder, a fifo) is refused the same way (`FolderRefused`, as is a folder that is a file or cannot be written), never followed.

The lock is `fcntl.flock` on `FOLDER/.cmgl-lock`. The kernel releases it when its holder exits,
however it ends (a kill -9 included), so a lock is never stale; the file left behind by a killed
holder is simply taken by the next writer. A clean release removes the file while still holding
the lock, and a taker checks after locking that the file it holds is still the one at the path
(else it retries), so a release and a new taker never end up with two holders. flock is exact
between processes on one machine; on a network file system it is only as good as the server's
lock support (NFSv4 emulates flock with byte-range locks).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

LOCK_FILE = ".cmgl-lock"


class FolderBusy(RuntimeError):
    """Another process holds the folder's lock; the message names it."""

    def __init__(self, folder: Path, purpose: str, holder: Optional[dict]):
        self.folder, self.purpose, self.holder = folder, purpose, holder
        super().__init__(f"{folder} is in use by {describe_holder(holder)}: {purpose} refused; wait for that "
                         "process to end, or use another folder")


class FolderRefused(FolderBusy):
    """The folder cannot be locked at all: it is a file or cannot be written, or its `.cmgl-lock` is
    not a regular file (a symbolic link, a folder, a fifo: refused, never followed or written
    through). Callers report it as they report FolderBusy: one line."""

    def __init__(self, folder: Path, purpose: str, why: str):
        self.folder, self.purpose, self.holder = folder, purpose, None
        RuntimeError.__init__(self, f"{why}: {purpose} refused")


def _not_a_file(folder: Path, purpose: str, what: str) -> FolderRefused:
    return FolderRefused(folder, purpose, f"{folder / LOCK_FILE} is {what}, not a lock file; remove it "
                                          "(cmgl keeps its writer lock there)")


def _kind(mode: int) -> str:
    return next((what for test, what in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"),
                                         (stat.S_ISFIFO, "a fifo"), (stat.S_ISSOCK, "a socket"))
                 if test(mode)), "not a regular file")


def describe_holder(holder: Optional[dict]) -> str:
    """'cmgl pack (pid 12, host h, since 2026-12-05T00:01:02Z)', or a note when the record is unreadable."""
    if not holder:
        return "another process (its record is not written yet or unreadable)"
    return (f"{holder.get('purpose', '?')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"since {holder.get('start', '?')})")


def read_holder(fd: int) -> Optional[dict]:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _open_regular(path: Path, folder: Path, purpose: str) -> int:
    """`path` opened for the lock without following a link or blocking on a fifo; LockNotAFile when
    it is anything but a regular file (a planted link would otherwise have its target overwritten)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EOPNOTSUPP):
            raise _not_a_file(folder, purpose, _kind(os.lstat(path).st_mode)) from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_a_file(folder, purpose, _kind(mode))
    return fd


def _take(path: Path, folder: Path, purpose: str) -> int:
    """An fd holding the lock on `path`, or FolderBusy."""
    while True:
        fd = _open_regular(path, folder, purpose)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(fd)
            os.close(fd)
            raise FolderBusy(folder, purpose, holder) from None
        try:
            same = os.lstat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # a releasing holder removed the file after we opened it: take the new one


@contextmanager
def folder_lock(folder: str | os.PathLike, purpose: str) -> Iterator[dict]:
    """Hold `folder`'s writer lock (creating the folder) for the block; FolderBusy if another holds it.

    Yields the owner record written into the lock file: purpose, host, pid, start (UTC, ISO 8601).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = _take(folder / LOCK_FILE, folder, purpose)
    except (FileExistsError, NotADirectoryError):
        raise FolderRefused(folder, purpose, f"{folder} is a file, not a folder") from None
    except PermissionError as e:
        raise FolderRefused(folder, purpose, f"{folder} cannot be written ({e.strerror})") from None
    path = folder / LOCK_FILE
    record = {"purpose": purpose, "host": socket.gethostname(), "pid": os.getpid(),
              "start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        yield record
    finally:
        try:
            path.unlink(missing_ok=True)  # while still holding it: see the module docstring
        finally:
            os.close(fd)
