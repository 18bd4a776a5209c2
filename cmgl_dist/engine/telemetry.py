"""The sinks of the metrics records (rank 0 only); `metrics.MetricsProcessor` makes the records.

Sinks: `<run_dir>/metrics.jsonl` (one JSON object per line, with at least `step` and `loss`),
TensorBoard under `<run_dir>/tb/`, one console line, and a progress bar on a terminal.
GPU utilisation, memory, power and temperature come from pynvml when a GPU is in use; on a CPU
run those keys are absent, never faked.
"""
from __future__ import annotations

import json
import logging
import math
import resource
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from cmgl_dist.atomic import write_text_atomic

log = logging.getLogger(__name__)


def truncate_jsonl_after(path: Path, step: int) -> None:
    """Keep only the records of `path` (JSON lines with a "step") up to `step`: a resumed run rewrites
    what came after its checkpoint. A line a kill cut short (not JSON, or without a step) is dropped
    with a warning."""
    if not path.exists():
        return
    kept = []
    for raw in path.read_bytes().splitlines():
        line = raw.decode("utf-8", "replace")  # invalid UTF-8 (a torn or foreign line) is not JSON below
        record = _record_or_none(line) if "\ufffd" not in line else None
        if record is None and line.strip():
            log.warning("%s: dropping a torn line from an interrupted run: %r", path, line[:80])
        elif record is not None and record["step"] <= step:
            kept.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in kept))


class Telemetry:
    def __init__(self, run_dir: Path, *, rank: int, start_step: int, total_steps: int, tensorboard: bool):
        self.active = rank == 0
        self.path = Path(run_dir) / "metrics.jsonl"
        self.total = total_steps
        self.writer = None
        self.bar = None
        if not self.active:
            return
        self._truncate_after(start_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            # purge_step drops events a killed run wrote past the checkpoint it resumes from.
            self.writer = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=start_step + 1)
        # tqdm hides itself when stderr is not a terminal (logs, CI).
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", disable=None, file=sys.stderr,
                        dynamic_ncols=True)
        self.file = open(self.path, "a")

    def _truncate_after(self, step: int) -> None:
        truncate_jsonl_after(self.path, step)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def log(self, record: dict) -> None:
        if not self.active:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])
        line = console_line(record, self.total)
        if self.bar is not None and not self.bar.disable:
            self.bar.write(line)
        else:
            log.info(line)

    def close(self) -> None:
        if not self.active:
            return
        self.file.close()
        if self.writer is not None:
            self.writer.close()
        self.bar.close()


def _record_or_none(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def console_line(r: dict, total: int) -> str:
    parts = [f"step {r['step']}/{total}", f"loss {r['loss']:.4f}",
             f"(global {r['loss_global']:.4f}, local {r['loss_local']:.4f})", f"lr {r['lr']:.2e}"]
    if r.get("grad_norm") is not None and math.isfinite(r["grad_norm"]):
        parts.append(f"grad {r['grad_norm']:.3f}")
    parts += [f"{r['samples_per_s']:.1f} samples/s", f"data wait {r['data_wait_share']:.0%}"]
    gpu = [f"{r[key]:.0f}{unit}" for key, unit in (("gpu_util_pct", "%"), ("gpu_power_w", "W"), ("gpu_temp_c", "C"))
           if key in r]
    if gpu:
        parts.append("gpu " + " ".join(gpu))
    parts.append(f"peak mem {r['peak_mem_mb']:.0f}MB")
    if r["nonfinite_skipped"] or r["samples_skipped"]:
        parts.append(f"skipped {r['nonfinite_skipped']} non-finite batches, {r['samples_skipped']} samples")
    return " | ".join(parts)


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated CUDA memory on `device`, or this process's peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class GpuProbe:
    """pynvml readings for one GPU; `read()` is {} when there is no GPU or no NVML."""

    def __init__(self, device: torch.device):
        self.handle = None
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            # NVML numbers GPUs physically; torch's index is relative to CUDA_VISIBLE_DEVICES.
            uuid = str(torch.cuda.get_device_properties(device).uuid)
            self.handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
            self.nvml = pynvml
        except Exception as err:  # no driver, no NVML library, or a MIG slice without readings
            log.warning("no GPU readings from pynvml (%s)", err)
            self.handle = None

    def read(self) -> dict:
        if self.handle is None:
            return {}
        nv, handle = self.nvml, self.handle
        readings = {
            "gpu_util_pct": lambda: float(nv.nvmlDeviceGetUtilizationRates(handle).gpu),
            "gpu_mem_used_mb": lambda: nv.nvmlDeviceGetMemoryInfo(handle).used / 2**20,
            "gpu_power_w": lambda: nv.nvmlDeviceGetPowerUsage(handle) / 1000.0,
            "gpu_temp_c": lambda: float(nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU)),
        }
        out = {}
        for key, read in readings.items():
            try:
                out[key] = read()
            except nv.NVMLError:  # e.g. power on boards that do not report it: left out, not faked
                pass
        return out

