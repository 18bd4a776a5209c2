"""`auto`'s choice of local-similarity backend: the fastest correct one per (device, dtype, shape bucket).

On the first batch of a bucket rank 0 runs every candidate on that batch (forward, and backward
when the caller needs gradients), once to warm up (compile, autotune) and once timed; a
candidate whose S differs from the reference's beyond the dtype's tolerance, or that fails, is
dropped. Rank 0 broadcasts the choice, so every rank runs the same backend (the same rounding,
and no rank waits on a slower one). The choice is kept for the process, as cuDNN's benchmark
mode does, so later batches of the bucket pay nothing; with a record file (`use_record`, set by
`cmgl train` to `<run_dir>/local_backend.json`, RECORD_FILE) rank 0 also writes the choice and the times
there, and a resumed run on the same machine and versions reuses them instead of timing again.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist

from cmgl_dist.atomic import write_text_atomic
from cmgl_dist.kernels.inputs import word_bucket

from .distributed import rank_and_world_size

log = logging.getLogger(__name__)
Backend = Callable[..., torch.Tensor]
# Relative tolerance of a candidate's S against the reference's on the timing batch.
AGREEMENT = {torch.float32: 1e-3, torch.float64: 1e-6}
HALF_AGREEMENT = 3e-2

_choices: dict[tuple, str] = {}
_record: dict = {"path": None}
RECORD_FORMAT = 1
RECORD_FILE = "local_backend.json"  # in the run folder


def bucket_key(words: torch.Tensor, regions: torch.Tensor, with_grad: bool) -> tuple:
    """(device type, dtype, T, I, W rounded up to the word bucket, R, D, with_grad): the same on
    every rank, so that the ranks meet in the choice's broadcast."""
    (T, W, D), (I, R, _) = words.shape, regions.shape
    return (words.device.type, words.dtype, T, I, word_bucket(W), R, D, with_grad)


def _key_text(key: tuple) -> str:
    device, dtype, T, I, W, R, D, with_grad = key
    return (f"{device} {str(dtype).removeprefix('torch.')} T={T} I={I} W={W} R={R} D={D} "
            f"{'fwd+bwd' if with_grad else 'fwd'}")


def environment(device_type: str) -> dict:
    """What a recorded choice was timed on: a choice is reused only where all of it matches."""
    env = {"torch": torch.__version__, "device": device_type}
    if device_type == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        pass
    return env


def use_record(path: Optional[str | Path]) -> None:
    """Record the choices in `path` (rank 0 writes it) and reuse those recorded there before;
    None stops recording. Forgets the choices made so far in the process."""
    _choices.clear()
    _record["path"] = Path(path) if path is not None else None


def _read_record(path: Path) -> dict:
    if not path.is_file():
        return {"format": RECORD_FORMAT, "choices": {}}
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        log.warning("ignoring the unreadable backend record %s (%s); timing again", path, err)
        return {"format": RECORD_FORMAT, "choices": {}}
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT or not isinstance(
            record.get("choices"), dict):
        log.warning("ignoring the backend record %s: not format %d; timing again", path, RECORD_FORMAT)
        return {"format": RECORD_FORMAT, "choices": {}}
    return record


def recorded_choice(key: tuple, names) -> Optional[str]:
    """The recorded choice for `key`, if it was timed in this environment among these candidates."""
    path = _record["path"]
    if path is None:
        return None
    entry = _read_record(path)["choices"].get(_key_text(key))
    if (isinstance(entry, dict) and entry.get("environment") == environment(key[0])
            and sorted(entry.get("candidates", [])) == sorted(names) and entry.get("choice") in names):
        return entry["choice"]
    return None


def _write_record(key: tuple, names, choice: str, times: dict[str, float], rejected: list[str]) -> None:
    path = _record["path"]
    if path is None:
        return
    record = _read_record(path)
    record["choices"][_key_text(key)] = {
        "choice": choice, "times_ms": {name: round(ms, 4) for name, ms in times.items()},
        "rejected": rejected, "candidates": sorted(names), "environment": environment(key[0]),
        "timed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(record, indent=1, sort_keys=True) + "\n")


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


def _time_candidates(candidates: dict[str, Backend], reference: str, inputs: tuple, gammas: tuple,
                     with_grad: bool, key: tuple) -> tuple[str, dict[str, float], list[str]]:
    """(the fastest candidate that agrees with the reference, every candidate's time, the rejected)."""
    times, results = {}, {}
    for name, fn in candidates.items():
        try:
            times[name], results[name] = _time_ms(fn, inputs, gammas, with_grad)
        except Exception as err:  # noqa: BLE001 - any failure (compiler, OOM) just drops a candidate
            if name == reference and len(candidates) == 1:
                raise
            log.warning("local similarity backend %s failed on %s, not a candidate: %r", name, _key_text(key), err)
    wanted = results.get(reference)  # None when the reference itself failed (OOM): unchecked
    correct = {name: ms for name, ms in times.items()
               if wanted is None or name == reference or _agrees(results[name], wanted, inputs[0].dtype)}
    rejected = sorted(set(candidates) - set(correct))
    for name in sorted(set(times) - set(correct)):
        log.warning("local similarity backend %s disagrees with %s on %s, not a candidate", name, reference,
                    _key_text(key))
    return (min(correct, key=correct.get) if correct else reference), times, rejected


def choose_backend(candidates: dict[str, Backend], reference: str, words: torch.Tensor,
                   word_mask: torch.Tensor, regions: torch.Tensor, gammas: tuple[float, float]) -> str:
    """The name of the fastest candidate that agrees with `candidates[reference]`, timed once per
    bucket by rank 0 (or read from its record) and broadcast; `reference` itself is always a
    candidate and the fallback. Every rank of a process group must call it for the same bucket
    (the loss does: its shapes are the same on every rank)."""
    with_grad = torch.is_grad_enabled() and (words.requires_grad or regions.requires_grad)
    key = bucket_key(words, regions, with_grad)
    if key in _choices:
        return _choices[key]
    rank, world_size = rank_and_world_size()
    decided = [None]
    if rank == 0:
        decided[0] = recorded_choice(key, list(candidates))
        if decided[0] is not None:
            log.info("local similarity backend for %s: %s (recorded in %s)", _key_text(key), decided[0],
                     _record["path"])
        else:
            choice, times, rejected = _time_candidates(candidates, reference, (words, word_mask, regions), gammas,
                                                       with_grad, key)
            log.info("local similarity backend for %s: %s (%s)", _key_text(key), choice,
                     ", ".join(f"{name} {ms:.2f} ms" for name, ms in sorted(times.items(), key=lambda kv: kv[1])))
            _write_record(key, list(candidates), choice, times, rejected)
            decided[0] = choice
    if world_size > 1:
        dist.broadcast_object_list(decided, src=0)
    _choices[key] = decided[0]
    return decided[0]
