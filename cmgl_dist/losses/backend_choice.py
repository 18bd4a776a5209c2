"""`auto`'s choice of local-similarity backend: the fastest correct one per (device, dtype, shape bucket).

For a bucket, its candidates run once to warm up (compile, autotune) and once timed, forward
and backward when the caller needs gradients; a candidate whose S differs from the reference's
beyond the dtype's tolerance, or that fails, is dropped. The choice is kept for the process, as
cuDNN's benchmark mode does, so later batches of the bucket pay nothing.

Two ways in:
- `agree_backends` (the loss, over ranks): one table {word bucket: backend} for every word bucket
  a run can meet, agreed by every rank before the loss's first exchange. Rank 0 times each bucket
  on its own batch brought to that shape and broadcasts the table once. A choice made lazily per
  bucket would be a collective that ranks enter at different moments: in the ring each rank
  scores another rank's word block at a time, so their buckets differ, and a rank that already
  holds a bucket's choice would skip the broadcast another rank is waiting in. The table's key
  (shapes, candidates, buckets) is the same on every rank, so every rank calls it, or none.
- `choose_backend` (one process: evaluation, benchmarks): lazily per bucket, no collective.
With a record file (`use_record`, set by `cmgl train` to `<run_dir>/local_backend.json`,
RECORD_FILE) rank 0 also writes each choice and the times there, and a resumed run on the same
machine and versions reuses them instead of timing again.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from cmgl_dist.atomic import write_text_atomic
from cmgl_dist.kernels.inputs import word_bucket

from .distributed import rank_and_world_size

log = logging.getLogger(__name__)
Backend = Callable[..., torch.Tensor]
# Relative tolerance of a candidate's S against the reference's on the timing batch.
AGREEMENT = {torch.float32: 1e-3, torch.float64: 1e-6}
HALF_AGREEMENT = 3e-2

_choices: dict[tuple, str] = {}
_tables: dict[tuple, dict[int, str]] = {}
_record: dict = {"path": None}
RECORD_FORMAT = 1
RECORD_FILE = "local_backend.json"  # in the run folder


def bucket_key(words: torch.Tensor, regions: torch.Tensor, with_grad: bool) -> tuple:
    """(device type, dtype, T, I, W rounded up to the word bucket, R, D, with_grad): what a choice
    is kept and recorded by."""
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
    _tables.clear()
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


def _decide(candidates: dict[str, Backend], reference: str, inputs: tuple, gammas: tuple, with_grad: bool,
            key: tuple) -> str:
    """This process's choice for `key`: recorded, or timed now (and recorded)."""
    if key in _choices:
        return _choices[key]
    choice = recorded_choice(key, list(candidates))
    if choice is not None:
        log.info("local similarity backend for %s: %s (recorded in %s)", _key_text(key), choice, _record["path"])
    else:
        choice, times, rejected = _time_candidates(candidates, reference, inputs, gammas, with_grad, key)
        log.info("local similarity backend for %s: %s (%s)", _key_text(key), choice,
                 ", ".join(f"{name} {ms:.2f} ms" for name, ms in sorted(times.items(), key=lambda kv: kv[1])))
        _write_record(key, list(candidates), choice, times, rejected)
    _choices[key] = choice
    return choice


def choose_backend(candidates: dict[str, Backend], reference: str, words: torch.Tensor,
                   word_mask: torch.Tensor, regions: torch.Tensor, gammas: tuple[float, float]) -> str:
    """The name of the fastest candidate that agrees with `candidates[reference]` for this bucket,
    timed once per process (or read from the record); `reference` itself is always a candidate
    and the fallback. No collective: over ranks, use `agree_backends`."""
    with_grad = torch.is_grad_enabled() and (words.requires_grad or regions.requires_grad)
    key = bucket_key(words, regions, with_grad)
    return _decide(candidates, reference, (words, word_mask, regions), gammas, with_grad, key)


def _shaped(words: torch.Tensor, word_mask: torch.Tensor, texts: int, slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A timing batch of `texts` texts and `slots` word slots made from a real one: its texts
    repeated, its word slots cut or padded (masked). Every text keeps its first slot, so none is
    empty (an empty text's S is -inf)."""
    rows = torch.arange(texts, device=words.device) % words.shape[0]
    words, word_mask = words.detach()[rows], word_mask[rows]
    pad = slots - words.shape[1]
    if pad < 0:
        words, word_mask = words[:, :slots], word_mask[:, :slots]
    else:
        words, word_mask = F.pad(words, (0, 0, 0, pad)), F.pad(word_mask, (0, pad), value=False)
    word_mask = word_mask.clone()
    word_mask[:, 0] = True
    return words.contiguous(), word_mask


def agree_backends(candidates: dict[str, Backend], reference: str, words: torch.Tensor, word_mask: torch.Tensor,
                   regions: torch.Tensor, gammas: tuple[float, float], texts: int, buckets: Sequence[int],
                   with_grad: bool) -> dict[int, str]:
    """{word bucket: backend} for every bucket in `buckets` (word slots, multiples of WORD_BUCKET),
    for calls that score `texts` texts against these `regions`. Rank 0 decides each bucket as
    `choose_backend` does, timing on its own batch brought to the bucket's shape (`_shaped`), and
    broadcasts the whole table once; every rank gets the same table.

    A collective: every rank of the process group must call it at the same point with the same
    shapes, candidates and buckets (the loss does, before its first exchange, with every bucket the
    run's `data.max_length` allows). The table is kept, so later calls with the same arguments
    return it on every rank without a collective."""
    key = (words.device.type, words.dtype, texts, *regions.shape, with_grad, tuple(buckets), tuple(candidates))
    if key in _tables:
        return _tables[key]
    rank, world_size = rank_and_world_size()
    table = [None]
    if rank == 0:
        table[0] = {}
        for slots in buckets:
            inputs = (*_shaped(words, word_mask, texts, slots), regions.detach())
            bucket = bucket_key(inputs[0], inputs[2], with_grad)
            table[0][slots] = _decide(candidates, reference, inputs, gammas, with_grad, bucket)
    if world_size > 1:
        dist.broadcast_object_list(table, src=0)
    _tables[key] = table[0]
    return table[0]
