"""The step loop: micro batches -> DeepSpeed engine -> loss -> backward/step, with a NaN/Inf guard.

One optimizer step takes `train.grad_accum` micro batches with a finite loss on every rank. A
micro batch whose loss is not finite on any rank is dropped by all ranks together (no backward,
so nothing of it reaches the weights) and counted; more than `train.max_nonfinite` of them in a
row stop the run after a checkpoint of the last good state (the weights after the last optimizer
step and the data position before its batches).
"""
from __future__ import annotations

import time
from typing import Callable, Iterator

import torch
import torch.distributed as dist

from cmgl_dist.config import CMGLConfig
from cmgl_dist.engine.checkpoint import Checkpointer, TrainState, tag_for
from cmgl_dist.engine.distributed import World
from cmgl_dist.engine.telemetry import GpuProbe, Telemetry, peak_memory_mb, scalar

LOSS_PARTS = ("loss", "loss_global", "loss_local")
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


def to_device(batch: dict, device: torch.device) -> dict:
    return {key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
            for key, value in batch.items()}


class Trainer:
    def __init__(self, cfg: CMGLConfig, world: World, engine, loss_fn, checkpointer: Checkpointer,
                 telemetry: Telemetry, resolved_config: dict):
        self.cfg = cfg
        self.world = world
        self.engine = engine
        self.loss_fn = loss_fn
        self.checkpointer = checkpointer
        self.telemetry = telemetry
        self.resolved_config = resolved_config
        self.gpu = GpuProbe(world.device)
        self.nonfinite_in_row = 0

    def run(self, batches: Batches, state: TrainState) -> TrainState:
        cfg = self.cfg.train
        window = _Window()
        for step in range(state.step + 1, cfg.steps + 1):
            lr = self.engine.get_lr()[0]
            sums = self._one_step(batches, state, window)
            state.step = step
            state.samples_seen += cfg.micro_batch * cfg.grad_accum * self.world.world_size
            window.steps += 1
            window.loss_sums += sums
            self.telemetry.advance()
            if step % cfg.log_every == 0 or step == cfg.steps:
                self.telemetry.log(self._record(state, lr, window))
                window = _Window()
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                self.checkpointer.save(self.engine, state, self.resolved_config)
        return state

    def _one_step(self, batches: Batches, state: TrainState, window: "_Window") -> torch.Tensor:
        """grad_accum finite micro batches -> one optimizer step; returns the summed loss parts."""
        good, sums = 0, torch.zeros(len(LOSS_PARTS), dtype=torch.float64)
        start_position = (state.data_epoch, state.data_batch)
        while good < self.cfg.train.grad_accum:
            waited = time.perf_counter()
            epoch, position, batch = next(batches)
            window.data_wait += time.perf_counter() - waited
            # The model's outputs go to the loss in the compute dtype (bf16 under autocast): the
            # losses run softmaxes and log-sum-exps in fp32 themselves (cmgl_dist.losses).
            parts = self.loss_fn(self.engine(to_device(batch, self.world.device)))
            shared = self._all_reduce(parts, batch.get("skipped", 0))
            state.samples_skipped += int(shared[_SKIPPED])
            if shared[_NONFINITE] > 0:
                state.nonfinite_skipped += 1
                self._on_nonfinite(state, start_position, shared)
                continue
            self.nonfinite_in_row = 0
            self.engine.backward(parts["loss"])
            self.engine.step()
            sums += shared[:len(LOSS_PARTS)].double().cpu() / self.world.world_size
            good += 1
            state.data_epoch, state.data_batch = epoch, position
        window.grad_norm = scalar(self.engine.get_global_grad_norm())
        return sums / self.cfg.train.grad_accum

    def _all_reduce(self, parts: dict, skipped: int) -> torch.Tensor:
        losses = [parts[name].detach().float() for name in LOSS_PARTS]
        flag = (~torch.isfinite(torch.stack(losses))).any().float()
        shared = torch.stack([*losses, flag, torch.tensor(float(skipped), device=flag.device)])
        dist.all_reduce(shared)
        return shared

    def _on_nonfinite(self, state: TrainState, start_position: tuple[int, int], shared: torch.Tensor) -> None:
        self.nonfinite_in_row += 1
        if self.world.rank == 0:
            print(f"step {state.step + 1}: non-finite loss (summed over ranks: {shared[0].item()}), micro batch "
                  f"dropped ({self.nonfinite_in_row} in a row, {state.nonfinite_skipped} in all)", flush=True)
        if self.nonfinite_in_row < self.cfg.train.max_nonfinite:
            return
        # Roll the data position back to the start of the unfinished step: the kept state is the
        # one after the last optimizer step, so a resume replays this step's batches.
        state.data_epoch, state.data_batch = start_position
        tag = tag_for(state.step)
        if tag not in self.checkpointer.complete_tags():
            self.checkpointer.save(self.engine, state, self.resolved_config)
        raise NonFiniteLossError(
            f"{self.nonfinite_in_row} non-finite losses in a row at step {state.step + 1} "
            f"(train.max_nonfinite={self.cfg.train.max_nonfinite}); the last good state is checkpoint "
            f"{self.checkpointer.root / tag}. Lower optimizer.lr, raise schedule.warmup_steps or use "
            f"train.precision=fp32/bf16, then resume with --resume auto")

    def _record(self, state: TrainState, lr: float, window: "_Window") -> dict:
        seconds = time.perf_counter() - window.started
        parts = window.loss_sums / window.steps
        record = {"step": state.step, **{name: float(parts[i]) for i, name in enumerate(LOSS_PARTS)},
                  "lr": float(lr), "grad_norm": window.grad_norm,
                  "samples_per_s": window.steps * self.cfg.train.micro_batch * self.cfg.train.grad_accum
                  * self.world.world_size / seconds,
                  "step_time_s": seconds / window.steps,
                  "data_wait_share": window.data_wait / seconds,
                  "peak_mem_mb": peak_memory_mb(self.world.device),
                  "samples_seen": state.samples_seen,
                  "nonfinite_skipped": state.nonfinite_skipped,
                  "samples_skipped": state.samples_skipped}
        record.update(self.gpu.read())
        return record


class _Window:
    """What accumulates between two logged steps."""

    def __init__(self):
        self.started = time.perf_counter()
        self.steps = 0
        self.data_wait = 0.0
        self.grad_norm = None
        self.loss_sums = torch.zeros(len(LOSS_PARTS), dtype=torch.float64)
