"""`build_trainer`: what a training rank runs, assembled in one place (`cmgl train`, `cmgl bench step`
and the tests build it the same way): the model and its DeepSpeed engine, the state restored from a
checkpoint, the metrics sinks, the sample log and the Trainer.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import torch
import torch.distributed as dist

from cmgl_dist.config import CMGLConfig, recorded
from cmgl_dist.data.loader import ShardLoader, make_loader
from cmgl_dist.data.shardlist import Mixture
from cmgl_dist.engine.checkpoint import Checkpointer, TrainState, seed_all
from cmgl_dist.engine.deepspeed_config import deepspeed_config
from cmgl_dist.engine.distributed import World
from cmgl_dist.engine.loop import Trainer
from cmgl_dist.engine.metrics import MetricsProcessor
from cmgl_dist.engine.optim import build_client_optimizer
from cmgl_dist.engine.sample_log import SampleLog
from cmgl_dist.engine.schedule import lr_scheduler_factory
from cmgl_dist.engine.telemetry import Telemetry

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine
    from transformers import PreTrainedTokenizerBase

    from cmgl_dist.model import CMGLModel  # imports transformers: only where the model is built

log = logging.getLogger(__name__)


@dataclass
class Built:
    """A rank's training parts; `close()` closes the metrics sinks (whoever builds them closes them)."""
    model: CMGLModel
    engine: DeepSpeedEngine
    trainer: Trainer
    telemetry: Telemetry
    state: TrainState

    def close(self) -> None:
        self.telemetry.close()


def build_trainer(cfg: CMGLConfig, world: World, run_dir: Path, checkpointer: Optional[Checkpointer] = None,
                  source: Optional[tuple[Path, str]] = None) -> Built:
    """Engine, restored state (from `source`, a (checkpoints root, tag), when given), telemetry and
    Trainer for this rank. `checkpointer` is where the run saves (None: it never does)."""
    from cmgl_dist.losses import CMGLLoss
    from cmgl_dist.losses.backend_choice import RECORD_FILE, use_record

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # `auto`'s local backend: timed by rank 0, recorded here, reused when the run resumes.
    use_record(run_dir / RECORD_FILE)
    model, engine = build_engine(cfg, world, deepspeed_config(cfg, world_size=world.world_size, cuda=world.cuda))
    state = restore(cfg, world, engine, checkpointer, source)
    telemetry = make_telemetry(cfg, world, run_dir, state.step)
    samples = SampleLog(run_dir, world.rank, state.step) if cfg.train.record_samples else None
    trainer = Trainer(cfg, world, engine, CMGLLoss(cfg.loss, cfg.data.max_length), checkpointer, make_metrics(cfg, world, telemetry),
                      recorded(cfg), samples)
    engine.train()
    return Built(model, engine, trainer, telemetry, state)


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


def restore(cfg: CMGLConfig, world: World, engine: DeepSpeedEngine, checkpointer: Optional[Checkpointer],
            source: Optional[tuple[Path, str]]) -> TrainState:
    """The state to start from (a partial checkpoint of the run removed first). The data position is
    carried in global samples, so each rank's batch count follows this run's world size and micro batch."""
    if checkpointer is not None:
        checkpointer.remove_partial()
        dist.barrier()
    if source is None:
        return TrainState()
    root, tag = source
    state = Checkpointer(root, cfg.train.keep_last, world.rank).load(engine, tag)
    if state.data_samples is not None:  # None: written before it was recorded (same world size only)
        per_micro_step = world.world_size * cfg.train.micro_batch
        if state.data_samples % per_micro_step:
            raise RuntimeError(f"{root / tag}: its data position ({state.data_samples} samples) is not a whole "
                               f"number of micro steps of {per_micro_step} samples on this world size")
        state.data_batch = state.data_samples // per_micro_step
    log.info("resumed from %s at step %d", root / tag, state.step)
    return state


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
                               persistent_workers=cfg.data.persistent_workers,
                               global_batch=cfg.train.samples_per_step(world.world_size))]
        return kept[0]

    return epoch_loader


def make_telemetry(cfg: CMGLConfig, world: World, run_dir: Path, start_step: int) -> Telemetry:
    """The metrics sinks; whoever makes them closes them."""
    return Telemetry(run_dir, rank=world.rank, start_step=start_step, total_steps=cfg.train.steps,
                     tensorboard=cfg.train.tensorboard)


def make_metrics(cfg: CMGLConfig, world: World, telemetry: Telemetry) -> MetricsProcessor:
    return MetricsProcessor(telemetry, global_batch=cfg.train.samples_per_step(world.world_size),
                            world_size=world.world_size, grad_accum=cfg.train.grad_accum, device=world.device)
