"""`cmgl pack --source {nih,chexpert,mimic,padchest,csv}`: a labelled corpus -> shards + manifest.

    cmgl pack --source nih --images /data/nih/images --out data/nih          # labels: torchxrayvision
    cmgl pack --source mimic --images /data/mimic-cxr-jpg/2.0.0 --uncertain ones --out data/mimic

Steps: the source's records (one frontal image each) -> splits by patient (official test split
first) -> shards of a seeded shuffle per split -> workers decode, resize and write them, finished
shards of an interrupted run kept (`.progress/`, as IU-RR) -> manifest.json, last.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cmgl_dist.atomic import atomic_path
from cmgl_dist.shards import schema
from cmgl_dist.shards.archive import MAX_MEMBER_BYTES, read_member, tolerant_members
from cmgl_dist.shards.bounds import check_bounds, check_format
from cmgl_dist.shards.images import IMAGE_SUFFIXES, ImageError, load_image
from cmgl_dist.shards.manifest import build_manifest, describe_skips
from cmgl_dist.shards.outdir import STAGED_IMAGES, claim, one_writer, remove_stale
from cmgl_dist.shards.patient_split import patient_splits
from cmgl_dist.shards.provenance import CONTENT_ARGUMENTS, pack_inputs
from cmgl_dist.shards.reports import Skip
from cmgl_dist.shards.shard_jobs import code_digest, encode, run_tasks
from cmgl_dist.shards.sources import SOURCES, CorpusRecord, Exclusions, SourceError, SourceInput
from cmgl_dist.shards.sources.record import distinct_keys
from cmgl_dist.shards.split import uid_hash
from cmgl_dist.shards.writer import json_bytes, sha256_file, write_json_atomic

log = logging.getLogger("cmgl.pack")

TEXT_FILES = (".csv", ".gz", ".txt")
# The modules that produce a corpus shard's bytes: a task's fingerprint covers their source.
CODE = ("images", "shard_jobs", "writer", "corpus_pack")


@dataclass(frozen=True)
class CorpusShardTask:
    source: str
    name: str
    split: str
    records: tuple[CorpusRecord, ...]
    out_dir: str
    image_size: int
    image_format: str = "png"  # --format
    quality: int | None = None  # --quality (JPEG, WebP)

    def fingerprint(self) -> str:
        """Changes whenever anything that goes into the shard's bytes changes, code included."""
        contents = [sha256_file(r.image) if Path(r.image).is_file() else None for r in self.records]
        spec = {"records": [dataclasses.asdict(r) for r in self.records], "contents": contents,
                "size": self.image_size, "code": code_digest(*CODE), "format": [self.image_format, self.quality]}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    def __len__(self) -> int:
        return len(self.records)


def corpus_members(record: CorpusRecord, task: CorpusShardTask, image) -> dict[str, bytes]:
    source, split = task.source, task.split
    meta = {"uid": record.key, "split": split, "image_source": "real", "source": source,
            "patient_id": record.patient, "view": record.view, "language": record.language,
            "frontal_image": record.image_ref, "lateral_image": None, "frontal_size": list(image.size),
            "uncertain": list(record.uncertain)}
    members = {schema.image_member("frontal", task.image_format): encode(image, task),
               schema.LABELS: json_bytes(record.labels),
               schema.META: json_bytes(meta)}
    if record.text is not None:
        members[schema.REPORT] = json_bytes({"findings": record.text.get("findings", ""),
                                             "impression": record.text.get("impression", ""),
                                             "indication": "", "comparison": ""})
    return members


def render_corpus_shard(task: CorpusShardTask) -> tuple[list, list[dict], int, list[Skip]]:
    """A corpus shard's samples, their records, the images written and the skips (`shard_jobs.Rendered`)."""
    samples, written, skips = [], [], []
    for record in task.records:
        try:
            image = load_image(record.image, task.image_size)
        except ImageError as e:
            skips.append(Skip(record.key, str(e), record.image_ref))
            continue
        samples.append((record.key, corpus_members(record, task, image)))
        written.append({"uid": record.key, "labels": record.labels, "text": record.text is not None})
    return samples, written, len(samples), skips


def _wanted_member(name: str) -> bool:
    relative = Path(name)
    return (not relative.is_absolute() and ".." not in relative.parts
            and name.lower().endswith(IMAGE_SUFFIXES + TEXT_FILES))


def _extract(dest: Path, name: str, data: bytes) -> None:
    target = dest / name
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def _extract_tar(source: Path, dest: Path, skips: list[dict]) -> None:
    with tarfile.open(source, "r:*") as tar:
        for member in tolerant_members(tar, lambda message: skips.append(Skip("", message).to_json())):
            if not member.isfile() or not _wanted_member(member.name) or (dest / member.name).exists():
                continue
            data = read_member(tar, member)
            if isinstance(data, str):
                skips.append(Skip("", data, member.name).to_json())
                continue
            _extract(dest, member.name, data)


def _extract_zip(source: Path, dest: Path, skips: list[dict]) -> None:
    """CheXpert ships as a zip."""
    with zipfile.ZipFile(source) as archive:
        for info in archive.infolist():
            if info.is_dir() or not _wanted_member(info.filename) or (dest / info.filename).exists():
                continue
            if info.file_size > MAX_MEMBER_BYTES:
                skips.append(Skip("", f"member too large: {info.file_size} bytes > {MAX_MEMBER_BYTES}",
                                  info.filename).to_json())
                continue
            try:
                with archive.open(info) as member:
                    data = member.read(MAX_MEMBER_BYTES)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                skips.append(Skip("", f"unreadable archive member: {e}", info.filename).to_json())
                continue
            _extract(dest, info.filename, data)


