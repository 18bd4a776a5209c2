"""`cmgl train`: train CMGL with DeepSpeed ZeRO from a config.

    cmgl train --config debug --set data.shards=shards/iurr --set zero.stage=3
    NPROC_PER_NODE=2 launch/torchrun.sh --config iurr_offline --resume auto     (launch/README.md)

Every check that can fail (config values and combinations, apex, precision on this machine, the
shards, an existing run without --resume, a run dir in use by another run, a resume whose config
differs in a field it cannot apply, whose packs changed since its checkpoint or whose world size
differs) runs before the process group and the model exist, and
fails with exit status 2 and a message naming the field and the fix.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import socket
import sys
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
import yaml

from cmgl_dist.config import CMGLConfig, ConfigError, load_config, recorded, save_config, shipped_configs
from cmgl_dist.data.loader import ShardLoader, make_loader
from cmgl_dist.data.shard_check import ShardChanged, check_unchanged
from cmgl_dist.data.shardlist import Mixture, samples_without_text, source_folders, training_mixture
from cmgl_dist.data.streams import ShardMissingError
from cmgl_dist.engine.checkpoint import (Checkpointer, TrainState, complete_tags, data_fingerprint, read_complete,
                                         resolve_resume, saved_data_fingerprint)
from cmgl_dist.engine.deepspeed_config import deepspeed_config
from cmgl_dist.engine.distributed import World, init_distributed, launch_env
from cmgl_dist.engine.loop import NonFiniteLossError, Trainer, epoch_batches
from cmgl_dist.engine.metrics import MetricsProcessor
from cmgl_dist.engine.optim import build_client_optimizer, require_apex
from cmgl_dist.engine.schedule import lr_scheduler_factory
from cmgl_dist.engine.telemetry import Telemetry
from cmgl_dist.locks import FolderBusy, FolderRefused, describe_holder, folder_lock
from cmgl_dist.logs import init_logger
from cmgl_dist.redact import redact

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine
    from transformers import PreTrainedTokenizerBase

    from cmgl_dist.model import CMGLModel  # imports transformers: only where the model is built

log = logging.getLogger(__name__)

# Fields a resumed run may change: they are read afresh from the config at every use (the loop's
# cadence, the run's length and the schedule's shape follow train.steps, the export, evaluation).
# Any other change would be silently overridden by the checkpoint's state, or break exact resume.
# Fields match exactly; RESUME_APPLIES_SECTIONS are whole sections a resume may change.
RESUME_APPLIES = frozenset({"name", "train.steps", "train.log_every", "train.ckpt_every", "train.keep_last",
                            "train.max_nonfinite", "train.tensorboard", "train.export", "train.run_dir"})
RESUME_APPLIES_SECTIONS = ("eval.",)


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
    the checkpoint to resume from (root, tag), if any. `record`: rank 0 records the shards it
    checked in the run dir (`--preflight` writes nothing)."""
    require_apex(cfg.optimizer)
    if cfg.train.precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.precision=fp16 needs CUDA (DeepSpeed's loss scaling runs on GPUs): "
                          "set train.precision=fp32 on a CPU machine")
    try:
        urls = training_mixture(cfg.data)
        untexted = {shards: samples_without_text(shards, "train") for shards, _ in source_folders(cfg.data)}
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
    if source is not None:
        check_resumable_config(source, cfg)
        check_resume_matches(source, cfg, launch_env()["world_size"])
    try:  # a shard replaced in place leaves the manifest's fingerprint as it was: its bytes are checked
        check_unchanged(urls.urls, Path(cfg.train.run_dir), resuming=source is not None,
                        record=record and launch_env()["rank"] == 0)
    except ShardChanged as err:
        raise ConfigError(f"--resume: {err}") from None
    return urls, source


