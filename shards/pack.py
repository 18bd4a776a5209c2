"""`cmgl pack`: IU-RR reports (+ real or phantom frontal images) -> WebDataset shards + manifest.

    cmgl pack --reports NLMCXR_reports.tgz --images phantom \
              --metadata nlmcxr_dicom_metadata.csv.gz --out data/iurr

Steps: read reports -> pick images -> split -> plan shards (all deterministic) -> write shards
in parallel (finished shards of an interrupted run are kept) -> manifest.json, written last.
Other corpora (`--source nih|chexpert|mimic|padchest|csv`) are packed by `corpus_pack.py`.
"""
from __future__ import annotations

import argparse
import csv
import logging
import tarfile
import time
from pathlib import Path

from cmgl_dist.logs import init_logger
from cmgl_dist.shards.iurr_kaggle import (KaggleLayoutError, index_kaggle_images, kaggle_tables, kaggle_views,
                                          read_kaggle_reports)
from cmgl_dist.shards.bounds import OutOfBounds, bounded, check_bounds, check_format
from cmgl_dist.shards.download import default_reports, packaged_file
from cmgl_dist.shards.images import DEFAULT_QUALITY, extract_archive, index_folder
from cmgl_dist.shards.manifest import build_manifest, describe_skips
from cmgl_dist.shards.metadata import read_view_positions
from cmgl_dist.locks import FolderBusy
from cmgl_dist.shards.ray_pack import RayUnavailable, check_address
from cmgl_dist.shards.outdir import STAGED_IMAGES, OutRefused, claim, one_writer, remove_stale
from cmgl_dist.shards.plan import plan_samples, plan_shards
from cmgl_dist.shards.provenance import CONTENT_ARGUMENTS, pack_inputs
from cmgl_dist.shards.reports import read_reports
from cmgl_dist.shards.sample import render_shard
from cmgl_dist.shards.shard_jobs import run_tasks
from cmgl_dist.shards.schema import DEFAULT_IMAGE_FORMAT, IMAGE_FORMATS, MANIFEST
from cmgl_dist.shards.sources import SOURCE_NAMES, UNCERTAIN_POLICIES
from cmgl_dist.shards.writer import write_json_atomic

log = logging.getLogger("cmgl.pack")


