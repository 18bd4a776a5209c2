"""Epoch restart: the wait for an epoch's first batch, a new loader per epoch against persistent workers.

    python benchmarks/bench_epoch_restart.py SHARDS_DIR [--workers 2] [--batch-size 16] [--epochs 6]

Each timed call starts the next epoch (a fresh `make_loader`, or `set_epoch` on one loader whose
workers persist) and takes its first batch; the rest of the epoch is drained untimed. One case
per mode goes to benchmarks/results/epoch_restart.csv (long format).
"""
from __future__ import annotations

import argparse
import itertools
import os
from pathlib import Path

from cmgl_dist.bench.harness import append_results, measure
from cmgl_dist.config import DataConfig
from cmgl_dist.data import make_loader, shard_urls

RESULTS = Path(__file__).resolve().parent / "results" / "epoch_restart.csv"


def first_batch_timer(urls, cfg: DataConfig, tokenizer, batch_size: int, batches: int, persistent: bool):
    """(setup, timed): setup drains the previous epoch, timed starts the next one and takes a batch."""
    common = dict(train=True, batch_size=batch_size, seed=0, batches_per_epoch=batches)
    epochs = itertools.count()
    kept = make_loader(urls, cfg, tokenizer, epoch=0, persistent_workers=True, **common) if persistent else None
    state = {"iterator": iter(())}

    def setup():
        for _ in state["iterator"]:
            pass

    def timed(_previous_drained):
        epoch = next(epochs)
        loader = kept.set_epoch(epoch) if persistent else make_loader(urls, cfg, tokenizer, epoch=epoch, **common)
        state["iterator"] = iter(loader)
        next(state["iterator"])

    return setup, timed


def main(argv=None) -> None:
    from bench_loader import load_tokenizer

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("shards", help="packed folder holding manifest.json")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batches", type=int, default=4, help="batches per epoch")
    p.add_argument("--epochs", type=int, default=6, help="timed epoch starts per mode")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    urls = shard_urls(args.shards, "train")
    tokenizer = load_tokenizer("minilm")
    cfg = DataConfig(shards=args.shards, image_size=256, crop_size=224, workers=args.workers)
    for persistent in (False, True):
        setup, timed = first_batch_timer(urls, cfg, tokenizer, args.batch_size, args.batches, persistent)
        timing = measure(timed, setup=setup, warmup=1, reps=args.epochs)
        config = {"shards": os.path.basename(os.path.normpath(args.shards)), "workers": args.workers,
                  "batch_size": args.batch_size, "persistent_workers": persistent, "cpu_count": os.cpu_count()}
        append_results(args.out, "epoch_restart", config,
                       {**timing.metrics(), "load_avg_1min": round(os.getloadavg()[0], 2)})
        print(f"persistent_workers={persistent}: first batch of an epoch p50 {timing.p50_ms:.0f} ms "
              f"(p20 {timing.p20_ms:.0f}, p80 {timing.p80_ms:.0f})")


if __name__ == "__main__":
    main()
