"""Where a pack lives: a local folder, an http(s) folder URL, or a `pipe:` command template.

    data.shards: data/mimic                                        # a folder
    data.shards: https://example.org/packs/mimic                   # DIR/manifest.json, DIR/train-000000.tar
    data.shards: "pipe:aws s3 cp s3://bucket/mimic/{name} -"       # {name}: manifest.json or a shard

A remote pack is read by `remote.py` (curl with bounded waits for http(s), the user's own shell
command for `pipe:`), its manifest.json from the same place as its shards. A shard URL given
directly (`https://.../train-000003.tar`, `pipe:... train-000003.tar ...`) finds its manifest
by putting `manifest.json` in place of the shard's name.
"""
from __future__ import annotations

import json
import re

from cmgl_dist.shards.manifest import checked_manifest
from cmgl_dist.redact import redact
from cmgl_dist.shards.remote import RemoteError, fetch  # noqa: F401 - RemoteError: where readers catch it
from cmgl_dist.shards.schema import MANIFEST, shard_entry_problem

NAME = "{name}"  # in a pipe: template, the file to fetch
_HTTP = ("http://", "https://")
_SHARD_NAME = re.compile(r"(train|val|test)-\d{6}\.tar")


def is_remote_pack(shards: str) -> bool:
    """An http(s) URL of a folder (not of a .tar, no brace pattern), or a pipe: template with {name}."""
    if shards.startswith("pipe:"):
        return NAME in shards
    return shards.startswith(_HTTP) and not shards.rstrip("/").endswith(".tar") and "{" not in shards


def pack_file(location: str, name: str) -> str:
    """The URL of file `name` (manifest.json, a shard) of the remote pack at `location`; a name
    not of the packer's form is refused here, where it would be put into a URL or a command."""
    if name != MANIFEST and (problem := shard_entry_problem(name, name.split("-")[0])):
        raise ValueError(f"{redact(location)}: shard {problem}: refused")
    if location.startswith("pipe:"):
        return location.replace(NAME, name)
    return location.rstrip("/") + "/" + name


def manifest_url_of(shard_url: str) -> tuple[str, str] | None:
    """(where the manifest of a remote shard URL lies, the shard's name): its last shard name
    replaced by manifest.json; None when the URL names no shard of the packer's naming."""
    found = list(_SHARD_NAME.finditer(shard_url))
    if not found:
        return None
    last = found[-1]
    return shard_url[:last.start()] + MANIFEST + shard_url[last.end():], last.group(0)


def remote_manifest(url: str) -> dict:
    """The manifest at `url`, checked like a local one; a clear error when it is missing or not JSON."""
    data = fetch(url)
    try:
        manifest = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{redact(url)} is not valid JSON ({len(data)} bytes): {e}") from None
    return checked_manifest(manifest, redact(url))
