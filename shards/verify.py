"""`cmgl verify DIR`: re-read every shard and check it against `DIR/manifest.json`.

Checks each shard's sha256, size and sample count; each sample's members, labels, meta, image
and masks; the per-split counts and positives; no shard file missing or unlisted; no key twice.
Every problem found is listed (odd members, unsafe names, bad JSON, a malformed manifest
included); nothing in the folder makes it raise. Exit code 0 when everything matches, 1 otherwise.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from cmgl_dist.shards import schema
from cmgl_dist.shards.archive import TAR_ERRORS, member_problem
from cmgl_dist.shards.images import PIL_FORMATS
from cmgl_dist.shards.keys import key_problem
from cmgl_dist.untrusted import json_loads
from cmgl_dist.shards.location import RemoteError, fetch, is_remote_pack, pack_file, remote_manifest

REQUIRED = {schema.LABELS, schema.META}  # + the frontal image in the pack's --format
OPTIONAL = {schema.MASKS, schema.REPORT}  # + the lateral; report.json: required for IU-RR (no meta `source`)
MAX_PRINTED = 50
_HTTP_ERROR_STATUS = 22  # curl's exit status for an HTTP error answer (404 ...)
# manifest field -> the type it must have
_MANIFEST_FIELDS = {"shards": list, "splits": dict, "arguments": dict, "image_source": str,
                    "samples_written": int, "images_written": int}
_SHARD_FIELDS = {"name": str, "split": str, "samples": int, "sha256": str, "bytes": int}


def _read_samples(data: bytes) -> tuple[dict[str, dict[str, bytes]], list[str]]:
    """key -> {member: bytes}, and a problem per member that is not a safe, regular `key.member` file."""
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    problems = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            problem = member_problem(member) or (f"unsafe key ({key_problem(key)})" if key_problem(key) else None)
            if not problem and ext in samples.get(key, {}):
                problem = "a second member of that name"
            if problem or not ext:
                problems.append(f"member {member.name[:100]!r}: {problem or 'no key.member name'}")
                continue
            samples[key][ext] = tar.extractfile(member).read()
    return samples, problems


def image_format(manifest: dict) -> str:
    """The pack's --format (packs written before it existed are PNG)."""
    return manifest["arguments"].get("image_format") or schema.DEFAULT_IMAGE_FORMAT


def _check_image(data: bytes, size: int, fmt: str) -> tuple[int, int] | str:
    try:
        with Image.open(io.BytesIO(data), formats=(PIL_FORMATS[fmt],)) as image:
            image.load()
            shape = image.size
    except Exception as e:  # anything PIL raises means a broken image
        return f"undecodable image ({e})"
    return shape if max(shape) == size else f"longest side {max(shape)} != --image-size {size}"


def _json_object(members: dict[str, bytes], name: str) -> tuple[dict | None, str | None]:
    try:
        value = json_loads(members[name])
    except (ValueError, UnicodeDecodeError) as e:
        return None, f"{name} is not JSON ({e})"
    return (value, None) if isinstance(value, dict) else (None, f"{name} is not a JSON object")


def _valid_labels(labels: dict) -> bool:
    return set(labels) == set(schema.LABEL_KEYS) and all(type(v) is int and v in (0, 1) for v in labels.values())


def check_sample(key: str, members: dict[str, bytes], split: str, image_source: str, size: int,
                 fmt: str = schema.DEFAULT_IMAGE_FORMAT) -> list[str]:
    """Problems of one sample of a pack written with --image-size `size` and --format `fmt`."""
    where = f"sample {key}"
    names = set(members)
    frontal, lateral = schema.image_member("frontal", fmt), schema.image_member("lateral", fmt)
    problems = [f"{where}: missing {m}" for m in sorted(REQUIRED - names | {frontal} - names)]
    problems += [f"{where}: unexpected member {m}" for m in sorted(names - REQUIRED - OPTIONAL - {frontal, lateral})]
    if problems:
        return problems
    parsed = {name: _json_object(members, name) for name in (schema.LABELS, schema.META, schema.REPORT)
              if name in members}
    problems = [f"{where}: {problem}" for _, problem in parsed.values() if problem]
    if problems:
        return problems
    labels, meta = parsed[schema.LABELS][0], parsed[schema.META][0]
    if schema.REPORT not in members and "source" not in meta:
        return [f"{where}: missing {schema.REPORT}"]
    report = parsed[schema.REPORT][0] if schema.REPORT in members else None
    if not _valid_labels(labels):
        problems.append(f"{where}: labels.json keys/values wrong: {labels}")
    if report is not None and not (report.get("findings") or report.get("impression")):
        problems.append(f"{where}: report.json has neither findings nor impression")
    if meta.get("uid") != key or meta.get("split") != split or meta.get("image_source") != image_source:
        problems.append(f"{where}: meta.json uid/split/source {meta.get('uid')}/{meta.get('split')}/"
                        f"{meta.get('image_source')} != {key}/{split}/{image_source}")
    shape = _check_image(members[frontal], size, fmt)
    if isinstance(shape, str):
        return problems + [f"{where}: frontal: {shape}"]
    if lateral in members and isinstance(lateral_shape := _check_image(members[lateral], size, fmt), str):
        problems.append(f"{where}: lateral: {lateral_shape}")
    if image_source == "phantom":
        problems += _check_masks(where, members, labels, shape)
    return problems