def check_resume_matches(source: tuple[Path, str], cfg: CMGLConfig, world_size: int) -> None:
    """Refuse a resume on another world size (the data position is per rank) or on other data (a pack
    repacked or replaced since the checkpoint: the run would continue, or export unchanged, a model
    of the old data, and evaluation would score it on the new)."""
    folder = source[0] / source[1]
    saved_world = read_complete(folder)["world_size"]
    if saved_world != world_size:
        raise ConfigError(f"--resume from {folder}: written by {saved_world} ranks, this run has {world_size}; exact "
                          f"resume needs the same world size: launch {saved_world} ranks, or start a new run in "
                          "another train.run_dir")
    saved, now = saved_data_fingerprint(folder), data_fingerprint(cfg.data)
    if saved is None:
        log.warning("%s does not record its data fingerprint (written before it was recorded); "
                    "resuming without checking that the data is unchanged", folder)
    elif saved != now:
        raise ConfigError(f"--resume from {folder}: the training data changed since that checkpoint (data fingerprint "
                          f"{saved} in the checkpoint, {now} now: the pack was repacked or replaced). Start a new run in "
                          f"another train.run_dir (cmgl main: another --out, or move {cfg.train.run_dir} away), or "
                          "train on the pack the checkpoint was trained on")


def check_shards_present(urls: list[str], on_missing: str) -> None:
    """A local train shard that is gone fails the run unless data.on_missing_shard=skip."""
    missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not os.path.exists(u)]
    if missing and on_missing == "fail":
        raise ConfigError(f"{len(missing)} train shard(s) listed in the manifest are missing (first: {missing[0]}): "
                          "repack, or set data.on_missing_shard=skip to train on the rest (their samples are "
                          "counted as skipped)")


def flat(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resume_applies(field: str) -> bool:
    """Whether a resumed run may change `field`, a flattened name such as `train.steps`."""
    return field in RESUME_APPLIES or field.startswith(RESUME_APPLIES_SECTIONS)


def check_resumable_config(source: tuple[Path, str], cfg: CMGLConfig) -> None:
    """Refuse a resume whose config changes a field the checkpoint's state would override (optimizer.lr:
    the restored scheduler keeps the old one) or that breaks exact resume; name each such field."""
    root, tag = source
    # a field added to the schema after the checkpoint was written had its default then
    saved = {**flat(CMGLConfig().model_dump(mode="json")),
             **flat(json.loads((root / tag / "client.json").read_text())["config"])}
    now = flat(recorded(cfg))
    changed = sorted(k for k in saved.keys() | now.keys()
                     if saved.get(k) != now.get(k) and not resume_applies(k))
    if changed:
        listed = "; ".join(f"{k}: {saved.get(k)!r} in the checkpoint, {now.get(k)!r} now" for k in changed)
        raise ConfigError(f"--resume from {root / tag} with a config that changes {listed}. A resume can change "
                          f"only {', '.join(sorted(RESUME_APPLIES))}, {', '.join(s + '*' for s in RESUME_APPLIES_SECTIONS)}: set the changed fields back, or start a new run "
                          "in another train.run_dir")


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
        "global_batch": cfg.train.global_batch(layout["world_size"]),
    }
    print("# world " + json.dumps(world), flush=True)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_engine(cfg: CMGLConfig, world: World, ds_config: dict) -> tuple[CMGLModel, DeepSpeedEngine]:
    """(model, DeepSpeed engine) with the same initial weights on every rank."""
    import deepspeed

    from cmgl_dist.model import build_model

    if world.cuda:
        torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark
    seed_all(cfg.train.seed)  # the same initial weights on every rank
    model = build_model(cfg.model)
    if world.cuda and cfg.train.channels_last:
        model.image_backbone.to(memory_format=torch.channels_last)
    trainable = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=trainable,
        optimizer=build_client_optimizer(cfg.optimizer, trainable),
        lr_scheduler=lr_scheduler_factory(cfg.schedule, cfg.train.steps), config=ds_config)
    seed_all(cfg.train.seed + world.rank)  # dropout differs between ranks
    return model, engine