def image_root(images: str, out: Path) -> tuple[Path, list[dict]]:
    """--images as a folder; a tar or zip archive is extracted once into OUT/.images, paths kept
    (an interrupted extraction resumes: files already there are kept)."""
    source = Path(images)
    if source.is_dir():
        return source, []
    dest, skips = out / STAGED_IMAGES, []
    if source.is_file() and tarfile.is_tarfile(source):
        log.info("extracting %s into %s", source, dest)
        _extract_tar(source, dest, skips)
    elif source.is_file() and zipfile.is_zipfile(source):
        log.info("extracting %s into %s", source, dest)
        _extract_zip(source, dest, skips)
    else:
        raise SourceError(f"--images {images!r}: not a folder, a tar or a zip archive")
    return dest, skips


def plan_corpus_shards(source: str, records: list[CorpusRecord], *, seed: int, samples_per_shard: int, out_dir: str,
                       image_size: int, image_format: str = "png", quality: int | None = None) -> list[CorpusShardTask]:
    split_of = patient_splits([(r.patient, r.official_split) for r in records], seed)
    tasks = []
    for split in schema.SPLITS:
        ordered = sorted((r for r in records if split_of[r.patient] == split), key=lambda r: uid_hash(r.key, seed))
        for index, start in enumerate(range(0, len(ordered), samples_per_shard)):
            tasks.append(CorpusShardTask(source, schema.shard_name(split, index), split,
                                         tuple(ordered[start:start + samples_per_shard]), out_dir, image_size,
                                         image_format, quality))
    return tasks


def read_records(source: str, inputs: SourceInput, *, seed: int, limit: int | None) -> tuple[list[CorpusRecord], dict]:
    """The source's records (a seeded subset of `limit` of them), and the counted exclusions."""
    excluded = Exclusions()
    records = distinct_keys(source, list(SOURCES[source].records(inputs, excluded)))
    if limit is not None:
        records = sorted(records, key=lambda r: uid_hash(r.key, seed + 1))[:limit]
    return records, dict(sorted(excluded.counts.items()))


def text_summary(records: list[dict]) -> dict:
    return {split: sum(s["text"] for r in records if r["split"] == split for s in r["samples"])
            for split in schema.SPLITS}


@one_writer
def pack_corpus(*, source: str, images: str, out: str | Path, labels: str | None = None,
                reports: str | None = None, uncertain: str = "zeros", image_size: int = 512,
                samples_per_shard: int = 128, seed: int = 0, workers: int = 2, limit: int | None = None,
                replace: bool = False, image_format: str = "png", quality: int | None = None,
                ray_address: str | None = None) -> dict:
    """Pack a labelled corpus and return the manifest. Raises SourceError when nothing is usable,
    outdir.OutRefused when `out` is not this pack's folder (see pack.pack)."""
    if source not in SOURCES:
        raise SourceError(f"--source {source!r}: choose one of {', '.join(SOURCES)}")
    check_bounds(image_size=image_size, samples_per_shard=samples_per_shard, workers=workers, limit=limit)
    quality = check_format(image_format, quality)
    out = Path(out)
    arguments = {"source": source, "images": images, "labels": labels, "reports": reports, "uncertain": uncertain,
                 "image_size": image_size, "samples_per_shard": samples_per_shard, "seed": seed, "limit": limit,
                 "image_format": image_format, "quality": quality}
    provenance = pack_inputs({"images": images, "labels": labels, "reports": reports},
                             {k: arguments[k] for k in ("source", "uncertain") + CONTENT_ARGUMENTS}, out=out)
    claim(out, provenance, replace)
    (out / schema.MANIFEST).unlink(missing_ok=True)  # the folder is incomplete until the end
    root, archive_skips = image_root(images, out)
    inputs = SourceInput(images=root, labels=Path(labels) if labels else None,
                         reports=Path(reports) if reports else None, uncertain=uncertain)
    records, excluded = read_records(source, inputs, seed=seed, limit=limit)
    if not records:
        raise SourceError(f"--source {source}: no usable image under {images} (left out: {excluded})")
    tasks = plan_corpus_shards(source, records, seed=seed, samples_per_shard=samples_per_shard, out_dir=str(out),
                               image_size=image_size, image_format=image_format, quality=quality)
    remove_stale(out, {t.name for t in tasks})
    results = run_tasks(render_corpus_shard, tasks, workers, ray_address)
    manifest = build_manifest(arguments=arguments, inputs=provenance, reports_read=len(records), report_skips=[],
                              image_skips=archive_skips, records=results, image_source="real")
    manifest.update(source=source, languages=sorted({r.language for r in records}), excluded=excluded,
                    samples_with_text=text_summary(results))
    if manifest["samples_written"] == 0:
        raise SourceError("every planned sample was skipped: "
                          f"{describe_skips(manifest['skipped_reports'] + manifest['skipped_images'])}")
    write_json_atomic(out / schema.MANIFEST, manifest)
    log.info("packed %d %s samples into %d shards; left out: %s; skipped: %s", manifest["samples_written"], source,
             len(results), excluded, manifest["skip_reasons"])
    return manifest
