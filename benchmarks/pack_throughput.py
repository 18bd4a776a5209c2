"""Packing throughput: a whole `cmgl pack` (phantom images by default), timed, and where an image's
time goes, as CSV rows.

    python benchmarks/pack_throughput.py [--image-size 512 256] [--workers 2] [--limit N]
    python benchmarks/pack_throughput.py --source nih --workers 1 2 --format png jpeg   # 354 real NIH PNGs
    python benchmarks/pack_throughput.py --png-levels 0 1 3 6   # PNG encode time/size per zlib level

Each run packs into a fresh temporary folder (so nothing is resumed), then runs `cmgl verify`
on it; one row per (image size, format, workers) goes to benchmarks/results/pack_throughput.csv
with images/s, seconds, bytes written and the verify time, beside `pack_stages`: the same source
images decoded, resized, encoded and written as shards in this process, one core, stage by stage
(their sum is the in-process floor), with the machine's load average. `--png-levels` times encoding
200 phantoms per zlib level into benchmarks/results/png_compress_level.csv (how PNG_COMPRESS_LEVEL
was chosen). `--source nih` only: the stages need real image files.
"""
from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

from PIL import Image

from stages import Stages, load_average

from cmgl_dist.bench.harness import append_results
from cmgl_dist.shards.corpus_pack import pack_corpus
from cmgl_dist.shards.download import default_reports, packaged_file
from cmgl_dist.shards.images import PNG_COMPRESS_LEVEL, encode_image, index_folder, open_grey, resize_longest
from cmgl_dist.shards.pack import pack
from cmgl_dist.shards.phantom import phantom_for_report
from cmgl_dist.shards.reports import labels_from_mesh, read_reports
from cmgl_dist.shards.verify import verify
from cmgl_dist.shards.writer import write_shard

RESULTS = Path(__file__).resolve().parent / "results"


def run_pack(args, out: str, image_size: int, workers: int, fmt: str) -> dict:
    common = dict(images=args.images, out=out, image_size=image_size, samples_per_shard=args.samples_per_shard,
                  seed=0, workers=workers, limit=args.limit, image_format=fmt,
                  quality=None if fmt == "png" else args.quality)
    if args.source == "iurr":
        return pack(reports=args.reports, metadata=args.metadata, **common)
    return pack_corpus(source=args.source, **common)


def images_column(args) -> str:
    if args.source != "iurr":
        return f"real-{args.source}"
    return args.images if args.images == "phantom" else "real"


def time_stages(folder: str, image_size: int, fmt: str, quality, samples_per_shard: int, limit) -> dict:
    """Per-image stage times of packing the images under `folder`, in this process."""
    stages, pending = Stages(), []
    paths = sorted(index_folder(folder).values())[:limit]
    with tempfile.TemporaryDirectory(prefix="pack_stages_") as out:
        for index, path in enumerate(paths):
            with stages.time("decode"):
                grey = open_grey(path, draft_size=image_size)
            with stages.time("resize"):
                image = resize_longest(grey, image_size)
            with stages.time("encode"):
                pending.append((f"s{index}", {"frontal.x": encode_image(image, fmt, quality)}))
            if len(pending) == samples_per_shard or index == len(paths) - 1:
                with stages.time("write"):
                    write_shard(Path(out) / f"{index}.tar", pending)
                pending = []
    return stages.metrics(len(paths), unit="image")


def time_pack(args, image_size: int, workers: int, fmt: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="pack_bench_") as out:
        start = time.perf_counter()
        manifest = run_pack(args, out, image_size, workers, fmt)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        problems = verify(out)
        verify_seconds = time.perf_counter() - start
    if problems:
        raise SystemExit(f"verify failed: {problems[:5]}")
    config = {"images": images_column(args), "image_size": image_size, "workers": workers, **format_config(args, fmt),
              "cpus": os.cpu_count()}
    metrics = {"samples": manifest["samples_written"], "images_written": manifest["images_written"],
               "seconds": round(seconds, 2), "images_per_s": round(manifest["images_written"] / seconds, 1),
               "mbytes": round(sum(s["bytes"] for s in manifest["shards"]) / 1e6, 1),
               "verify_seconds": round(verify_seconds, 2), "load_avg_1min": load_average()}
    return config, metrics


