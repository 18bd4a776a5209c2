"""The pack plan: which reports become samples, their split, and which shard each lands in.

Everything here is decided up front and deterministically, so workers only render and write,
and a rerun recomputes the same plan and can tell which shards are already finished.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from cmgl_dist.shards.metadata import choose_views
from cmgl_dist.shards.reports import Report, Skip, labels_from_mesh
from cmgl_dist.shards.schema import PATHOLOGIES, SPLITS, shard_name
from cmgl_dist.shards.shard_jobs import code_digest
from cmgl_dist.shards.split import assign_splits, uid_hash
from cmgl_dist.shards.writer import sha256_file

# The modules that produce an IU-RR shard's bytes: a task's fingerprint covers their source.
CODE = ("images", "phantom", "sample", "shard_jobs", "writer")


@dataclass(frozen=True)
class SampleSpec:
    report: Report
    labels: dict
    split: str
    frontal_candidates: tuple[str, ...]  # phantom: the first one names the image
    lateral: str | None
    views: dict  # image id -> view position ('' unknown) for every image of the report
    view_rule: str


@dataclass(frozen=True)
class ShardTask:
    name: str
    split: str
    samples: tuple[SampleSpec, ...]
    out_dir: str
    image_size: int
    seed: int
    images: str  # "phantom", or a folder holding the images by id
    image_paths: dict  # image id -> path (real images only)
    image_format: str = "png"  # --format
    quality: int | None = None  # --quality (JPEG, WebP)

    def fingerprint(self) -> str:
        """Changes whenever anything that goes into the shard's bytes changes, code included.
        Images count by content (sha256), not by path or size."""
        files = {i: sha256_file(p) if Path(p).is_file() else None for i, p in sorted(self.image_paths.items())}
        spec = {"samples": [asdict(s) for s in self.samples], "size": self.image_size, "seed": self.seed,
                "images": self.images, "files": files, "code": code_digest(*CODE),
                "format": [self.image_format, self.quality]}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    def __len__(self) -> int:
        return len(self.samples)


def plan_samples(reports: list[Report], views: dict[str, str], image_paths: dict[str, str] | None
                 ) -> tuple[list[tuple[Report, tuple[str, ...], str | None, str]], list[Skip], list[Skip]]:
    """Reports that can become samples, with their frontal candidates, lateral and view rule.

    `image_paths` is None for phantom images; otherwise image ids without a file are skipped
    here (reason "missing file"), before splitting. Returns (usable, report skips, image skips).
    """
    usable, report_skips, image_skips = [], [], []
    for report in reports:
        if not report.image_ids:
            report_skips.append(Skip(report.uid, "no images"))
            continue
        if not report.has_text:
            report_skips.append(Skip(report.uid, "no FINDINGS or IMPRESSION text"))
            continue
        ids = report.image_ids
        if image_paths is not None:
            image_skips += [Skip(report.uid, "missing file", i) for i in ids if i not in image_paths]
            ids = tuple(i for i in ids if i in image_paths)
        choice = choose_views(ids, views)
        if not choice.frontal_candidates:
            report_skips.append(Skip(report.uid, "no usable frontal image"))
            continue
        usable.append((report, choice.frontal_candidates, choice.lateral, choice.rule))
    return usable, report_skips, image_skips


def stratified_subset(uids_labels: dict[str, dict], limit: int, seed: int, per_pathology: int = 8) -> set[str]:
    """`limit` uids: the first `per_pathology` positives of each pathology (rarest first) in
    seeded-hash order, then the rest in that order. Enough positives for every split to get some."""
    order = sorted(uids_labels, key=lambda u: uid_hash(u, seed + 1))
    chosen: list[str] = []
    for pathology in sorted(PATHOLOGIES, key=lambda p: sum(lab[p] for lab in uids_labels.values())):
        have = sum(uids_labels[u][pathology] for u in chosen)
        extra = [u for u in order if uids_labels[u][pathology] and u not in chosen][: max(0, per_pathology - have)]
        chosen += extra
    taken = set(chosen)
    chosen += [u for u in order if u not in taken]
    return set(chosen[:limit])


def plan_shards(usable, views: dict[str, str], *, seed: int, samples_per_shard: int, limit: int | None,
                out_dir: str, image_size: int, images: str, image_paths: dict[str, str] | None,
                image_format: str = "png", quality: int | None = None) -> list[ShardTask]:
    labels = {report.uid: labels_from_mesh(report.mesh_major) for report, *_ in usable}
    if limit is not None:
        keep = stratified_subset(labels, limit, seed)
        usable = [item for item in usable if item[0].uid in keep]
        labels = {u: labels[u] for u in keep}
    split = assign_splits(labels, seed)
    specs = {name: [] for name in SPLITS}
    for report, frontal, lateral, rule in usable:
        specs[split[report.uid]].append(SampleSpec(
            report=report, labels=labels[report.uid], split=split[report.uid], frontal_candidates=frontal,
            lateral=lateral, views={i: views.get(i, "") for i in report.image_ids}, view_rule=rule))
    tasks = []
    for name in SPLITS:
        ordered = sorted(specs[name], key=lambda s: uid_hash(s.report.uid, seed))  # shuffled, fixed
        for index, start in enumerate(range(0, len(ordered), samples_per_shard)):
            chunk = tuple(ordered[start:start + samples_per_shard])
            wanted = {i for s in chunk for i in s.frontal_candidates + ((s.lateral,) if s.lateral else ())}
            tasks.append(ShardTask(
                name=shard_name(name, index), split=name, samples=chunk, out_dir=out_dir, image_size=image_size,
                seed=seed, images=images,
                image_paths={} if image_paths is None else {i: image_paths[i] for i in sorted(wanted)},
                image_format=image_format, quality=quality))
    return tasks
