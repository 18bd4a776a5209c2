"""`local_similarity`: the one entry point of the local similarity, dispatching to a backend.

Every backend computes the same S (the definition is in `local_reference`) and returns it in
float32 (float64 for float64 inputs):
  reference  chunked PyTorch in float32, recomputing in backward; any device
  compiled   torch.compile of the same form over the same memory-bounded blocks (`local_compiled`)
  triton     the fused kernel `cmgl_dist.kernels.local_similarity_triton`: CUDA tensors, or CPU
             tensors under TRITON_INTERPRET=1 (tests)
  auto       CPU: the reference (the interpreter and CPU compiles are never worth it there);
             CUDA: the fastest of triton / compiled / reference that agrees with the reference,
             timed once per (device, dtype, shape bucket) (`backend_choice`). `loss.auto_candidates`
             names the candidates instead, on any device: on the CPU it makes the choice run in
             tests as it runs on a GPU
Words and regions of different dtypes are brought to a common one first (16-bit stays 16-bit:
the products then run on tensor cores; softmaxes and sums run in float32 inside every backend).
"""
from __future__ import annotations

import importlib.util
import os
from typing import Optional, Sequence

import torch

from .backend_choice import choose_backend
from .local_compiled import local_similarity_compiled
from .local_reference import local_similarity_reference

BACKENDS = ("auto", "reference", "compiled", "triton")
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _triton(words, word_mask, regions, gamma1, gamma2):
    from cmgl_dist.kernels import local_similarity_triton

    return local_similarity_triton(words, word_mask, regions, gamma1, gamma2)


RUN = {"reference": local_similarity_reference, "compiled": local_similarity_compiled, "triton": _triton}


def auto_candidates(device: torch.device, dtype: torch.dtype,
                    named: Optional[Sequence[str]] = None) -> tuple[str, ...]:
    """What `auto` times on `device` for `dtype` (the reference, the always-correct fallback, last):
    `named` where given (each must run there), else by device."""
    if named is not None:
        for name in named:
            resolve_backend(name, device, dtype)
        return (*dict.fromkeys(name for name in named if name != "reference"), "reference")
    if device.type != "cuda":
        return ("reference",)
    kernel = ("triton",) if dtype in KERNEL_DTYPES and _triton_installed() else ()
    return (*kernel, "compiled", "reference")


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype = torch.float32,
                    candidates: Optional[Sequence[str]] = None) -> str:
    """The backend `local_similarity` runs for `backend` on `device`; "auto" where `auto` has
    several candidates to time (`candidates`: `auto_candidates`' `named`). Raises for a forced
    backend that cannot run there."""
    if backend not in BACKENDS:
        raise ValueError(f"local similarity backend {backend!r} is not one of {BACKENDS}")
    if backend == "auto":
        names = auto_candidates(device, dtype, candidates)
        return names[0] if len(names) == 1 else "auto"
    if backend == "triton":
        if not _triton_installed():
            raise RuntimeError("backend='triton' needs the triton package: `pip install triton`, "
                               "or set loss.local_backend=reference")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(f"backend='triton' needs CUDA tensors (got {device}); set TRITON_INTERPRET=1 "
                               "to run the kernel on CPU in the interpreter, or use backend='reference'")
    return backend


def common_dtype(words: torch.Tensor, regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both in one dtype: the shared 16-bit one when both are 16-bit, else the promoted one."""
    if words.dtype == regions.dtype:
        return words, regions
    half = (torch.bfloat16, torch.float16)
    dtype = (torch.bfloat16 if words.dtype in half and regions.dtype in half
             else torch.promote_types(words.dtype, regions.dtype))
    return words.to(dtype), regions.to(dtype)


def local_similarity(
    words: torch.Tensor,
    word_mask: torch.Tensor,
    regions: torch.Tensor,
    gamma1: float = 4.0,
    gamma2: float = 5.0,
    backend: str = "auto",
    word_pooling: str = "logsumexp",
) -> torch.Tensor:
    """S [T, I] from words [T, W, D], word_mask [T, W] (bool), regions [I, R, D].

    `word_pooling="max"` (GLoRIA's zero-shot score, see `local_reference`) runs the reference.
    Each backend validates its inputs. The kernel is imported only when chosen, so the other
    backends run where triton is absent.
    """
    words, regions = common_dtype(words, regions)
    if word_pooling != "logsumexp":
        return local_similarity_reference(words, word_mask, regions, gamma1, gamma2, word_pooling=word_pooling)
    name = resolve_backend(backend, words.device, words.dtype)
    if name == "auto":
        candidates = {key: RUN[key] for key in auto_candidates(words.device, words.dtype)}
        name = choose_backend(candidates, "reference", words, word_mask, regions, (gamma1, gamma2))
    return RUN[name](words, word_mask, regions, gamma1, gamma2)