def format_config(args, fmt: str) -> dict:
    """The encoding columns of a row (PNG rows keep their zlib level, as before formats existed)."""
    return {"png_level": PNG_COMPRESS_LEVEL} if fmt == "png" else {"format": fmt, "quality": args.quality}


def time_png_levels(reports, levels: list[int], image_size: int, count: int = 200) -> list[tuple[dict, dict]]:
    parsed, _ = read_reports(reports)
    images = [phantom_for_report(r.uid, labels_from_mesh(r.mesh_major), r.mesh_major, image_size, 0)[0]
              for r in parsed[:count]]
    rows = []
    for level in levels:
        start, size = time.perf_counter(), 0
        for image in images:
            out = io.BytesIO()
            Image.fromarray(image).save(out, format="PNG", compress_level=level)
            size += out.tell()
        rows.append(({"image_size": image_size, "png_level": level, "images": len(images)},
                     {"ms_per_image": round((time.perf_counter() - start) / len(images) * 1e3, 2),
                      "kbytes_per_image": round(size / len(images) / 1e3, 1)}))
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reports", default=None, help="default: ../shared/data/iu-rr, else torchxrayvision's copy")
    p.add_argument("--metadata", default=None)
    p.add_argument("--source", default="iurr", help="pack's --source; nih defaults --images to the 354 real PNGs")
    p.add_argument("--images", default=None, help="default: phantom (iurr), ../shared/data/real-cxr/... (nih)")
    p.add_argument("--image-size", type=int, nargs="+", default=[512, 256])
    p.add_argument("--workers", type=int, nargs="+", default=[2])
    p.add_argument("--samples-per-shard", type=int, default=128)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--format", nargs="+", default=["png"], choices=["png", "jpeg", "webp"])
    p.add_argument("--quality", type=int, default=90, help="jpeg/webp quality")
    p.add_argument("--no-stages", action="store_true", help="skip the in-process stage timing")
    p.add_argument("--png-levels", type=int, nargs="*", help="time PNG levels instead of packing")
    args = p.parse_args(argv)
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "iu-rr"
    if args.images is None:
        args.images = str(shared.parent / "real-cxr" / "nih-cxr14-reproduce-chexnet") if args.source == "nih" else "phantom"
    if args.reports is None:
        args.reports = shared / "NLMCXR_reports.tgz" if (shared / "NLMCXR_reports.tgz").is_file() else default_reports()
    if args.metadata is None:
        csv = shared / "nlmcxr_dicom_metadata.csv.gz"
        args.metadata = csv if csv.is_file() else packaged_file("nlmcxr_dicom_metadata.csv.gz")

    if args.png_levels:
        for size in args.image_size:
            for config, metrics in time_png_levels(args.reports, args.png_levels, size):
                append_results(RESULTS / "png_compress_level.csv", "png_compress_level", config, metrics)
                print(config, metrics)
        return
    for size in args.image_size:
        for fmt in args.format:
            if args.source == "nih" and not args.no_stages:
                stages = time_stages(args.images, size, fmt, None if fmt == "png" else args.quality,
                                     args.samples_per_shard, args.limit)
                config = {"images": images_column(args), "image_size": size, **format_config(args, fmt)}
                append_results(RESULTS / "pack_throughput.csv", "pack_stages", config,
                               {**stages, "load_avg_1min": load_average()})
                print("stages", config, stages)
            for workers in args.workers:
                config, metrics = time_pack(args, size, workers, fmt)
                append_results(RESULTS / "pack_throughput.csv", "pack_throughput", config, metrics)
                print(config, metrics)


if __name__ == "__main__":
    main()
