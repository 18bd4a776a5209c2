"""`local_similarity`: the one entry point of the local similarity, dispatching to a backend.

"triton" runs `cmgl_dist.kernels.local_similarity_triton` (CUDA tensors, or CPU tensors under
TRITON_INTERPRET=1); "reference" runs the chunked PyTorch reference; "auto" picks Triton for CUDA
tensors when triton is installed, else the reference. Every backend computes the same S; see
`local_reference` for the definition.
"""
from __future__ import annotations

import importlib.util
import os

import torch

from .local_reference import local_similarity_reference

BACKENDS = ("auto", "triton", "reference")


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """The backend that `local_similarity` runs for `backend` and tensors on `device`."""
    if backend not in BACKENDS:
        raise ValueError(f"local similarity backend {backend!r} is not one of {BACKENDS}")
    if backend == "auto":
        on_kernel = device.type == "cuda" and dtype in KERNEL_DTYPES and _triton_installed()
        return "triton" if on_kernel else "reference"
    if backend == "triton":
        if not _triton_installed():
            raise RuntimeError("backend='triton' needs the triton package: `pip install triton`, "
                               "or set loss.local_backend=reference")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(f"backend='triton' needs CUDA tensors (got {device}); set TRITON_INTERPRET=1 "
                               "to run the kernel on CPU in the interpreter, or use backend='reference'")
    return backend


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

    Each backend validates its inputs. The kernel is imported only when chosen, so the reference
    runs where triton is absent.
    """
    if word_pooling != "logsumexp" or resolve_backend(backend, words.device, words.dtype) == "reference":
        return local_similarity_reference(words, word_mask, regions, gamma1, gamma2, word_pooling=word_pooling)
    from cmgl_dist.kernels import local_similarity_triton

    return local_similarity_triton(words, word_mask, regions, gamma1, gamma2)