def _check_masks(where: str, members: dict[str, bytes], labels: dict, shape: tuple[int, int]) -> list[str]:
    if schema.MASKS not in members:
        return [f"{where}: phantom sample without {schema.MASKS}"]
    problems = []
    try:
        with np.load(io.BytesIO(members[schema.MASKS]), allow_pickle=False) as masks:
            for name in masks.files:
                mask = masks[name]
                if name not in schema.PATHOLOGIES or labels.get(name) != 1:
                    problems.append(f"{where}: mask {name!r} for a label that is not positive")
                elif mask.dtype != bool or mask.shape != shape[::-1] or not mask.any():
                    problems.append(f"{where}: mask {name} is {mask.dtype} {mask.shape}, empty={not mask.any()}")
    except Exception as e:  # noqa: BLE001 - np.load raises many types for a damaged archive
        problems.append(f"{where}: {schema.MASKS} unreadable ({e})")
    return problems


def _manifest_problems(manifest) -> list[str]:
    """What makes the manifest unusable for checking (empty when it can be used)."""
    if not isinstance(manifest, dict):
        return [f"{schema.MANIFEST}: not a JSON object"]
    problems = [f"{schema.MANIFEST}: field {k!r} missing or not {t.__name__}"
                for k, t in _MANIFEST_FIELDS.items() if not isinstance(manifest.get(k), t)]
    if problems:
        return problems
    if not isinstance(manifest["arguments"].get("image_size"), int):
        problems.append(f"{schema.MANIFEST}: arguments.image_size missing or not int")
    if manifest["arguments"].get("image_format", schema.DEFAULT_IMAGE_FORMAT) not in schema.IMAGE_FORMATS:
        problems.append(f"{schema.MANIFEST}: arguments.image_format {manifest['arguments']['image_format']!r} "
                        f"is not one of {', '.join(schema.IMAGE_FORMATS)}")
    for i, entry in enumerate(manifest["shards"]):
        if not isinstance(entry, dict) or any(not isinstance(entry.get(k), t) for k, t in _SHARD_FIELDS.items()):
            problems.append(f"{schema.MANIFEST}: shards[{i}] lacks one of {', '.join(_SHARD_FIELDS)}")
        elif problem := schema.shard_entry_problem(entry["name"], entry["split"]):
            problems.append(f"{schema.MANIFEST}: shards[{i}] {problem}")
    return problems


def _load_manifest(folder: Path | str) -> tuple[dict | None, list[str]]:
    if is_remote_pack(str(folder)):
        try:
            manifest = remote_manifest(pack_file(str(folder), schema.MANIFEST))
        except (RemoteError, ValueError) as e:
            return None, [str(e)]
        problems = _manifest_problems(manifest)
        return (None if problems else manifest), problems
    if not (folder / schema.MANIFEST).is_file():
        return None, [f"{folder}: no {schema.MANIFEST} (not a finished pack)"]
    try:
        manifest = json_loads((folder / schema.MANIFEST).read_text())
    except (ValueError, UnicodeDecodeError, OSError) as e:
        return None, [f"{folder / schema.MANIFEST}: not JSON ({e})"]
    problems = _manifest_problems(manifest)
    return (None if problems else manifest), problems


class _Tally:
    """What the shards hold, to compare with the manifest's totals."""

    def __init__(self):
        self.splits = {s: {"samples": 0, "positives": dict.fromkeys(schema.LABEL_KEYS, 0)} for s in schema.SPLITS}
        self.seen: dict[str, str] = {}
        self.images = 0

    def add(self, key: str, members: dict[str, bytes], shard: str, split: str) -> list[str]:
        problems = [f"sample {key}: in {self.seen[key]} and {shard}"] if key in self.seen else []
        self.seen[key] = shard
        self.images += sum(m in members for m in schema.FRONTAL_MEMBERS + schema.LATERAL_MEMBERS)
        self.splits[split]["samples"] += 1
        labels = _json_object(members, schema.LABELS)[0] if schema.LABELS in members else None
        if labels is not None and _valid_labels(labels):
            for k, v in labels.items():
                self.splits[split]["positives"][k] += v
        return problems


