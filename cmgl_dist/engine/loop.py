"""The step loop: micro batches -> DeepSpeed engine -> loss -> backward/step, with a NaN/Inf guard.

One optimizer step takes `train.grad_accum` micro batches with a finite loss on every rank. A
micro batch whose loss is not finite on any rank is dropped by all ranks together (no backward,
so nothing of it reaches the weights) and counted; more than `train.max_nonfinite` of them in a
row stop the run after a checkpoint of the last good state (the weights after the last optimizer
step and the data position before its batches).
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterator

import torch
import torch.distributed as dist

from cmgl_dist.config import CMGLConfig
from cmgl_dist.data.device import to_device
from cmgl_dist.engine.checkpoint import Checkpointer, TrainState, tag_for
from cmgl_dist.engine.distributed import World
from cmgl_dist.engine.metrics import LOSS_PARTS, MetricsProcessor
from cmgl_dist.phases import phase

log = logging.getLogger(__name__)

# Per micro batch, one all-reduce (sum) carries the loss parts, the non-finite flag and skips.
_NONFINITE, _SKIPPED = len(LOSS_PARTS), len(LOSS_PARTS) + 1


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row; the message names the checkpoint that was kept."""


Batches = Iterator[tuple[int, int, dict]]  # (epoch, batches of that epoch consumed, batch)


def epoch_batches(make_epoch_loader: Callable[[int, int], object], state: TrainState) -> Batches:
    """Batches from the saved data position on, epoch after epoch."""
    epoch, start = state.data_epoch, state.data_batch
    while True:
        produced = 0
        # A DataLoader draws its base seed from the global torch RNG when its iterator is made: at
        # each epoch start in a straight run, at the resume point in a resumed one. Shielding that
        # draw keeps the global stream (dropout) identical in both. The data's own randomness is
        # seeded from (seed, epoch, stream) by make_loader.
        with torch.random.fork_rng(devices=[]):
            loader = iter(make_epoch_loader(epoch, start))
        for position, batch in enumerate(loader, start=start + 1):
            produced += 1
            yield epoch, position, batch
        if produced == 0 and start == 0:
            raise RuntimeError(f"the loader yielded no batch for epoch {epoch}")
        epoch, start = epoch + 1, 0


class Trainer:
    """Runs optimizer steps and reports their events to a MetricsProcessor (which owns the counters)."""

    def __init__(self, cfg: CMGLConfig, world: World, engine, loss_fn, checkpointer: Checkpointer,
                 metrics: MetricsProcessor, resolved_config: dict):
        self.cfg = cfg
        self.world = world
        self.engine = engine
        self.loss_fn = loss_fn
        self.checkpointer = checkpointer
        self.metrics = metrics
        self.resolved_config = resolved_config
        self.nonfinite_in_row = 0
        self.channels_last = world.cuda and cfg.train.channels_last

    def run(self, batches: Batches, state: TrainState) -> TrainState:
        cfg = self.cfg.train
        for step in range(state.step + 1, cfg.steps + 1):
            lr = self.engine.get_lr()[0]
            self.step(batches, state)
            last = step == cfg.steps
            if step % cfg.log_every == 0 or last:
                state.samples_skipped += self.metrics.take_skipped()
                self.metrics.log(state, lr)
            if step % cfg.ckpt_every == 0 or last:
                self._save(state)
        return state

    def step(self, batches: Batches, state: TrainState) -> None:
        """grad_accum micro batches with a finite loss -> one optimizer step."""
        good = 0
        start_position = (state.data_epoch, state.data_batch)
        while good < self.cfg.train.grad_accum:
            with phase("data_wait"):
                waited = time.perf_counter()
                epoch, position, batch = next(batches)
                self.metrics.data_waited(time.perf_counter() - waited)
            with phase("host_to_device"):
                on_device = to_device(batch, self.world.device, self.channels_last)
            # The model's outputs go to the loss in the compute dtype (bf16 under autocast): the
            # losses run softmaxes and log-sum-exps in fp32 themselves (cmgl_dist.losses).
            parts = self.loss_fn(self.engine(on_device))
            with phase("loss_all_reduce"):
                shared = self._all_reduce(parts, batch.get("skipped", 0))
            # The one host read per micro batch: the NaN guard must decide before backward, so that
            # nothing of a dropped micro batch reaches the weights.
            kept = not bool(shared[_NONFINITE] > 0)
            self.metrics.micro_batch(shared[:_NONFINITE], shared[_SKIPPED], kept=kept)
            if not kept:
                state.nonfinite_skipped += 1
                self._on_nonfinite(state, start_position, shared)
                continue
            self.nonfinite_in_row = 0
            with phase("backward"):
                self.engine.backward(parts["loss"])
            with phase("optimizer_step"):
                self.engine.step()
            good += 1
            state.data_epoch, state.data_batch = epoch, position
        state.step += 1
        state.samples_seen += self.metrics.global_batch
        self.metrics.step_done(self.engine.get_global_grad_norm())

    def _all_reduce(self, parts: dict, skipped: int) -> torch.Tensor:
        losses = [parts[name].detach().float() for name in LOSS_PARTS]
        flag = (~torch.isfinite(torch.stack(losses))).any().float()
        # new_full launches a fill: unlike torch.tensor(x, device=cuda) it does not wait for the GPU.
        shared = torch.stack([*losses, flag, flag.new_full((), float(skipped))])
        dist.all_reduce(shared)
        return shared

    def _save(self, state: TrainState) -> None:
        state.samples_skipped += self.metrics.take_skipped()
        self.checkpointer.save(self.engine, state, self.resolved_config)

    def _on_nonfinite(self, state: TrainState, start_position: tuple[int, int], shared: torch.Tensor) -> None:
        self.nonfinite_in_row += 1
        if self.world.rank == 0:
            log.warning("step %d: non-finite loss (summed over ranks: %s), micro batch dropped (%d in a row, "
                        "%d in all)", state.step + 1, shared[0].item(), self.nonfinite_in_row, state.nonfinite_skipped)
        if self.nonfinite_in_row < self.cfg.train.max_nonfinite:
            return
        # Roll the data position back to the start of the unfinished step: the kept state is the
        # one after the last optimizer step, so a resume replays this step's batches.
        state.data_epoch, state.data_batch = start_position
        tag = tag_for(state.step)
        if tag not in self.checkpointer.complete_tags():
            self._save(state)
        raise NonFiniteLossError(
            f"{self.nonfinite_in_row} non-finite losses in a row at step {state.step + 1} "
            f"(train.max_nonfinite={self.cfg.train.max_nonfinite}); the last good state is checkpoint "
            f"{self.checkpointer.root / tag}. Lower optimizer.lr, raise schedule.warmup_steps or use "
            f"train.precision=fp32/bf16, then resume with --resume auto")
