"""`cmgl train`: train CMGL with DeepSpeed ZeRO from a config.

    cmgl train --config debug --set data.shards=shards/iurr --set zero.stage=3
    NPROC_PER_NODE=2 launch/torchrun.sh --config iurr_offline --resume auto     (launch/README.md)

Every check that can fail (config values and combinations, apex, precision on this machine, the
shards, an existing run without --resume, a run dir in use by another run, a resume whose config
differs in a field it cannot apply, whose packs changed since its checkpoint or whose world size
differs where it cannot be resharded: `resume.py`) runs before the process group and the model exist, and
fails with exit status 2 and a message naming the field and the fix.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.distributed as dist
import yaml

from cmgl_dist.config import CMGLConfig, ConfigError, load_config, recorded, save_config, shipped_configs
from cmgl_dist.data.order import uses_global_order
from cmgl_dist.data.shard_check import ShardChanged, check_unchanged
from cmgl_dist.data.shardlist import Mixture, samples_without_text, source_folders, training_mixture
from cmgl_dist.data.streams import ShardMissingError
from cmgl_dist.engine.build import build_trainer, epoch_loaders
from cmgl_dist.engine.checkpoint import Checkpointer, TrainState, complete_tags, data_fingerprint, resolve_resume
from cmgl_dist.engine.deepspeed_config import deepspeed_config
from cmgl_dist.engine.distributed import JoinError, World, init_distributed, launch_env
from cmgl_dist.engine.loop import NonFiniteLossError, epoch_batches
from cmgl_dist.engine.optim import require_apex
from cmgl_dist.engine.resume import check_resumable_config, check_resume_matches, resumed_order
from cmgl_dist.locks import FolderBusy, FolderRefused, describe_holder, folder_lock
from cmgl_dist.logs import init_logger
from cmgl_dist.redact import redact

log = logging.getLogger(__name__)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cmgl train", description="Train with DeepSpeed ZeRO from a config.")
    p.add_argument("--config", required=True, help=f"a YAML file or a shipped config ({', '.join(shipped_configs())})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. --set train.lr=1e-4 --set zero.stage=3 (repeatable)")
    p.add_argument("--resume", default=None, metavar="auto|PATH",
                   help="auto: continue from <train.run_dir>/checkpoints/latest when there is one; PATH: a "
                        "checkpoints folder or one step_NNNNNNNN folder. Without it, a run dir that already "
                        "holds checkpoints is refused.")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config, the DeepSpeed JSON and the world layout, then exit")
    p.add_argument("--preflight", action="store_true",
                   help="run the checks training starts with (config, data, resume, for WORLD_SIZE ranks), write "
                        "nothing and exit: 0 when training would start, 2 with the refusal. Launchers run it "
                        "before starting ranks, so a refusal is one line")
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # the deepspeed launcher's; env wins
    return p.parse_args(argv)


def preflight(cfg: CMGLConfig, resume: Optional[str], record: bool = True
              ) -> tuple[Mixture, Optional[tuple[Path, str]]]:
    """Checks that need the machine, not only the config. Returns the train shards (a Mixture) and
    the checkpoint to resume from (root, tag), if any; sets data.order to the order the run reads.
    `record`: rank 0 records the shards it checked in the run dir (`--preflight` writes nothing)."""
    require_apex(cfg.optimizer)
    if cfg.train.precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.precision=fp16 needs CUDA (DeepSpeed's loss scaling runs on GPUs): "
                          "set train.precision=fp32 on a CPU machine")
    try:
        urls = training_mixture(cfg.data)
        untexted = {shards: samples_without_text(shards, "train") for shards, _ in source_folders(cfg.data)}
        global_order = uses_global_order(cfg.data, urls.urls)
    except (ValueError, OSError) as err:
        field = "data.sources" if cfg.data.sources else f"data.shards={redact(cfg.data.shards)!r}"
        raise ConfigError(f"{field}: {err}; pack shards with `cmgl pack` "
                          "and pass the folder with --set data.shards=DIR") from None
    for shards, count in untexted.items():
        if count and not cfg.data.text_from_labels:
            raise ConfigError(f"{shards}: {count} train samples have no report, and contrastive training needs "
                              "text: set data.text_from_labels=true to train on sentences built from their labels, "
                              "or train on a corpus with reports")
    check_shards_present(urls.urls, cfg.data.on_missing_shard)
    checkpoints = Path(cfg.train.run_dir) / "checkpoints"
    if resume is None and complete_tags(checkpoints):
        raise ConfigError(f"train.run_dir={cfg.train.run_dir} already holds checkpoints: pass --resume auto "
                          "to continue that run, or set another train.run_dir")
    try:
        source = resolve_resume(resume, checkpoints)
    except (RuntimeError, FileNotFoundError) as err:
        raise ConfigError(str(err)) from None
    order = "global" if global_order else "stream"
    if source is not None:
        check_resumable_config(source, cfg)
        order = resumed_order(source, cfg.data.order, order)
        check_resume_matches(source, cfg, launch_env()["world_size"], order == "global")
    cfg.data.order = order  # what the run reads, recorded in config.yaml and every checkpoint
    try:  # a shard replaced in place leaves the manifest's fingerprint as it was: its bytes are checked
        check_unchanged(urls.urls, Path(cfg.train.run_dir), resuming=source is not None,
                        record=record and launch_env()["rank"] == 0)
    except ShardChanged as err:
        raise ConfigError(f"--resume: {err}") from None
    return urls, source


def check_shards_present(urls: list[str], on_missing: str) -> None:
    """A local train shard that is gone fails the run unless data.on_missing_shard=skip."""
    missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not os.path.exists(u)]
    if missing and on_missing == "fail":
        raise ConfigError(f"{len(missing)} train shard(s) listed in the manifest are missing (first: {missing[0]}): "
                          "repack, or set data.on_missing_shard=skip to train on the rest (their samples are "
                          "counted as skipped)")


@contextmanager
def run_dir_lock(run_dir: Path, rank: int) -> Iterator[None]:
    """Rank 0 holds the run dir's writer lock (cmgl_dist.locks) for the whole run; a second run on it
    fails at once, naming the holder."""
    if rank != 0:
        yield
        return
    try:
        with folder_lock(run_dir, "cmgl train"):
            yield
    except FolderRefused as err:
        raise ConfigError(f"train.run_dir={run_dir}: {err}") from None
    except FolderBusy as err:  # only the lock raises it: the run itself takes no other
        raise ConfigError(f"train.run_dir={run_dir} is in use by {describe_holder(err.holder)}: "
                          "wait for it to end, or set another train.run_dir") from None


def for_world(cfg: CMGLConfig, world_size: int) -> CMGLConfig:
    """`cfg` with its batch split for `world_size` (train.global_batch derives train.grad_accum)."""
    try:
        return cfg.model_copy(update={"train": cfg.train.for_world(world_size)})
    except ValueError as err:
        raise ConfigError(str(err)) from None


def dry_run(cfg: CMGLConfig) -> None:
    """Rank 0 prints the resolved config and the DeepSpeed JSON; every rank prints its place. This is
    what --dry-run is asked for, so it goes to stdout, not to the log."""
    layout = launch_env()
    cuda = torch.cuda.is_available()
    if layout["rank"] == 0:
        print("# resolved config")
        print(yaml.safe_dump(recorded(cfg), sort_keys=False))
        print("# DeepSpeed config")
        print(json.dumps(deepspeed_config(cfg, world_size=layout["world_size"], cuda=cuda), indent=2))
    world = {
        **layout, "nodes": max(1, layout["world_size"] // max(1, layout["local_world_size"])),
        "host": socket.gethostname(),
        "master": f"{os.environ.get('MASTER_ADDR', '-')}:{os.environ.get('MASTER_PORT', '-')}",
        "device": f"cuda:{layout['local_rank']}" if cuda else "cpu", "backend": "nccl" if cuda else "gloo",
        "global_batch": cfg.train.samples_per_step(layout["world_size"]),
    }
    print("# world " + json.dumps(world), flush=True)


def fit(cfg: CMGLConfig, world: World, urls: Mixture, source: Optional[tuple[Path, str]]) -> TrainState:
    """Build the engine and the trainer, train, export; the telemetry is closed however it ends."""
    from cmgl_dist.engine.export import export_model
    from cmgl_dist.engine.universal import full_fp32_state_dict

    run_dir = Path(cfg.train.run_dir)
    checkpointer = Checkpointer(run_dir / "checkpoints", cfg.train.keep_last, world.rank, data_fingerprint(cfg.data))
    built = build_trainer(cfg, world, run_dir, checkpointer, source)
    if world.rank == 0:
        save_config(cfg, run_dir / "config.yaml")
    with closing(built):
        batches = epoch_batches(epoch_loaders(cfg, urls, built.model.tokenizer, world), built.state)
        state = built.trainer.run(batches, built.state)
        if cfg.train.export:
            weights = full_fp32_state_dict(built.engine.module)
            if world.rank == 0:
                log.info("exported to %s", export_model(weights, cfg, run_dir / "export"))
            dist.barrier()
    return state


def train(cfg: CMGLConfig, urls: Mixture, source: Optional[tuple[Path, str]]) -> TrainState:
    """Join the process group, train, and leave it however training ends."""
    world = init_distributed(cfg.train.dist_timeout_s)
    try:
        state = fit(cfg, world, urls, source)
        # The ranks leave together: a rank that tears its gloo connections down while a peer is still
        # in a collective or a send aborts that peer ("terminate called without an active exception").
        dist.barrier()
        return state
    finally:
        dist.destroy_process_group()


def main(argv: Optional[list[str]] = None) -> int:
    """Logging first, then the checks, then training. A failure the user can fix exits with its message
    on stderr (the command's answer, as argparse gives it): 2 before training, 1 during it."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    rank = launch_env()["rank"]
    init_logger(rank)
    try:
        cfg = for_world(load_config(args.config, args.overrides), launch_env()["world_size"])
        if args.dry_run:
            dry_run(cfg)
            return 0
        if args.preflight:
            preflight(cfg, args.resume, record=False)
            return 0
        with run_dir_lock(Path(cfg.train.run_dir), rank):
            urls, source = preflight(cfg, args.resume)
            train(cfg, urls, source)
    except ConfigError as err:
        print(f"cmgl train: {err}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, ShardMissingError, JoinError) as err:
        print(f"cmgl train: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
