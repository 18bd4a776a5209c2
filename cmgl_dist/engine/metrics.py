"""MetricsProcessor: owns the counters between two logged steps and derives the logged record.

The loop only reports events (a data wait, a micro batch's all-reduced loss parts, a finished
optimizer step); this component keeps the window, derives samples/s, step time and data-wait
share, and hands one record per logged step to the sinks (`Telemetry`). Loss parts (the mean over
the window's kept micro batches), skip counts and the grad norm stay on the device until a record
is made: one host copy every `train.log_every` steps, none per micro batch (after torchtitan's
`MetricsProcessor`).
"""
from __future__ import annotations

import time
from typing import Optional

import torch

from cmgl_dist.engine.telemetry import GpuProbe, Telemetry, peak_memory_mb

LOSS_PARTS = ("loss", "loss_global", "loss_local")


class MetricsProcessor:
    def __init__(self, telemetry: Telemetry, *, global_batch: int, world_size: int, grad_accum: int,
                 device: torch.device):
        self.telemetry = telemetry
        self.global_batch = global_batch
        self.world_size = world_size
        self.grad_accum = grad_accum
        self.device = device
        self.gpu = GpuProbe(device)
        self._skipped = torch.zeros((), dtype=torch.float64, device=device)
        self._new_window()

    def _new_window(self) -> None:
        self.started = time.perf_counter()
        self.steps = 0
        self.data_wait_s = 0.0
        self.grad_norm: Optional[torch.Tensor | float] = None
        self._loss_sums = torch.zeros(len(LOSS_PARTS), dtype=torch.float64, device=self.device)
        self._kept = torch.zeros((), dtype=torch.float64, device=self.device)

    # ---- events from the loop ----
    def data_waited(self, seconds: float) -> None:
        self.data_wait_s += seconds

    def micro_batch(self, summed_parts: torch.Tensor, skipped: torch.Tensor, *, kept: torch.Tensor | bool) -> None:
        """Loss parts summed over ranks (device tensor) and samples the loader skipped, also summed.

        Skips count whether or not the micro batch was kept; loss parts only when it was. `kept`
        may be a device bool: it is applied on the device (torch.where), never read here.
        """
        kept = torch.as_tensor(kept, device=self.device)
        self._skipped += skipped.double()
        self._loss_sums += torch.where(kept, summed_parts.double() / self.world_size, 0.0)
        self._kept += kept.double()

    def step_done(self, grad_norm: Optional[torch.Tensor | float]) -> None:
        self.steps += 1
        self.grad_norm = grad_norm
        self.telemetry.advance()

    # ---- reading ----
    def take_skipped(self) -> int:
        """Samples skipped since the last call (one host copy): for the train state before a save or a log."""
        count = int(self._skipped.item())
        self._skipped.zero_()
        return count

    def log(self, state, lr: float) -> dict:
        """The window's record, sent to every sink; starts a new window."""
        seconds = time.perf_counter() - self.started
        *sums, kept = torch.cat([self._loss_sums, self._kept[None]]).tolist()  # the one host copy of the window
        parts = [total / kept if kept else float("nan") for total in sums]  # nan: every micro batch dropped
        record = {"step": state.step, **dict(zip(LOSS_PARTS, parts)), "lr": float(lr),
                  "grad_norm": _scalar(self.grad_norm),
                  **window_rates(self.steps, self.global_batch, seconds, self.data_wait_s),
                  "peak_mem_mb": peak_memory_mb(self.device),
                  "samples_seen": state.samples_seen,
                  "nonfinite_skipped": state.nonfinite_skipped,
                  "samples_skipped": state.samples_skipped,
                  **self.gpu.read()}
        self.telemetry.log(record)
        self._new_window()
        return record


def window_rates(steps: int, global_batch: int, seconds: float, data_wait_s: float) -> dict:
    """samples/s, seconds per step and the share of the window spent waiting for data."""
    return {"samples_per_s": steps * global_batch / seconds, "step_time_s": seconds / max(1, steps),
            "data_wait_share": data_wait_s / seconds}


def _scalar(value: Optional[torch.Tensor | float]) -> Optional[float]:
    if value is None:
        return None
    return float(value.item() if isinstance(value, torch.Tensor) else value)
