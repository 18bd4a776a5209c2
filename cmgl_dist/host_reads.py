"""Where a training step reads values on the host, so that it never waits on the GPU.

On a GPU every read of a device value (`.item()`, `.tolist()`, `bool(t)`, `nonzero`, `int(t)`)
waits until the device has run everything queued before it. A training micro step makes no such
read (tests/test_no_host_sync.py runs micro steps under a dispatch mode that fails on them);
what needs a value reads host data instead:
- `host_values(t)`: the values of a CPU tensor (ints all-gathered over a gloo group, a batch's
  word mask before it is copied to the device). Reading host memory waits on nothing.
- `words_checked_on_host()`: the caller checked every text's word count on the host (the
  collated batch), so the local-similarity input check skips its own read of the device mask.
Values that are only logged are read every `train.log_every` steps (engine/metrics.py).

`CMGL_DEVICE_PATHS=1` makes CPU tensors take the branches an accelerator's take (`device_paths`):
the tests run the GPU's control flow, and find its reads, on CPU ranks.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator

import torch

_state = threading.local()
DEVICE_PATHS_ENV = "CMGL_DEVICE_PATHS"


def device_paths_forced() -> bool:
    """CPU tensors take the accelerator's branches (`CMGL_DEVICE_PATHS=1`)."""
    return os.environ.get(DEVICE_PATHS_ENV) == "1"


def device_paths(tensor: torch.Tensor) -> bool:
    """Whether code handling `tensor` takes the accelerator's branch: on an accelerator, or forced."""
    return tensor.device.type != "cpu" or device_paths_forced()


@contextmanager
def _flag(name: str) -> Iterator[None]:
    before = getattr(_state, name, False)
    setattr(_state, name, True)
    try:
        yield
    finally:
        setattr(_state, name, before)


def host_reads_allowed() -> bool:
    """True inside `host_values`/`reading_host_values` (a dispatch-mode check allows reads there)."""
    return getattr(_state, "host", False)


@contextmanager
def reading_host_values() -> Iterator[None]:
    """Marks reads of host (CPU) tensors: they wait on no device."""
    with _flag("host"):
        yield


def _host(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.device.type != "cpu":
        raise ValueError(f"host reads take host tensors only, got one on {tensor.device}")
    return tensor


def host_values(tensor: torch.Tensor) -> list:
    """tensor.tolist() for a CPU tensor; a device tensor raises (its read would wait on the device)."""
    with _flag("host"):
        return _host(tensor).tolist()


def host_numpy(tensor: torch.Tensor):
    """tensor.numpy() for a CPU tensor, as `host_values`."""
    with _flag("host"):
        return _host(tensor).numpy()


@contextmanager
def words_checked_on_host() -> Iterator[None]:
    """Inside it, local-similarity inputs skip the read that finds texts without words."""
    with _flag("words"):
        yield


def words_were_checked() -> bool:
    return getattr(_state, "words", False)


def check_texts_have_words(word_mask: torch.Tensor, keys=None, on_host: bool = False) -> None:
    """Raises ValueError naming the texts (by sample key where given) whose word_mask is all
    False: their S would be -inf. `on_host`: the mask is host data by contract (a collated batch);
    otherwise a device mask is read from the device, which waits for it: call it outside
    training steps."""
    empty = [row for row, has in enumerate(host_values(word_mask.any(dim=1))) if not has] \
        if on_host or not device_paths(word_mask) else (~word_mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        names = [keys[row] for row in empty] if keys is not None else empty
        raise ValueError(f"texts {names[:10]} have no words (word_mask all False); S would be -inf")