def epoch_loaders(cfg: CMGLConfig, urls: Mixture, tokenizer: PreTrainedTokenizerBase,
                  world: World) -> Callable[[int, int], ShardLoader]:
    """make_epoch_loader(epoch, start_batch) for `epoch_batches`: one loader whose workers persist
    across epochs (data.persistent_workers), or a new loader per epoch."""
    kept = []

    def epoch_loader(epoch: int, start_batch: int) -> ShardLoader:
        if kept and cfg.data.persistent_workers:
            return kept[0].set_epoch(epoch, start_batch)
        kept[:] = [make_loader(urls, cfg.data, tokenizer, train=True, batch_size=cfg.train.micro_batch,
                               seed=cfg.train.seed, rank=world.rank, world_size=world.world_size, epoch=epoch,
                               start_batch=start_batch, batches_per_epoch=cfg.train.batches_per_epoch,
                               persistent_workers=cfg.data.persistent_workers)]
        return kept[0]

    return epoch_loader


def make_telemetry(cfg: CMGLConfig, world: World, run_dir: Path, start_step: int) -> Telemetry:
    """The metrics sinks; whoever makes them closes them."""
    return Telemetry(run_dir, rank=world.rank, start_step=start_step, total_steps=cfg.train.steps,
                     tensorboard=cfg.train.tensorboard)


def make_metrics(cfg: CMGLConfig, world: World, telemetry: Telemetry) -> MetricsProcessor:
    return MetricsProcessor(telemetry, global_batch=cfg.train.global_batch(world.world_size),
                            world_size=world.world_size, grad_accum=cfg.train.grad_accum, device=world.device)


def restore(cfg: CMGLConfig, world: World, engine: DeepSpeedEngine,
            source: Optional[tuple[Path, str]]) -> tuple[Checkpointer, TrainState]:
    """The run's checkpointer (a partial checkpoint removed) and the state to start from."""
    checkpointer = Checkpointer(Path(cfg.train.run_dir) / "checkpoints", cfg.train.keep_last, world.rank,
                                data_fingerprint(cfg.data))
    checkpointer.remove_partial()
    dist.barrier()
    if source is None:
        return checkpointer, TrainState()
    root, tag = source
    state = Checkpointer(root, cfg.train.keep_last, world.rank).load(engine, tag)
    log.info("resumed from %s at step %d", root / tag, state.step)
    return checkpointer, state


def fit(cfg: CMGLConfig, world: World, urls: Mixture, source: Optional[tuple[Path, str]]) -> TrainState:
    """Build the engine and the trainer, train, export; the telemetry is closed however it ends."""
    from cmgl_dist.engine.export import export_model, full_fp32_state_dict
    from cmgl_dist.losses import CMGLLoss

    run_dir = Path(cfg.train.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # `auto`'s local backend: timed by rank 0, recorded here, reused when the run resumes.
    from cmgl_dist.losses.backend_choice import RECORD_FILE, use_record
    use_record(run_dir / RECORD_FILE)
    model, engine = build_engine(cfg, world, deepspeed_config(cfg, world_size=world.world_size, cuda=world.cuda))
    checkpointer, state = restore(cfg, world, engine, source)
    if world.rank == 0:
        save_config(cfg, run_dir / "config.yaml")
    with closing(make_telemetry(cfg, world, run_dir, state.step)) as telemetry:
        trainer = Trainer(cfg, world, engine, CMGLLoss(cfg.loss), checkpointer, make_metrics(cfg, world, telemetry),
                          recorded(cfg))
        engine.train()
        state = trainer.run(epoch_batches(epoch_loaders(cfg, urls, model.tokenizer, world), state), state)
        if cfg.train.export:
            weights = full_fp32_state_dict(engine.module)
            if world.rank == 0:
                log.info("exported to %s", export_model(weights, cfg, run_dir / "export"))
            dist.barrier()
    return state


def train(cfg: CMGLConfig, urls: Mixture, source: Optional[tuple[Path, str]]) -> TrainState:
    """Join the process group, train, and leave it however training ends."""
    world = init_distributed()
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
        cfg = load_config(args.config, args.overrides)
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
    except (NonFiniteLossError, ShardMissingError) as err:
        print(f"cmgl train: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
