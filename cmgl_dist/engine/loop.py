"""The step loop: micro batches -> DeepSpeed engine -> loss -> backward/step, with a NaN/Inf guard.

One optimizer step takes `train.grad_accum` micro batches. A micro batch whose loss is not
finite on any rank is dropped by all ranks together, on the device: its gradients are zeroed
before they accumulate (`nonfinite.NonFiniteGuard`), so nothing of it reaches the weights. A
micro step reads nothing on the host (`cmgl_dist.host_reads`); drops are counted on the device
and read every `train.log_every` steps, where `train.max_nonfinite` of them in a row stop the
run after a checkpoint.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterator, Optional

import torch
import torch.distributed as dist

from cmgl_dist.config import CMGLConfig
from cmgl_dist.data.device import to_device
from cmgl_dist.engine.checkpoint import Checkpointer, TrainState, tag_for
from cmgl_dist.engine.distributed import World
from cmgl_dist.engine.metrics import LOSS_PARTS, MetricsProcessor
from cmgl_dist.engine.nonfinite import NonFiniteGuard
from cmgl_dist.engine.sample_log import SampleLog
from cmgl_dist.host_reads import check_texts_have_words, device_paths_forced, words_checked_on_host
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
                 metrics: MetricsProcessor, resolved_config: dict, samples: Optional[SampleLog] = None):
        self.cfg = cfg
        self.world = world
        self.engine = engine
        self.loss_fn = loss_fn
        self.checkpointer = checkpointer
        self.metrics = metrics
        self.resolved_config = resolved_config
        self.samples = samples  # train.record_samples: the keys of every step
        self.guard = NonFiniteGuard(engine.module, world.device)
        self.channels_last = (world.cuda or device_paths_forced()) and cfg.train.channels_last

    def run(self, batches: Batches, state: TrainState) -> TrainState:
        cfg = self.cfg.train
        for step in range(state.step + 1, cfg.steps + 1):
            lr = self.engine.get_lr()[0]
            self.step(batches, state)
            last = step == cfg.steps
            logged, saved = step % cfg.log_every == 0 or last, step % cfg.ckpt_every == 0 or last
            if logged or saved:  # the steps that read device values on the host
                self._check_nonfinite(state)
            if logged:
                state.samples_skipped += self.metrics.take_skipped()
                self.metrics.log(state, lr)
            if saved:
                self._save(state)
        return state

    def step(self, batches: Batches, state: TrainState) -> None:
        """grad_accum micro batches -> one optimizer step."""
        keys = []
        for _ in range(self.cfg.train.grad_accum):
            with phase("data_wait"):
                waited = time.perf_counter()
                epoch, position, batch = next(batches)
                self.metrics.data_waited(time.perf_counter() - waited)
            # Checks that need values read the collated batch, still in host memory.
            check_texts_have_words(batch["word_mask"], batch.get("keys"), on_host=True)
            keys += batch.get("keys", [])
            with phase("host_to_device"):
                on_device = to_device(batch, self.world.device, self.channels_last)
            self.micro_step(on_device, batch.get("skipped", 0))
            with phase("optimizer_step"):
                self.engine.step()
            state.data_epoch, state.data_batch = epoch, position
            state.data_samples = position * self.world.world_size * self.cfg.train.micro_batch
        state.step += 1
        state.samples_seen += self.metrics.global_batch
        self.metrics.step_done(self.engine.get_global_grad_norm())
        if self.samples is not None:
            self.samples.record(state.step, keys)

    def micro_step(self, on_device: dict, skipped: int) -> None:
        """Forward, loss, the guard's all-reduce and backward of one micro batch: no host read."""
        # The model's outputs go to the loss in the compute dtype (bf16 under autocast): the
        # losses run softmaxes and log-sum-exps in fp32 themselves (cmgl_dist.losses).
        with words_checked_on_host():
            parts = self.loss_fn(self.engine(on_device))
        with phase("loss_all_reduce"):
            shared = self._all_reduce(parts, skipped)
        kept = self.guard.update(shared[_NONFINITE] > 0)
        self.metrics.micro_batch(shared[:_NONFINITE], shared[_SKIPPED], kept=kept)
        with phase("backward"):
            self.engine.backward(torch.where(kept, parts["loss"], 0.0))

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

    def _check_nonfinite(self, state: TrainState) -> None:
        """On a log step: count the window's dropped micro batches; stop after max_nonfinite in a row."""
        dropped, longest = self.guard.take()
        state.nonfinite_skipped += dropped
        if dropped and self.world.rank == 0:
            log.warning("steps to %d: %d micro batches with a non-finite loss dropped (%d in a row at most, "
                        "%d in all)", state.step, dropped, longest, state.nonfinite_skipped)
        if longest < self.cfg.train.max_nonfinite:
            return
        if tag_for(state.step) not in self.checkpointer.complete_tags():
            self._save(state)
        raise NonFiniteLossError(
            f"{longest} non-finite losses in a row by step {state.step} "
            f"(train.max_nonfinite={self.cfg.train.max_nonfinite}); no dropped batch reached the weights, kept "
            f"in checkpoint {self.checkpointer.root / tag_for(state.step)}. Lower optimizer.lr, raise "
            f"schedule.warmup_steps or use train.precision=fp32/bf16, then resume with --resume auto")
