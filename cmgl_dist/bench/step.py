"""`cmgl bench step`: where one training step spends its time, phase by phase.

    cmgl bench step --config debug --steps 20 --out bench/step            # 2 CPU ranks (gloo) or every GPU
    cmgl bench step --config gloria_r50_bert --set data.shards=S --ranks 1 --steps 30 --out bench/h200

Runs the training loop itself (the same engine, loader, loss and `Trainer.step` as `cmgl train`),
with a `PhaseTimer` installed: warm-up steps, then `--steps` timed ones. Writes to DIR:
  step_breakdown.csv   phase, ms_p50, share (of the step's p50) for every phase, `unattributed`
                       and the measured `step`; the named phases sum to the step within a few %
  step_breakdown.png   the breakdown as stacked bars, one per rank
  summary.json         step time, samples/s, peak memory per rank, DeepSpeed bytes per step, the loss's
                       exchange: bytes per step by kind (`losses.comm`), its exposed ms (the
                       `local_exchange` phase: posting and waiting on the ring's sends) and whether
                       the scoring hid it (exposed <= OVERLAP_SHARE of the local loss)
  results.csv          the same figures in the harness's long format (`--results` to append elsewhere)
  trace_rank0.json     on CUDA, a torch.profiler Chrome trace of two more steps
Without `data.shards` (or `data.sources`), small phantom shards are packed into DIR/shards first (once).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from cmgl_dist.bench.profiler import COLLECTIVE_PHASES
from cmgl_dist.bench.harness import append_results, percentiles

PHASES = ("data_wait", "host_to_device", "image_encoder_fwd", "text_encoder_fwd", "feature_all_gather",
          "global_loss", "local_loss", "local_exchange", "loss_all_reduce", "backward", "gradient_reduction", "optimizer_step",
          "zero_param_gather")
OVERLAP_SHARE = 0.1  # exposed exchange at most this share of the local loss's compute: "overlapped"
PHANTOM_REPORTS = 400  # enough for a few batches per epoch per rank at small micro batches


def parse_args(argv):
    p = argparse.ArgumentParser(prog="cmgl bench step", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="a YAML file or a shipped config name")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--ranks", type=int, default=None, help="ranks on this machine (default: GPUs, else 2 CPU ranks)")
    p.add_argument("--results", type=Path, default=None, help="long-format CSV to append to (default OUT/results.csv)")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    from cmgl_dist.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"cmgl bench step: {err}", file=sys.stderr)
        return 2
    if "RANK" in os.environ:
        run_rank(cfg, args)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    if not cfg.data.shards and not cfg.data.sources:
        shards = ensure_phantom_shards(args.out / "shards", cfg.data.image_size)
        argv += ["--set", f"data.shards={shards}"]
    return launch(argv, args.ranks)


def ensure_phantom_shards(folder: Path, image_size: int) -> Path:
    """Phantom shards from the packaged IU-RR reports, packed once per image size."""
    from cmgl_dist.shards.pack import pack
    from cmgl_dist.shards.schema import MANIFEST

    folder = folder / f"phantom_{image_size}px"
    if not (folder / MANIFEST).exists():
        pack(images="phantom", out=folder, image_size=image_size, samples_per_shard=32, seed=0,
             workers=min(2, os.cpu_count() or 1), limit=PHANTOM_REPORTS)
    return folder


def launch(argv: list[str], nproc: Optional[int]) -> int:
    """This command again under torchrun, `nproc` ranks on this machine (CPU ranks share its cores)."""
    from cmgl_dist.pipeline import cmgl_script, default_world_size

    nproc = nproc or default_world_size()
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           cmgl_script(), "bench", "step", *argv]
    return subprocess.run(cmd, env=env).returncode


def run_rank(cfg, args) -> None:
    """One rank: build what `cmgl train` builds, time the steps, rank 0 writes the results."""
    import torch.distributed as dist

    from cmgl_dist.bench.profiler import DeepSpeedComms, PhaseTimer, enable_deepspeed_comm_logging
    from cmgl_dist.data.shardlist import training_mixture
    from cmgl_dist.engine.build import build_trainer, epoch_loaders
    from cmgl_dist.engine.checkpoint import Checkpointer
    from cmgl_dist.engine.distributed import init_distributed
    from cmgl_dist.engine.loop import epoch_batches
    from cmgl_dist.engine.telemetry import peak_memory_mb
    from cmgl_dist.losses import comm
    from cmgl_dist.phases import installed

    cfg.train.run_dir = str(args.out / "run")
    cfg.train.tensorboard = False
    cfg.train.steps = args.warmup + args.steps + 2
    world = init_distributed()
    enable_deepspeed_comm_logging()
    run_dir = Path(cfg.train.run_dir)
    built = build_trainer(cfg, world, run_dir, Checkpointer(run_dir / "checkpoints", cfg.train.keep_last, world.rank))
    model, engine, trainer, telemetry, state = built.model, built.engine, built.trainer, built.telemetry, built.state
    batches = epoch_batches(epoch_loaders(cfg, training_mixture(cfg.data), model.tokenizer, world), state)
    for _ in range(args.warmup):
        trainer.step(batches, state)
    comms = DeepSpeedComms()
    timer = PhaseTimer(world.device, comm_ms=comms.ms)
    comm_before = comms.bytes()
    comm.take_counts()
    with installed(timer):
        for _ in range(args.steps):
            timer.begin_step()
            trainer.step(batches, state)
            timer.end_step()
    mine = {"steps": timer.steps, "peak_mem_mb": peak_memory_mb(world.device),
            "comm_bytes_per_step": (comms.bytes() - comm_before) / args.steps,
            "exchange_bytes_per_step": {kind: n / args.steps for kind, n in comm.take_counts().items()},
            "param_bytes": sum(p.numel() * 4 for p in model.parameters() if p.requires_grad),  # fp32 grads
            "model_state_bytes": model_state_bytes(engine),
            **(calibrate_all_reduce(world) if world.world_size > 1 else {})}
    if world.cuda:
        chrome_trace(trainer, batches, state, args.out, world.rank)
    every = [None] * world.world_size
    dist.all_gather_object(every, mine)
    telemetry.close()
    if world.rank == 0:
        write_results(args, cfg, world, every)
    dist.barrier()  # the ranks leave together: none tears its connections down while rank 0 still writes
    dist.destroy_process_group()


def model_state_bytes(engine) -> int:
    """Bytes of parameters, master weights and optimizer state this rank holds (what ZeRO partitions).

    Parameters count by their ZeRO-3 partition (`ds_tensor`) when they have one; tensors are
    counted once even when the optimizer's and the module's share storage (stage 0).
    """
    import torch

    from cmgl_dist.engine.universal import inner_optimizer

    inner = inner_optimizer(engine)
    tensors = [getattr(p, "ds_tensor", None) if getattr(p, "ds_tensor", None) is not None else p.data
               for p in engine.module.parameters()]
    tensors += [p.data for group in inner.param_groups for p in group["params"]]
    tensors += [v for state in inner.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    seen = {(t.data_ptr(), t.numel(), t.dtype): t.numel() * t.element_size() for t in tensors if t.numel()}
    return sum(seen.values())


def calibrate_all_reduce(world, big_bytes: int = 16 * 2**20) -> dict:
    """p50 ms of a 4-byte and a 16 MiB all-reduce: what the scaling model's link figures come from."""
    import torch
    import torch.distributed as dist

    from cmgl_dist.bench.harness import measure

    small = torch.zeros(1, device=world.device)
    big = torch.zeros(big_bytes // 4, device=world.device)
    return {"all_reduce_small_ms": measure(lambda: dist.all_reduce(small), device=world.device, reps=9).p50_ms,
            "all_reduce_big_ms": measure(lambda: dist.all_reduce(big), device=world.device, reps=5).p50_ms,
            "all_reduce_big_bytes": big_bytes}


def chrome_trace(trainer, batches, state, out: Path, rank: int, steps: int = 2) -> None:
    import torch

    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.step(batches, state)
    if rank == 0:
        prof.export_chrome_trace(str(out / "trace_rank0.json"))


def summarise(per_rank: list[dict]) -> dict[str, float]:
    """{phase: p50 ms over steps} of the per-step mean over ranks, and `sum_of_phases`: the p50 of
    each step's named phases added up (what is compared with the step)."""
    names = {name for rank in per_rank for step in rank["steps"] for name in step}
    steps = len(per_rank[0]["steps"])
    mean = [{name: sum(rank["steps"][i].get(name, 0.0) for rank in per_rank) / len(per_rank) for name in names}
            for i in range(steps)]
    for step in mean:
        step["sum_of_phases"] = sum(ms for name, ms in step.items() if name not in ("step", "unattributed"))
    return {name: percentiles([step[name] for step in mean], (0.5,))[0] for name in mean[0]}


def breakdown_rows(p50: dict[str, float]) -> list[tuple[str, float, float]]:
    """(phase, ms_p50, share of the step) in PHASES order, then unattributed, the phases' sum and the step."""
    step = p50["step"]
    named = [name for name in PHASES if name in p50]
    named += sorted(set(p50) - set(PHASES) - {"unattributed", "sum_of_phases", "step"})
    return [(name, p50[name], p50[name] / step) for name in (*named, "unattributed", "sum_of_phases", "step")]


def rank_skew_ms(per_rank: list[dict]) -> float:
    """p50 over steps of the spread between ranks' work outside collectives: how long the fastest
    rank waits in its collectives for the slowest, a wait that lock-step models leave out."""
    spreads = []
    for i in range(len(per_rank[0]["steps"])):
        work = [rank["steps"][i]["step"] - sum(rank["steps"][i].get(c, 0.0) for c in COLLECTIVE_PHASES) for rank in per_rank]
        spreads.append(max(work) - min(work))
    return percentiles(spreads, (0.5,))[0]


def exchange_summary(cfg, p50: dict[str, float], per_rank: list[dict]) -> dict:
    """The local loss's exchange: how, bytes per step by kind (rank 0), exposed ms, hidden or not."""
    exposed, scoring = p50.get("local_exchange", 0.0), p50.get("local_loss", 0.0)
    return {"local_exchange": cfg.loss.local_exchange, "exchange_bytes_per_step": per_rank[0]["exchange_bytes_per_step"],
            "local_exchange_ms_p50": exposed, "exchange_overlapped": exposed <= OVERLAP_SHARE * scoring}


def write_results(args, cfg, world, per_rank: list[dict]) -> None:
    from cmgl_dist.atomic import write_text_atomic

    p50 = summarise(per_rank)
    rows = breakdown_rows(p50)
    text = "phase,ms_p50,share\n" + "".join(f"{name},{ms:.3f},{share:.4f}\n" for name, ms, share in rows)
    write_text_atomic(args.out / "step_breakdown.csv", text)
    global_batch = cfg.train.samples_per_step(world.world_size)
    summary = {"config": args.config, "overrides": args.overrides, "world_size": world.world_size,
               "device": "cuda" if world.cuda else "cpu", "global_batch": global_batch,
               "micro_batch": cfg.train.micro_batch, "zero_stage": cfg.zero.stage,
               "offload_optimizer": cfg.zero.offload_optimizer, "steps": args.steps,
               "step_ms_p50": p50["step"], "samples_per_s": global_batch / p50["step"] * 1e3,
               "phases_sum_share": rows[-2][2], "rank_skew_ms_p50": rank_skew_ms(per_rank),
               "peak_mem_mb_per_rank": [r["peak_mem_mb"] for r in per_rank],
               "comm_bytes_per_step_per_rank": [r["comm_bytes_per_step"] for r in per_rank],
               "model_state_bytes_per_rank": [r["model_state_bytes"] for r in per_rank],
               "embed_dim": cfg.model.embed_dim, "words": cfg.data.max_length,
               "local_negatives": cfg.loss.local_negatives, "param_bytes": per_rank[0]["param_bytes"],
               **exchange_summary(cfg, p50, per_rank),
               **{k: v for k, v in per_rank[0].items() if k.startswith("all_reduce_")}}
    write_text_atomic(args.out / "summary.json", json.dumps(summary, indent=2) + "\n")
    config = {"config": Path(args.config).stem, "world_size": world.world_size, "device": summary["device"],
              "micro_batch": cfg.train.micro_batch, "zero": cfg.zero.stage,
              "set": " ".join(o.replace("=", ":") for o in args.overrides if not o.startswith("data.shards=")) or "-"}
    append_results(args.results or args.out / "results.csv", "bench_step", config, {
        **{f"{name}_ms_p50": round(ms, 4) for name, ms, _ in rows},
        "samples_per_s": round(summary["samples_per_s"], 3),
        "peak_mem_mb_rank0": round(per_rank[0]["peak_mem_mb"], 1),
        "comm_bytes_per_step_rank0": per_rank[0]["comm_bytes_per_step"]})
    # The figure last and only where matplotlib is installed (not on every GPU machine): the
    # CSVs above are the results, the PNG a view of them.
    try:
        from cmgl_dist.bench.plots import stacked_breakdown
    except ImportError as err:
        print(f"no step_breakdown.png: {err}")
    else:
        stacked_breakdown(per_rank, rows, args.out / "step_breakdown.png",
                          title=f"{Path(args.config).stem}: {world.world_size} x {summary['device']}, "
                                f"micro-batch {cfg.train.micro_batch}, ZeRO {cfg.zero.stage}")
    for name, ms, share in rows:
        print(f"{name:<20} {ms:10.2f} ms  {share:6.1%}")
    print(f"loss exchange ({cfg.loss.local_exchange}): {summary['exchange_bytes_per_step']} bytes per step on rank 0; "
          f"exposed {summary['local_exchange_ms_p50']:.2f} ms against {p50.get('local_loss', 0.0):.2f} ms of local loss: "
          f"{'overlapped' if summary['exchange_overlapped'] else 'not overlapped'}")
    print(f"wrote {args.out / 'step_breakdown.csv'}")
