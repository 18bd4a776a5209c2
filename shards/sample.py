"""One shard's work, run in a worker process: render or load each sample's images, write the tar.

A finished shard leaves a sidecar `.progress/<shard>.json` (its task fingerprint, sha256 and
per-sample record), written before the shard is renamed into place: a shard counts as done
only when both agree, so an interrupted pack resumes without redoing finished shards.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from PIL import Image

from cmgl_dist.shards import schema
from cmgl_dist.shards.images import ImageError, encode_image, load_image
from cmgl_dist.shards.phantom import phantom_for_report
from cmgl_dist.shards.plan import SampleSpec, ShardTask
from cmgl_dist.shards.reports import Skip
from cmgl_dist.shards.writer import json_bytes, npz_bytes, sha256_file, write_json_atomic, write_shard
from cmgl_dist.untrusted import json_loads

PROGRESS_DIR = ".progress"


def _meta(spec: SampleSpec, frontal: str, lateral: str | None, source: str, size) -> dict:
    report = spec.report
    return {"uid": report.uid, "split": spec.split, "image_source": source,
            "mesh_major": list(report.mesh_major), "mesh_automatic": list(report.mesh_automatic),
            "image_ids": list(report.image_ids), "view_positions": spec.views, "view_rule": spec.view_rule,
            "frontal_image": frontal, "lateral_image": lateral, "frontal_size": list(size)}


def phantom_sample(spec: SampleSpec, task: ShardTask) -> dict[str, bytes]:
    image, masks, findings = phantom_for_report(spec.report.uid, spec.labels, spec.report.mesh_major,
                                                task.image_size, task.seed)
    meta = _meta(spec, spec.frontal_candidates[0], None, "phantom", image.shape[::-1])
    meta["phantom_findings"] = [asdict(f) for f in findings]
    return {schema.image_member("frontal", task.image_format): encode(Image.fromarray(image), task),
            schema.MASKS: npz_bytes(masks), schema.META: json_bytes(meta)}


def encode(image: Image.Image, task) -> bytes:
    """One image member in the task's --format (and --quality)."""
    return encode_image(image, task.image_format, task.quality)


def real_sample(spec: SampleSpec, task: ShardTask, skips: list[Skip]) -> dict[str, bytes] | None:
    """Members for one real-image sample; the first usable frontal candidate wins."""
    uid = spec.report.uid
    frontal = lateral = None
    for image_id in spec.frontal_candidates:
        try:
            frontal = (image_id, load_image(task.image_paths[image_id], task.image_size))
            break
        except ImageError as e:
            skips.append(Skip(uid, str(e), image_id))
    if frontal is None:
        skips.append(Skip(uid, "no usable frontal image"))
        return None
    if spec.lateral and spec.lateral != frontal[0]:
        try:
            lateral = (spec.lateral, load_image(task.image_paths[spec.lateral], task.image_size))
        except ImageError as e:
            skips.append(Skip(uid, str(e), spec.lateral))
    members = {schema.image_member("frontal", task.image_format): encode(frontal[1], task)}
    if lateral is not None:
        members[schema.image_member("lateral", task.image_format)] = encode(lateral[1], task)
    meta = _meta(spec, frontal[0], lateral[0] if lateral else None, "real", frontal[1].size)
    members[schema.META] = json_bytes(meta)
    return members


def progress_record(out: Path, name: str) -> dict | None:
    """The progress record of shard `name` when both it and the shard are on disk, else None."""
    shard, sidecar = out / name, out / PROGRESS_DIR / f"{name}.json"
    if not (shard.exists() and sidecar.exists()):
        return None
    try:
        record = json_loads(sidecar.read_bytes())
    except ValueError:  # a damaged record vouches for nothing: the shard is redone
        return None
    return record if isinstance(record, dict) else None


def finished_record(out: Path, name: str, fingerprint: str) -> dict | None:
    """The progress record of a shard already written for this exact task, else None."""
    record = progress_record(out, name)
    if record and record.get("fingerprint") == fingerprint and record.get("sha256") == sha256_file(out / name):
        return {**record, "resumed": True}
    return None


def commit_shard(out: Path, name: str, split: str, fingerprint: str, samples: list, written: list[dict],
                 images: int, skips: list[Skip]) -> dict:
    """Write the tar under a temporary name, then its progress record, then rename it into place.
    Only the pack folder's writer (the process holding its claim) calls this."""
    sidecar = out / PROGRESS_DIR / f"{name}.json"
    sidecar.parent.mkdir(exist_ok=True)
    tmp_shard = out / f".{name}.unrenamed"
    sha256 = write_shard(tmp_shard, samples)
    record = {"name": name, "split": split, "fingerprint": fingerprint, "sha256": sha256,
              "bytes": tmp_shard.stat().st_size, "samples": written, "images_written": images,
              "skips": [s.to_json() for s in skips]}
    write_json_atomic(sidecar, record)
    tmp_shard.replace(out / name)
    return {**record, "resumed": False}


def pack_task(render, task) -> dict:
    """Write one shard (unless already finished) and return its progress record. `render(task)`
    computes the shard's content, (samples, written, images, skips), without writing anything."""
    out = Path(task.out_dir)
    fingerprint = task.fingerprint()
    if (record := finished_record(out, task.name, fingerprint)) is not None:
        return record
    return commit_shard(out, task.name, task.split, fingerprint, *render(task))


def render_shard(task: ShardTask) -> tuple[list, list[dict], int, list[Skip]]:
    """An IU-RR shard's samples (key, members), their records, the images written and the skips."""
    samples, skips, images, written = [], [], 0, []
    for spec in task.samples:
        if task.images == "phantom":
            members = phantom_sample(spec, task)
        else:
            members = real_sample(spec, task, skips)
            if members is None:
                continue
        members[schema.REPORT] = json_bytes(spec.report.text_json())
        members[schema.LABELS] = json_bytes(spec.labels)
        images += sum(m in schema.FRONTAL_MEMBERS + schema.LATERAL_MEMBERS for m in members)
        samples.append((spec.report.uid, members))
        written.append({"uid": spec.report.uid, "labels": spec.labels})
    return samples, written, images, skips
