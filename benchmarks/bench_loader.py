"""Loader throughput: samples/s per worker through decode + augment + tokenize, and where a sample's
time goes, as CSV rows.

    python benchmarks/bench_loader.py SHARDS_DIR [SHARDS_DIR ...] [--workers 0 2] [--batches 20]

For each packed folder (manifest.json; e.g. the same images packed as PNG and as JPEG, timed in
the same run), appends to benchmarks/results/loader_throughput.csv:
- `loader_stages`: the stages of one sample in this process, one core, over the same train
  images the loader reads: read (tar + the cheap checks), decode, resize (to data.image_size, a
  padded square), augment (crop, affine, jitter, normalise), tokenize and collate (per batch, per
  sample); their sum is the in-process floor;
- `loader_throughput`: `make_loader` per worker count, timed after the first batch (worker
  start-up and the shuffle buffer's first fill are left out), beside that floor.
Every row carries the pack's --format and stored size and the machine's load average.
"""
from __future__ import annotations

import argparse
import itertools
import os
import random
import time
from pathlib import Path

import torch
import webdataset as wds
from stages import Stages, load_average

from cmgl_dist.bench.harness import append_results
from cmgl_dist.config import DataConfig
from cmgl_dist.data import images, make_loader, shard_urls
from cmgl_dist.data.samples import SkipCounter, choose_text, parse
from cmgl_dist.data.shardlist import pack_manifest
from cmgl_dist.data.text import tokenize_texts

RESULTS = Path(__file__).resolve().parent / "results" / "loader_throughput.csv"


def load_tokenizer(name: str):
    from cmgl_dist.model import text_backbone

    return text_backbone.minilm_tokenizer() if name == "minilm" else text_backbone.load_tokenizer(name)


def time_loader(urls, cfg: DataConfig, tokenizer, batch_size: int, batches: int) -> tuple[int, float]:
    """(samples timed, seconds) over `batches` batches after the first."""
    loader = make_loader(urls, cfg, tokenizer, train=True, batch_size=batch_size, seed=0,
                         batches_per_epoch=batches + 1)
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    samples = sum(len(batch["keys"]) for batch in iterator)
    return samples, time.perf_counter() - start


def time_stages(urls, cfg: DataConfig, tokenizer, batch_size: int, samples: int) -> dict:
    """Per-sample stage times over the first `samples` train samples (cycling the shards if fewer),
    on one torch thread as in a loader worker (DataLoader workers run with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _time_stages(urls, cfg, tokenizer, batch_size, samples)
    finally:
        torch.set_num_threads(threads)


def _time_stages(urls, cfg: DataConfig, tokenizer, batch_size: int, samples: int) -> dict:
    stages, counter = Stages(), SkipCounter()
    raw = wds.tarfile_samples(itertools.cycle([{"url": u} for u in urls]))
    batch, done = [], 0
    while done < samples:
        with stages.time("read"):
            record = parse(next(raw), 0, counter, require_text=not cfg.text_from_labels)
        if record is None:
            continue
        with stages.time("decode"):
            grey = images.decode_grey(record.frontal, cfg.image_size)
        with stages.time("resize"):
            square = images.square_resize(grey, cfg.image_size)
        with stages.time("augment"):
            rng = random.Random(done)
            view = images.normalise_to_rgb(images.train_view(square, cfg.crop_size, rng, cfg.augment))
        batch.append((view, choose_text(record, cfg.text_mode, 0, 0, cfg.text_from_labels), record.labels))
        done += 1
        if len(batch) == batch_size or done == samples:
            with stages.time("tokenize"):
                tokenize_texts(tokenizer, [text for _, text, _ in batch], cfg.max_length, cfg.special_words)
            with stages.time("collate"):
                torch.stack([v for v, _, _ in batch]), torch.tensor([labels for _, _, labels in batch])
            batch = []
    return stages.metrics(done)


def pack_facts(shards: str) -> dict:
    manifest = pack_manifest(shards)
    arguments = manifest["arguments"]
    return {"shards": os.path.basename(os.path.normpath(shards)), "format": arguments.get("image_format") or "png",
            "stored_size": arguments["image_size"], "has_text": not manifest.get("samples_with_text")
            or manifest["samples_with_text"]["train"] > 0}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("shards", nargs="+", help="packed folders holding manifest.json")
    p.add_argument("--split", default="train")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--batches", type=int, default=20, help="timed batches per worker count")
    p.add_argument("--stage-samples", type=int, default=256, help="samples timed stage by stage, in this process")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--crop-size", type=int, default=224)
    p.add_argument("--text-mode", default="report", choices=["report", "sentence"])
    p.add_argument("--tokenizer", default="minilm", help="'minilm' (offline) or a transformers name/folder")
    p.add_argument("--decode", nargs="+", default=["cpu"], choices=["cpu", "gpu"],
                   help="data.decode values to time (gpu: JPEG shards, a CUDA device; the stages are the CPU path's)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)

    tokenizer = load_tokenizer(args.tokenizer)
    for shards in args.shards:
        urls, facts = shard_urls(shards, args.split), pack_facts(shards)
        base = dict(shards=shards, image_size=args.image_size, crop_size=args.crop_size, text_mode=args.text_mode,
                    text_from_labels=not facts.pop("has_text"))
        common = {**facts, "split": args.split, "batch_size": args.batch_size, "image_size": args.image_size,
                  "crop_size": args.crop_size, "text_mode": args.text_mode, "text_from_labels": base["text_from_labels"],
                  "cpu_count": os.cpu_count()}
        stages = time_stages(urls, DataConfig(**base, workers=0), tokenizer, args.batch_size, args.stage_samples)
        append_results(args.out, "loader_stages", common, {**stages, "load_avg_1min": load_average()})
        print(f"{facts['shards']} ({facts['format']}, stored {facts['stored_size']}): stages {stages}")
        for decode, workers in itertools.product(args.decode, args.workers):
            cfg = DataConfig(**base, workers=workers, decode=decode)
            samples, seconds = time_loader(urls, cfg, tokenizer, args.batch_size, args.batches)
            per_s = samples / seconds
            config = {**common, "augment": cfg.augment, "workers": workers, **({"decode": decode} if decode != "cpu" else {})}
            append_results(args.out, "loader_throughput", config, {
                "samples": samples, "seconds": round(seconds, 3), "samples_per_s": round(per_s, 1),
                "samples_per_s_per_worker": round(per_s / max(1, workers), 1),
                "floor_samples_per_s": stages["floor_samples_per_s"], "load_avg_1min": load_average()})
            print(f"  decode={decode} workers={workers}: {samples} samples in {seconds:.2f} s = {per_s:.1f} samples/s "
                  f"({per_s / max(1, workers):.1f} per worker; floor {stages['floor_samples_per_s']}); "
                  f"load {load_average()}")


if __name__ == "__main__":
    main()