def _shard_bytes(folder: Path | str, name: str) -> bytes | None:
    """A shard's bytes (read whole: a shard is tens of MB), from the folder or the remote pack; None
    if missing (the server has no such file); RemoteError when it could not be read otherwise."""
    if is_remote_pack(str(folder)):
        try:
            return fetch(pack_file(str(folder), name))
        except RemoteError as e:
            if e.status == _HTTP_ERROR_STATUS or not e.status:
                return None
            raise
    path = Path(folder) / name
    return path.read_bytes() if path.is_file() else None


def _check_shard(folder: Path | str, entry: dict, manifest: dict, tally: _Tally) -> list[str]:
    name = entry["name"]
    data = _shard_bytes(folder, name)
    if data is None:
        return [f"{name}: missing"]
    problems = []
    if hashlib.sha256(data).hexdigest() != entry["sha256"] or len(data) != entry["bytes"]:
        problems.append(f"{name}: sha256/size differs from the manifest")
    try:
        samples, odd = _read_samples(data)
    except TAR_ERRORS as e:
        return problems + [f"{name}: unreadable tar ({e})"]
    problems += [f"{name}: {p}" for p in odd]
    if len(samples) != entry["samples"]:
        problems.append(f"{name}: {len(samples)} samples, manifest says {entry['samples']}")
    size, source = manifest["arguments"]["image_size"], manifest["image_source"]
    for key, members in samples.items():
        problems += [f"{name}: {p}" for p in tally.add(key, members, name, entry["split"])]
        try:
            found = check_sample(key, members, entry["split"], source, size, image_format(manifest))
        except Exception as e:  # noqa: BLE001 - verify lists problems, it never raises
            found = [f"sample {key}: could not be checked ({type(e).__name__}: {e})"]
        problems += [f"{name}: {p}" for p in found]
    return problems


def verify(folder: str | Path) -> list[str]:
    """Every mismatch between the folder (or remote pack: `location.py`) and its manifest, as
    readable lines (empty when fine). A remote pack cannot be listed: unlisted shards go unseen."""
    folder = str(folder) if is_remote_pack(str(folder)) else Path(folder)
    manifest, problems = _load_manifest(folder)
    if manifest is None:
        return problems
    if isinstance(folder, Path):
        listed = {s["name"] for s in manifest["shards"]}
        on_disk = {p.name for p in folder.iterdir() if schema.SHARD_FILE.match(p.name)}
        problems += [f"{name}: on disk but not in the manifest" for name in sorted(on_disk - listed)]
    tally = _Tally()
    for entry in manifest["shards"]:
        try:
            problems += _check_shard(folder, entry, manifest, tally)
        except OSError as e:  # a shard that cannot be opened (permissions, I/O error)
            problems.append(f"{entry['name']}: unreadable ({e})")
    if tally.splits != manifest["splits"]:
        problems.append(f"per-split counts {tally.splits} != manifest {manifest['splits']}")
    if len(tally.seen) != manifest["samples_written"] or tally.images != manifest["images_written"]:
        problems.append(f"{len(tally.seen)} samples / {tally.images} images read, manifest says "
                        f"{manifest['samples_written']} / {manifest['images_written']}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="cmgl verify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", help="a folder written by `cmgl pack`, or a remote pack (http(s) folder URL, "
                                    "pipe: template with {name})")
    parser.add_argument("--all", action="store_true", help=f"print every problem (default: the first {MAX_PRINTED})")
    args = parser.parse_args(argv)
    problems = verify(args.dir)
    shown = problems if args.all else problems[:MAX_PRINTED]
    for line in shown:
        print(f"MISMATCH {line}", file=sys.stderr)
    if len(problems) > len(shown):
        print(f"... and {len(problems) - len(shown)} more (--all prints them)", file=sys.stderr)
    if problems:
        print(f"cmgl verify: {len(problems)} problem(s) in {args.dir}", file=sys.stderr)
        return 1
    manifest = _load_manifest(args.dir if is_remote_pack(args.dir) else Path(args.dir))[0]
    print(f"cmgl verify: OK: {len(manifest['shards'])} shards, {manifest['samples_written']} samples, "
          f"{manifest['images_written']} images match the manifest of {args.dir}")
    return 0
