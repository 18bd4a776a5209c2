"""Reading a file of a remote pack: bounded waits, retries that say what they wait for, and
credentials that never reach a command line, a file or a log line.

http(s) URLs are read by curl, started with an argument list (no shell) and given its URL and
options on stdin (`--config -`), so a password in the URL is not visible in the process table
either. Every wait is bounded, whatever the server does:

    CMGL_HTTP_CONNECT_TIMEOUT  seconds to connect (default 10)
    CMGL_HTTP_STALL_TIMEOUT    seconds without a single byte, the first one included (default 30):
                               a server that accepts and never answers fails after this long
    CMGL_HTTP_RETRIES          retries of a transient failure (timeout, 408, 429, 5xx), each after
                               a doubling wait (1 s, 2 s, 4 s, ...) that curl announces on stderr
                               (default 3: a 500 is reported after about 7 s)
    CMGL_HTTP_MAX_TIME         seconds a whole transfer may take, 0 for no limit (default 0)

Credentials come from `~/.netrc` (or the file `NETRC` names), as curl and webdataset users keep
them, or from the URL's userinfo (`http://user:pw@host/`), which is used but never written:
`redact` takes it out of every URL the project records or prints.

`pipe:` URLs are the user's own commands and go to webdataset's opener unchanged; what the
project substitutes into them (a shard name from a manifest) is checked first
(`schema.shard_entry_problem`).
"""
from __future__ import annotations

import math
import os
import subprocess
from dataclasses import dataclass
from typing import Iterator

from cmgl_dist.redact import redact

_HTTP = ("http://", "https://")
# curl exit statuses worth naming in a message (`man curl`, EXIT CODES)
_CURL_EXITS = {6: "host not found", 7: "connection refused", 18: "transfer cut short", 22: "HTTP error status",
               28: "timed out", 47: "too many redirects", 56: "connection reset"}


class RemoteError(OSError):
    """A remote pack's file could not be fetched (missing, refused, too slow, or the command failed);
    `status` is curl's exit status where curl ran (22: the server answered with an error status)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    connect: float = 10.0
    stall: float = 30.0
    retries: int = 3
    max_time: float = 0.0

    @classmethod
    def from_env(cls) -> "Limits":
        """The limits from CMGL_HTTP_*; a value that is not a finite number >= 0 is a ValueError naming it."""
        values = {}
        for field, kind in (("connect", float), ("stall", float), ("retries", int), ("max_time", float)):
            name = f"CMGL_HTTP_{field.upper()}" + ("_TIMEOUT" if field in ("connect", "stall") else "")
            raw = os.environ.get(name)
            if raw is None:
                continue
            try:
                value = kind(raw)
            except ValueError:
                value = -1
            if not (math.isfinite(value) and value >= 0) or (field in ("connect", "stall") and value == 0) \
                    or (field == "retries" and value > 20):
                raise ValueError(f"{name}={raw!r}: " + ("give a whole number 0..20" if field == "retries" else
                                                       "give a number of seconds > 0" if field != "max_time" else
                                                       "give a number of seconds >= 0 (0: no limit)"))
            values[field] = value
        return cls(**values)


def _quoted(text: str) -> str:
    """`text` as a double-quoted value of curl's config syntax; a control character (which could
    end the line and start an option of its own) is refused."""
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise RemoteError(f"{redact(text)[:200]!r}: a control character in a URL or path is refused")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _curl_config(url: str, limits: Limits) -> str:
    """curl options, one per line, read from stdin: nothing of the URL appears in argv."""
    lines = [f"url = {_quoted(url)}", "fail", "location", "max-redirs = 5", "proto = =http,https",
             "proto-redir = =http,https", "no-progress-meter", "show-error",
             f"connect-timeout = {limits.connect:g}",
             # under 1 byte/s for `stall` seconds, including the wait for the response
             "speed-limit = 1", f"speed-time = {max(1, math.ceil(limits.stall))}",
             f"retry = {limits.retries}", "retry-connrefused"]
    if limits.max_time:
        lines.append(f"max-time = {limits.max_time:g}")
    netrc = os.environ.get("NETRC")
    lines.append(f"netrc-file = {_quoted(netrc)}" if netrc else "netrc-optional")
    return "\n".join(lines) + "\n"


class CurlStream:
    """The body of an http(s) URL as a readable stream; `delivered` counts its bytes.

    At the end of the body curl's exit status is checked: a transfer that failed or was cut short
    raises RemoteError naming the (redacted) URL, what went wrong and how many bytes had come."""

    def __init__(self, url: str, limits: Limits | None = None):
        self.url, self.delivered = url, 0
        config = _curl_config(url, limits or Limits.from_env()).encode()  # checked before curl starts
        self._proc = subprocess.Popen(["curl", "--config", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._proc.stdin.write(config)
        self._proc.stdin.close()
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        data = self._proc.stdout.read(size)
        self.delivered += len(data)
        if not data or size < 0:
            self._check(self._proc.wait())
        return data

    def _check(self, status: int) -> None:
        if status != 0:
            raise RemoteError(f"cannot fetch {redact(self.url)}: curl exit {status} "
                              f"({_CURL_EXITS.get(status, 'see man curl')}) after {self.delivered} bytes", status)

    def close(self) -> None:
        """Stop the transfer (whatever is left of it is not wanted)."""
        if self.closed:
            return
        self.closed = True
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.stdout.close()
        self._proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - nothing to report to at collection time
            pass


class CountedStream:
    """Any opened stream (webdataset's opener for `pipe:` and local files), counting its bytes."""

    def __init__(self, stream, url: str):
        self._stream, self.url, self.delivered = stream, url, 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.delivered += len(data)
        return data

    @property
    def closed(self) -> bool:
        return getattr(self._stream, "closed", getattr(getattr(self._stream, "stream", None), "closed", False))

    def close(self) -> None:
        self._stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_url(url: str):
    """A stream of `url`'s bytes with a `delivered` count: curl (bounded) for http(s), webdataset's
    opener for `pipe:` and local paths."""
    if url.startswith(_HTTP):
        return CurlStream(url)
    import webdataset as wds

    return CountedStream(wds.gopen(url), url)


def fetch(url: str) -> bytes:
    """The whole content at `url`; RemoteError naming the (redacted) URL if it fails."""
    try:
        stream = open_url(url)
        try:
            return stream.read()
        finally:
            stream.close()
    except RemoteError:
        raise
    except Exception as e:  # noqa: BLE001 - pipe failures surface as IOError, others as anything
        raise RemoteError(f"cannot fetch {redact(url)}: {redact(str(e))[:300]}") from None


def tar_samples(url: str, handler) -> tuple[object, Iterator[dict]]:
    """(the opened stream, webdataset's samples of the tar at `url`): the stream's `delivered`
    tells a shard that sent nothing from one cut short. Read errors go to `handler`."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    stream = open_url(url)
    files = tar_file_expander([{"url": redact(url), "stream": stream}], handler=handler)
    return stream, group_by_keys(files, handler=handler)
