"""An IU-RR shard's content, computed in a worker: each sample's images (rendered phantoms or
loaded files), report, labels and meta. Writing it is `shard_jobs`' job, the same for every corpus.
"""
from __future__ import annotations

from dataclasses import asdict

from PIL import Image

from cmgl_dist.shards import schema
from cmgl_dist.shards.images import ImageError, load_image
from cmgl_dist.shards.phantom import phantom_for_report
from cmgl_dist.shards.plan import SampleSpec, ShardTask
from cmgl_dist.shards.reports import Skip
from cmgl_dist.shards.shard_jobs import encode
from cmgl_dist.shards.writer import json_bytes, npz_bytes


def _meta(spec: SampleSpec, frontal: str, lateral: str | None, source: str, size) -> dict:
    """meta.json. Every field name is fixed (data values are never keys), so that columnar readers
    of the shards (Hugging Face `datasets`' webdataset builder) see one schema across samples."""
    report = spec.report
    views = [{"image_id": image_id, "view_position": view} for image_id, view in spec.views.items()]
    return {"uid": report.uid, "split": spec.split, "image_source": source,
            "mesh_major": list(report.mesh_major), "mesh_automatic": list(report.mesh_automatic),
            "image_ids": list(report.image_ids), "view_positions": views, "view_rule": spec.view_rule,
            "frontal_image": frontal, "lateral_image": lateral, "frontal_size": list(size)}


def phantom_sample(spec: SampleSpec, task: ShardTask) -> dict[str, bytes]:
    image, masks, findings = phantom_for_report(spec.report.uid, spec.labels, spec.report.mesh_major,
                                                task.image_size, task.seed)
    meta = _meta(spec, spec.frontal_candidates[0], None, "phantom", image.shape[::-1])
    meta["phantom_findings"] = [asdict(f) for f in findings]
    return {schema.image_member("frontal", task.image_format): encode(Image.fromarray(image), task),
            schema.MASKS: npz_bytes(masks), schema.META: json_bytes(meta)}


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
