"""The local loss's exchanges on local gloo ranks: gather, ring, and the ring keeping its blocks.

    python benchmarks/bench_local_exchange.py [--ranks 2] [--batch 16] [--words 48] [--regions 49] [--dim 128]

Each rank times `CMGLLoss` forward + backward (reference backend, float32, one thread per rank)
with `loss.local_exchange=gather`, `ring` (no cap: the backward recomputes each block's scores)
and `ring` with `loss.local_negatives` = ranks x batch (the same loss: every text is in the
window, so the ring keeps its blocks). All three run in the same processes, one after another,
so each is the others' peer. Rank 0's p50 (ms), the loss (equal across cases) and the bytes it
sent per step go to benchmarks/results/local_exchange.csv (long format).
"""
from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "local_exchange.csv"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, default in (("ranks", 2), ("batch", 16), ("words", 48), ("regions", 49), ("dim", 128), ("reps", 7)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--results", type=Path, default=RESULTS)
    return p.parse_args(argv)


def cases(args):
    return (("gather", "gather", None), ("ring", "ring", None),
            ("ring_kept", "ring", args.ranks * args.batch))


def rank_main(rank, args, port):
    import torch
    import torch.distributed as dist

    from cmgl_dist.bench.harness import append_results, measure
    from cmgl_dist.config import LossConfig
    from cmgl_dist.losses import CMGLLoss, comm

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=args.ranks)
    g = torch.Generator().manual_seed(rank)
    b, w = args.batch, args.words
    inputs = {"img_global": torch.randn(b, args.dim, generator=g), "sentence": torch.randn(b, args.dim, generator=g),
              "regions": torch.randn(b, args.regions, args.dim, generator=g),
              "words": torch.randn(b, w, args.dim, generator=g),
              "word_mask": torch.arange(w)[None] < torch.randint(1, w + 1, (b, 1), generator=g)}
    for name, exchange, cap in cases(args):
        loss = CMGLLoss(LossConfig(local_backend="reference", local_exchange=exchange, local_negatives=cap))
        leaves = lambda: {k: v.clone().requires_grad_() if v.is_floating_point() else v for k, v in inputs.items()}
        result = {}

        def step(batch):
            dist.barrier()  # every rank starts together: the time is the slowest rank's
            out = loss(batch)
            out["loss"].backward()
            result["loss"] = out["loss"].detach()

        comm.take_counts()
        timing = measure(step, setup=leaves, warmup=1, reps=args.reps)
        sent = {kind: n // (args.reps + 1) for kind, n in comm.take_counts().items()}
        if rank == 0:
            config = {"ranks": args.ranks, "batch": b, "words": w, "regions": args.regions, "dim": args.dim,
                      "exchange": name, "backend": "reference", "dtype": "float32"}
            append_results(args.results, "local_exchange", config,
                           {"ms_p50": round(timing.p50_ms, 3), "loss": round(float(result["loss"]), 6),
                            **{f"bytes_{kind}": n for kind, n in sent.items()}})
            print(f"{name:10s} {timing.p50_ms:8.1f} ms p50  loss {float(result['loss']):.6f}  bytes/step {sent}")
    dist.destroy_process_group()


def main(argv=None) -> int:
    import torch.multiprocessing as mp

    args = parse_args(sys.argv[1:] if argv is None else argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(rank_main, args=(args, port), nprocs=args.ranks, join=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