class NothingUsable(RuntimeError):
    """The inputs hold nothing that can be packed. `main` exits 1 on it, as on a refused --out or a
    bad --format/--quality; 2 is a busy folder or (argparse) an argument outside its bounds."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cmgl pack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="iurr", choices=SOURCE_NAMES,
                   help="corpus layout (default iurr); the others are described in shards/SCHEMA.md")
    p.add_argument("--reports", help="iurr: NLMCXR_reports.tgz or a folder of report XML (default: torchxrayvision's "
                   "copy, else download), or Kaggle's indiana_reports.csv (indiana_projections.csv beside it) or its "
                   "folder; chexpert: CheXpert Plus report CSV; mimic: folder holding files/pNN/.../sN.txt")
    p.add_argument("--images", required=True, help="iurr: NLMCXR_png.tgz, a folder of PNG/JPEG named by image id, or "
                   "'phantom'; other sources: the corpus folder, or a tar or zip archive of it")
    p.add_argument("--labels", help="label CSV (not iurr; default: the table shipped in torchxrayvision or found "
                   "in the corpus folder; required for --source csv)")
    p.add_argument("--uncertain", choices=UNCERTAIN_POLICIES, default="zeros",
                   help="CheXpert/MIMIC/csv labels of -1: ones (U-Ones), zeros (U-Zeros) or ignore (leave the image out)")
    p.add_argument("--metadata", help="DICOM metadata CSV (gzip accepted) for view positions "
                   "(default: torchxrayvision's copy when installed; 'none' for the XML-order fallback)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--image-size", type=bounded("image_size"), default=512, help="longest image side in pixels (aspect kept)")
    p.add_argument("--samples-per-shard", type=bounded("samples_per_shard"), default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=bounded("workers"), default=2)
    p.add_argument("--replace", action="store_true",
                   help="rewrite a pack in --out that was made from other inputs (default: refuse)")
    p.add_argument("--limit", type=bounded("limit"), help="pack a stratified subset of this many reports (development, tests)")
    p.add_argument("--format", dest="image_format", default=DEFAULT_IMAGE_FORMAT, choices=tuple(IMAGE_FORMATS),
                   help="shard image encoding: png (lossless, default), jpeg or webp (lossy, smaller, faster to "
                        "decode; rates in docs/PERFORMANCE.md)")
    p.add_argument("--quality", type=bounded("quality"), help=f"jpeg/webp quality 1-100 (default {DEFAULT_QUALITY})")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the shard jobs as Ray tasks: on the cluster at ADDRESS, or (no ADDRESS) the one "
                        "RAY_ADDRESS names, else a local one; this process writes the manifest")
    return p


def _image_paths(images: str, out: Path, wanted: set[str], kaggle: bool = False) -> tuple[dict[str, str] | None, list]:
    """image id -> file, None for phantom; plus skips from reading an archive."""
    if images == "phantom":
        return None, []
    source = Path(images)
    if source.is_dir():
        return {k: str(v) for k, v in (index_kaggle_images if kaggle else index_folder)(source).items()}, []
    if kaggle:
        raise NothingUsable(f"--images {images!r}: the Kaggle IU-RR layout takes its images folder (unzipped)")
    if source.is_file() and tarfile.is_tarfile(source):
        extracted = out / STAGED_IMAGES
        log.info("extracting %d images from %s into %s", len(wanted), source, extracted)
        staged, skips = extract_archive(source, extracted, wanted)
        return {k: str(v) for k, v in staged.items()}, [s.to_json() for s in skips]
    raise NothingUsable(f"--images {images!r}: not 'phantom', a folder, or a tar archive")


def _fingerprint_inputs(reports: Path, images: str, metadata, arguments: dict, out: Path) -> dict:
    if images != "phantom" and not Path(images).exists():
        raise NothingUsable(f"--images {images!r}: not 'phantom', a folder, or a tar archive")
    try:
        return pack_inputs({"reports": reports, "metadata": metadata, "images": images},
                           {k: arguments[k] for k in CONTENT_ARGUMENTS}, out=out)
    except OSError as e:
        raise NothingUsable(f"cannot read an input: {e}") from None


@one_writer
def pack(*, images: str, out: str | Path, reports: str | Path | None = None, metadata: str | Path | None = None,
         image_size: int = 512, samples_per_shard: int = 128, seed: int = 0, workers: int = 2,
         limit: int | None = None, replace: bool = False, image_format: str = DEFAULT_IMAGE_FORMAT,
         quality: int | None = None, ray_address: str | None = None) -> dict:
    """Pack and return the manifest. Raises NothingUsable when nothing could be packed, OutRefused
    when `out` holds files it did not write or (unless `replace`) a pack made from other inputs.
    `ray_address` (not None) runs the shard jobs as Ray tasks (`run_tasks`)."""
    check_bounds(image_size=image_size, samples_per_shard=samples_per_shard, workers=workers, limit=limit)
    quality = check_format(image_format, quality)
    out = Path(out)
    reports = Path(reports) if reports else default_reports()
    try:
        kaggle = kaggle_tables(reports)  # Kaggle's CSVs instead of Open-i's XML: iurr_kaggle.py
        parsed, xml_skips = read_kaggle_reports(*kaggle) if kaggle else read_reports(reports)
    except (OSError, tarfile.TarError, KaggleLayoutError) as e:
        raise NothingUsable(f"--reports {reports}: {e}") from None
    if kaggle and metadata is not None and str(metadata).lower() != "none":
        log.warning("--metadata %s not read: the Kaggle layout's views come from %s", metadata, kaggle[1])
    if kaggle:
        metadata = kaggle[1]  # recorded (by content) as the pack's view input
    elif metadata is None:
        metadata = packaged_file("nlmcxr_dicom_metadata.csv.gz")
    elif str(metadata).lower() == "none":
        metadata = None
    views = kaggle_views(metadata) if kaggle else {}
    if metadata is None:
        log.warning("no --metadata: choosing frontal images by the XML-order fallback")
    elif not kaggle:
        try:
            views = read_view_positions(metadata)
        except (OSError, ValueError, csv.Error) as e:
            log.warning("--metadata %s unreadable (%s): choosing frontal images by the XML-order fallback", metadata, e)
    arguments = {"reports": str(reports), "images": images, "metadata": str(metadata) if metadata else None,
                 "image_size": image_size, "samples_per_shard": samples_per_shard, "seed": seed, "limit": limit,
                 "image_format": image_format, "quality": quality}
    inputs = _fingerprint_inputs(reports, images, metadata if views else None, arguments, out)  # what was used
    claim(out, inputs, replace)
    (out / MANIFEST).unlink(missing_ok=True)  # the folder is incomplete until the end
    wanted = {i for r in parsed for i in r.image_ids}
    image_paths, archive_skips = _image_paths(images, out, wanted, kaggle=bool(kaggle))
    usable, report_skips, image_skips = plan_samples(parsed, views, image_paths)
    if not usable:
        skips = [s.to_json() for s in xml_skips + report_skips + image_skips] + archive_skips
        raise NothingUsable(f"no report with text and a usable frontal image among {len(parsed)} read from "
                            f"{reports}: {describe_skips(skips)}")
    tasks = plan_shards(usable, views, seed=seed, samples_per_shard=samples_per_shard, limit=limit,
                        out_dir=str(out), image_size=image_size, images=images, image_paths=image_paths,
                        image_format=image_format, quality=quality)
    remove_stale(out, {t.name for t in tasks})

    started = time.perf_counter()
    records = run_tasks(render_shard, tasks, workers, ray_address)
    seconds = time.perf_counter() - started
    manifest = build_manifest(arguments=arguments, inputs=inputs, reports_read=len(parsed),
                              report_skips=[s.to_json() for s in xml_skips + report_skips],
                              image_skips=archive_skips + [s.to_json() for s in image_skips],
                              records=records, image_source="phantom" if images == "phantom" else "real")
    if manifest["samples_written"] == 0:
        raise NothingUsable("every planned sample was skipped: "
                            f"{describe_skips(manifest['skipped_reports'] + manifest['skipped_images'])}")
    write_json_atomic(out / MANIFEST, manifest)
    resumed = sum(r["resumed"] for r in records)
    fresh_images = sum(r["images_written"] for r in records if not r["resumed"])
    log.info("packed %d samples (%d images) into %d shards (%d already done) in %.1f s: %.1f images/s, %d workers",
             manifest["samples_written"], manifest["images_written"], len(records), resumed, seconds,
             fresh_images / max(seconds, 1e-9), workers)
    return manifest


def main(argv=None) -> int:
    init_logger()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # an argument error exits 2 (argparse's code), before any work
        check_format(args.image_format, args.quality)
    except OutOfBounds as e:
        parser.error(str(e))
    if args.ray is not None:
        try:
            check_address(args.ray)
        except RayUnavailable as e:
            log.error("%s", e)
            return 2
    if args.source != "iurr":
        return pack_other_source(parser, args)
    if args.labels or args.uncertain != "zeros":
        parser.error("--labels and --uncertain are for --source nih/chexpert/mimic/padchest/csv, not iurr")
    try:
        manifest = pack(images=args.images, out=args.out, reports=args.reports, metadata=args.metadata,
                        image_size=args.image_size, samples_per_shard=args.samples_per_shard, seed=args.seed,
                        workers=args.workers, limit=args.limit, replace=args.replace, image_format=args.image_format,
                        quality=args.quality, ray_address=args.ray)
    except (NothingUsable, OutRefused, OutOfBounds) as e:
        log.error("%s", e)
        return 1
    except (FolderBusy, RayUnavailable) as e:
        log.error("%s", e)
        return 2
    log.info("skips: %s; wrote %s", manifest["skip_reasons"], Path(args.out) / MANIFEST)
    return 0


def pack_other_source(parser: argparse.ArgumentParser, args) -> int:
    from cmgl_dist.shards.corpus_pack import pack_corpus
    from cmgl_dist.shards.sources import SourceError

    if args.metadata:
        parser.error("--metadata is IU-RR's DICOM table; other sources read views from their own tables")
    try:
        pack_corpus(source=args.source, images=args.images, out=args.out, labels=args.labels,
                    reports=args.reports, uncertain=args.uncertain, image_size=args.image_size,
                    samples_per_shard=args.samples_per_shard, seed=args.seed, workers=args.workers,
                    limit=args.limit, replace=args.replace, image_format=args.image_format, quality=args.quality,
                    ray_address=args.ray)
    except (SourceError, OSError, OutRefused, OutOfBounds) as e:
        log.error("%s", e)
        return 1
    except (FolderBusy, RayUnavailable) as e:
        log.error("%s", e)
        return 2
    log.info("wrote %s", Path(args.out) / MANIFEST)
    return 0
