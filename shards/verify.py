"""`cmgl verify DIR`: re-read every shard and check it against `DIR/manifest.json`.

Checks each shard's sha256, size and sample count; each sample's members, labels, meta, image
and masks; the per-split counts and positives; no shard file missing or unlisted; no key twice.
Exit code 0 when everything matches, 1 otherwise (each problem printed).
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from cmgl_dist.shards import schema
from cmgl_dist.shards.writer import sha256_file

REQUIRED = {schema.FRONTAL, schema.LABELS, schema.META}
OPTIONAL = {schema.LATERAL, schema.MASKS, schema.REPORT}  # report.json: required for IU-RR (no meta `source`)
MAX_PRINTED = 50


def _read_samples(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            samples[key][ext] = tar.extractfile(member).read()
    return samples


def _check_image(data: bytes, size: int) -> tuple[int, int] | str:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            shape = image.size
    except Exception as e:  # anything PIL raises means a broken image
        return f"undecodable image ({e})"
    return shape if max(shape) == size else f"longest side {max(shape)} != --image-size {size}"


def check_sample(key: str, members: dict[str, bytes], split: str, image_source: str, size: int) -> list[str]:
    where = f"sample {key}"
    names = set(members)
    problems = [f"{where}: missing {m}" for m in sorted(REQUIRED - names)]
    problems += [f"{where}: unexpected member {m}" for m in sorted(names - REQUIRED - OPTIONAL)]
    if problems:
        return problems
    labels, meta = json.loads(members[schema.LABELS]), json.loads(members[schema.META])
    if schema.REPORT not in members and "source" not in meta:
        return [f"{where}: missing {schema.REPORT}"]
    report = json.loads(members[schema.REPORT]) if schema.REPORT in members else None
    if set(labels) != set(schema.LABEL_KEYS) or any(v not in (0, 1) for v in labels.values()):
        problems.append(f"{where}: labels.json keys/values wrong: {labels}")
    if report is not None and not (report.get("findings") or report.get("impression")):
        problems.append(f"{where}: report.json has neither findings nor impression")
    if meta.get("uid") != key or meta.get("split") != split or meta.get("image_source") != image_source:
        problems.append(f"{where}: meta.json uid/split/source {meta.get('uid')}/{meta.get('split')}/"
                        f"{meta.get('image_source')} != {key}/{split}/{image_source}")
    shape = _check_image(members[schema.FRONTAL], size)
    if isinstance(shape, str):
        return problems + [f"{where}: frontal: {shape}"]
    if schema.LATERAL in members and isinstance(lateral := _check_image(members[schema.LATERAL], size), str):
        problems.append(f"{where}: lateral: {lateral}")
    if image_source == "phantom":
        if schema.MASKS not in members:
            return problems + [f"{where}: phantom sample without {schema.MASKS}"]
        with np.load(io.BytesIO(members[schema.MASKS])) as masks:
            for name in masks.files:
                mask = masks[name]
                if name not in schema.PATHOLOGIES or labels.get(name) != 1:
                    problems.append(f"{where}: mask {name!r} for a label that is not positive")
                elif mask.dtype != bool or mask.shape != shape[::-1] or not mask.any():
                    problems.append(f"{where}: mask {name} is {mask.dtype} {mask.shape}, empty={not mask.any()}")
    return problems


def verify(folder: str | Path) -> list[str]:
    """Every mismatch between the folder and its manifest, as readable lines (empty when fine)."""
    folder = Path(folder)
    if not (folder / schema.MANIFEST).is_file():
        return [f"{folder}: no {schema.MANIFEST} (not a finished pack)"]
    try:
        manifest = json.loads((folder / schema.MANIFEST).read_text())
    except json.JSONDecodeError as e:
        return [f"{folder / schema.MANIFEST}: not JSON ({e})"]
    problems, seen = [], {}
    listed = {s["name"] for s in manifest["shards"]}
    on_disk = {p.name for p in folder.iterdir() if schema.SHARD_FILE.match(p.name)}
    problems += [f"{name}: on disk but not in the manifest" for name in sorted(on_disk - listed)]
    counts = {s: {"samples": 0, "positives": dict.fromkeys(schema.LABEL_KEYS, 0)} for s in schema.SPLITS}
    images = 0
    size, source = manifest["arguments"]["image_size"], manifest["image_source"]
    for entry in manifest["shards"]:
        path = folder / entry["name"]
        if not path.is_file():
            problems.append(f"{entry['name']}: missing")
            continue
        if sha256_file(path) != entry["sha256"] or path.stat().st_size != entry["bytes"]:
            problems.append(f"{entry['name']}: sha256/size differs from the manifest")
        try:
            samples = _read_samples(path)
        except (tarfile.TarError, OSError, EOFError) as e:
            problems.append(f"{entry['name']}: unreadable tar ({e})")
            continue
        if len(samples) != entry["samples"]:
            problems.append(f"{entry['name']}: {len(samples)} samples, manifest says {entry['samples']}")
        for key, members in samples.items():
            if key in seen:
                problems.append(f"sample {key}: in {seen[key]} and {entry['name']}")
            seen[key] = entry["name"]
            try:
                found = check_sample(key, members, entry["split"], source, size)
            except (ValueError, zipfile.BadZipFile, OSError) as e:  # undecodable JSON or npz
                found = [f"sample {key}: unreadable member ({e})"]
            problems += [f"{entry['name']}: {p}" for p in found]
            images += sum(m in members for m in (schema.FRONTAL, schema.LATERAL))
            split = counts[entry["split"]]
            split["samples"] += 1
            if schema.LABELS in members:
                for k, v in json.loads(members[schema.LABELS]).items():
                    split["positives"][k] = split["positives"].get(k, 0) + int(v)
    if counts != manifest["splits"]:
        problems.append(f"per-split counts {counts} != manifest {manifest['splits']}")
    if len(seen) != manifest["samples_written"] or images != manifest["images_written"]:
        problems.append(f"{len(seen)} samples / {images} images read, manifest says "
                        f"{manifest['samples_written']} / {manifest['images_written']}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="cmgl verify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", help="a folder written by `cmgl pack`")
    args = parser.parse_args(argv)
    problems = verify(args.dir)
    for line in problems[:MAX_PRINTED]:
        print(f"MISMATCH {line}", file=sys.stderr)
    if len(problems) > MAX_PRINTED:
        print(f"... and {len(problems) - MAX_PRINTED} more", file=sys.stderr)
    if problems:
        print(f"cmgl verify: {len(problems)} problem(s) in {args.dir}", file=sys.stderr)
        return 1
    manifest = json.loads((Path(args.dir) / schema.MANIFEST).read_text())
    print(f"cmgl verify: OK: {len(manifest['shards'])} shards, {manifest['samples_written']} samples, "
          f"{manifest['images_written']} images match {Path(args.dir) / schema.MANIFEST}")
    return 0
