"""A loader's batch on the device where the model runs: training and evaluation move it the same way."""
from __future__ import annotations

import torch


def to_device(batch: dict, device: torch.device, channels_last: bool = False) -> dict:
    """`batch` with every tensor on `device`. The copies are non-blocking: the loader pins its host
    batches (cmgl_dist/data/loader.py), so they overlap the compute already queued."""
    moved = {key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
             for key, value in batch.items()}
    if channels_last:
        moved["images"] = moved["images"].contiguous(memory_format=torch.channels_last)
    if "input_ids" in batch:  # readable on the host too: the text cache keys rows by them without a device read
        moved["host_input_ids"], moved["host_attention_mask"] = batch["input_ids"], batch["attention_mask"]
    return moved
