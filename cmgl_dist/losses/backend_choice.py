"""`auto`'s choice of local-similarity backend: the fastest correct one per (device, dtype, shape bucket).

On the first batch of a bucket every candidate runs on that batch (forward, and backward when
the caller needs gradients), once to warm up (compile, autotune) and once timed; a candidate
whose S differs from the reference's beyond the dtype's tolerance, or that fails, is dropped.
The choice and the times are logged and kept for the process, as cuDNN's benchmark mode does,
so later batches of the bucket pay nothing.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import torch

from cmgl_dist.kernels.inputs import word_bucket

log = logging.getLogger(__name__)
Backend = Callable[..., torch.Tensor]
# Relative tolerance of a candidate's S against the reference's on the timing batch.
AGREEMENT = {torch.float32: 1e-3, torch.float64: 1e-6}
HALF_AGREEMENT = 3e-2

_choices: dict[tuple, str] = {}


def bucket_key(words: torch.Tensor, regions: torch.Tensor, with_grad: bool) -> tuple:
    """(device, dtype, T, I, W rounded up to the word bucket, R, D, with_grad)."""
    (T, W, D), (I, R, _) = words.shape, regions.shape
    return (str(words.device), words.dtype, T, I, word_bucket(W), R, D, with_grad)


def chosen_backends() -> dict[tuple, str]:
    """The choices made so far in this process, by bucket key."""
    return dict(_choices)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run(fn: Backend, inputs: tuple, gammas: tuple, with_grad: bool) -> torch.Tensor:
    words, word_mask, regions = inputs
    with torch.enable_grad() if with_grad else torch.no_grad():
        words = words.detach().requires_grad_(with_grad)
        regions = regions.detach().requires_grad_(with_grad)
        S = fn(words, word_mask, regions, *gammas)
        if with_grad:
            S.sum().backward()
    return S.detach()


def _time_ms(fn: Backend, inputs: tuple, gammas: tuple, with_grad: bool) -> tuple[float, torch.Tensor]:
    device = inputs[0].device
    _run(fn, inputs, gammas, with_grad)  # warm-up: compile, autotune
    _sync(device)
    start = time.perf_counter()
    S = _run(fn, inputs, gammas, with_grad)
    _sync(device)
    return (time.perf_counter() - start) * 1e3, S


def _agrees(S: torch.Tensor, wanted: torch.Tensor, dtype: torch.dtype) -> bool:
    tol = AGREEMENT.get(dtype, HALF_AGREEMENT)
    err = (S.double() - wanted.double()).abs().max()
    return bool(torch.isfinite(S).all()) and float(err) <= tol * max(1.0, float(wanted.abs().max()))


def choose_backend(candidates: dict[str, Backend], reference: str, words: torch.Tensor,
                   word_mask: torch.Tensor, regions: torch.Tensor, gammas: tuple[float, float]) -> str:
    """The name of the fastest candidate that agrees with `candidates[reference]`, timed once per
    bucket; `reference` itself is always a candidate and the fallback."""
    with_grad = torch.is_grad_enabled() and (words.requires_grad or regions.requires_grad)
    key = bucket_key(words, regions, with_grad)
    if key in _choices:
        return _choices[key]
    inputs = (words, word_mask, regions)
    times, results = {}, {}
    for name, fn in candidates.items():
        try:
            times[name], results[name] = _time_ms(fn, inputs, gammas, with_grad)
        except Exception as err:  # noqa: BLE001 - any failure (compiler, OOM) just drops a candidate
            if name == reference and len(candidates) == 1:
                raise
            log.warning("local similarity backend %s failed on %s, not a candidate: %r", name, key, err)
    wanted = results.get(reference)  # None when the reference itself failed (OOM): unchecked
    correct = {name: ms for name, ms in times.items()
               if wanted is None or name == reference or _agrees(results[name], wanted, words.dtype)}
    for name in sorted(set(times) - set(correct)):
        log.warning("local similarity backend %s disagrees with %s on %s, not a candidate", name, reference, key)
    choice = min(correct, key=correct.get) if correct else reference
    _choices[key] = choice
    log.info("local similarity backend for %s: %s (%s)", key, choice,
             ", ".join(f"{name} {ms:.2f} ms" for name, ms in sorted(times.items(), key=lambda kv: kv[1])))
    return choice
