"""A written-down weak-scaling model of one training step (per-GPU micro-batch fixed), 1 to 512 GPUs.

Step time at n GPUs = compute that does not grow with n (encoders forward/backward, optimizer,
host-to-device, data wait: measured at one rank by `cmgl bench step`)
  + the loss compute that grows with n: each rank scores its B images against every gathered
    text, so the local loss (and the tiny global loss) cost k(n)/B times their 1-rank time, with
    k(n) = n B texts, or min(n B, loss.local_negatives) with the cap
  + gradient collectives per ZeRO stage: stages 0-2 move 2 (n-1)/n P bytes per rank (all-reduce,
    or reduce-scatter + all-gather of the updated partition), stage 3 adds a parameter all-gather
    in backward: 3 (n-1)/n P
  + feature collectives: all-gathers of the global vectors [B, D] x 2, the words [B, W, D] (+ mask)
    and the local score rows [B, k]; their backward all-reduces the whole gathered gradient
    (as `losses.distributed` does), so those grow with n.
Collectives are ring/tree shaped: bytes (n-1)/n x volume / bandwidth + log2(n) x latency, with
NVLink figures inside a node and InfiniBand between nodes (the slowest link sets a ring's pace).
Nothing is assumed to overlap, so the prediction is an upper bound on the step.

Defaults are H100/H200 HGX nodes: 8 GPUs, NVLink 4 at 450 GB/s per direction of which NCCL's
all-reduce bus bandwidth reaches ~360 GB/s, ~3 us latency; one 400 Gb/s NDR InfiniBand NIC per
GPU (~45 GB/s achievable of 50), ~8 us latency.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from cmgl_dist.bench.profiler import COLLECTIVE_PHASES

GRADIENT_VOLUME = {0: 2.0, 1: 2.0, 2: 2.0, 3: 3.0}  # x (n-1)/n x parameter bytes, per rank
LOSS_PHASES = ("local_loss", "global_loss")
COMM_PHASES = COLLECTIVE_PHASES


@dataclass(frozen=True)
class Network:
    gpus_per_node: int = 8
    nvlink_gbps: float = 360.0   # GB/s, NCCL bus bandwidth inside a node
    nvlink_latency_us: float = 3.0
    ib_gbps: float = 45.0        # GB/s per GPU between nodes
    ib_latency_us: float = 8.0

    def link(self, gpus: int) -> tuple[float, float]:
        """(bytes per second, seconds of latency) of the slowest link a ring over `gpus` crosses."""
        if gpus <= self.gpus_per_node:
            return self.nvlink_gbps * 1e9, self.nvlink_latency_us * 1e-6
        return self.ib_gbps * 1e9, self.ib_latency_us * 1e-6


@dataclass(frozen=True)
class Workload:
    """What one rank moves and computes; times in ms measured at one rank."""
    micro_batch: int
    embed_dim: int
    words: int
    param_bytes: float          # trainable parameters x bytes per gradient
    fixed_ms: float             # compute that does not grow with n
    loss_ms: float              # local + global loss at one rank (B texts)
    zero_stage: int = 1
    local_negatives: int | None = None
    feature_bytes: int = 4      # the loss runs in fp32


def collective_ms(kind: str, volume_bytes: float, gpus: int, net: Network) -> float:
    """Ring/tree time of one collective; `volume_bytes` is the full (gathered / reduced) tensor."""
    if gpus == 1:
        return 0.0
    bandwidth, latency = net.link(gpus)
    passes = {"all_reduce": 2.0, "all_gather": 1.0, "reduce_scatter": 1.0}[kind]
    return (passes * (gpus - 1) / gpus * volume_bytes / bandwidth + passes * math.log2(gpus) * latency) * 1e3


def texts_scored(w: Workload, gpus: int) -> int:
    everyone = gpus * w.micro_batch
    return everyone if w.local_negatives is None else min(everyone, w.local_negatives)


def feature_ms(w: Workload, gpus: int, net: Network) -> float:
    """Feature gathers of the loss (forward all-gather, backward all-reduce of the gathered gradient)."""
    b, d, n = w.micro_batch, w.embed_dim, gpus
    per_rank = {"global": 2 * b * d * w.feature_bytes, "words": b * w.words * (d * w.feature_bytes + 1),
                "local_rows": b * n * b * w.feature_bytes}
    total = 0.0
    for name, size in per_rank.items():
        total += collective_ms("all_gather", n * size, n, net)
        grad = size - b * w.words if name == "words" else size  # the mask has no gradient
        total += collective_ms("all_reduce", n * grad, n, net)
    return total


def gradient_ms(w: Workload, gpus: int, net: Network) -> float:
    if gpus == 1:
        return 0.0
    bandwidth, latency = net.link(gpus)
    volume = GRADIENT_VOLUME[w.zero_stage] * (gpus - 1) / gpus * w.param_bytes
    return (volume / bandwidth + GRADIENT_VOLUME[w.zero_stage] * math.log2(gpus) * latency) * 1e3


def predict(w: Workload, gpus: int, net: Network) -> dict:
    """Predicted ms per step by part, samples/s and weak-scaling efficiency at `gpus`."""
    parts = {"compute_ms": w.fixed_ms,
             "loss_ms": w.loss_ms * texts_scored(w, gpus) / w.micro_batch,
             "feature_comm_ms": feature_ms(w, gpus, net),
             "gradient_comm_ms": gradient_ms(w, gpus, net)}
    step = sum(parts.values())
    one = w.fixed_ms + w.loss_ms
    return {"gpus": gpus, "nodes": math.ceil(gpus / net.gpus_per_node), **parts, "step_ms": step,
            "samples_per_s": gpus * w.micro_batch / step * 1e3, "efficiency": one / step}


def local_loss_limit(w: Workload, net: Network, max_gpus: int = 512) -> int | None:
    """Fewest GPUs (powers of two) at which the loss compute exceeds everything else in the step."""
    gpus = 1
    while gpus <= max_gpus:
        p = predict(w, gpus, net)
        if p["loss_ms"] > p["step_ms"] - p["loss_ms"]:
            return gpus
        gpus *= 2
    return None


def workload_from_breakdown(p50_ms: dict[str, float], **fields) -> Workload:
    """Split a 1-rank `step_breakdown.csv` ({phase: ms}) into the fixed and the growing parts."""
    loss = sum(p50_ms.get(name, 0.0) for name in LOSS_PHASES)
    skip = set(LOSS_PHASES) | set(COMM_PHASES) | {"step", "sum_of_phases"}
    fixed = sum(ms for name, ms in p50_ms.items() if name not in skip)
    return Workload(fixed_ms=fixed, loss_ms=loss, **fields)


def link_from_all_reduce(small_ms: float, big_ms: float, big_bytes: float, gpus: int) -> tuple[float, float]:
    """(GB/s, latency us) that make `collective_ms("all_reduce", ...)` reproduce two measured
    all-reduces: a tiny one (latency only) and one of `big_bytes`."""
    latency_s = small_ms * 1e-3 / (2 * math.log2(gpus))
    seconds = max(big_ms - small_ms, 1e-9) * 1e-3
    return 2 * (gpus - 1) / gpus * big_bytes / seconds / 1e9, latency_s * 1e6
