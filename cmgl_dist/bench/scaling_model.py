"""A written-down weak-scaling model of one training step (per-GPU micro-batch fixed), 1 to 512 GPUs.

Step time at n GPUs = compute that does not grow with n (encoders forward/backward, optimizer,
host-to-device, data wait: measured at one rank by `cmgl bench step`)
  + the loss compute that grows with n: each rank scores its B images against k(n) texts, so the
    local loss costs k(n)/B times its 1-rank time, k(n) = n B, or min(n B, loss.local_negatives);
    without a cap the ring recomputes each block's scores in backward (`ring_recompute`: their
    forward's share of the local loss); with one it keeps the (at most ceil(K / B)) blocks instead
  + gradient collectives per ZeRO stage: stage 0 all-reduces P bytes, stages 1-2 reduce-scatter
    the gradients and all-gather the updated partition, stage 3 adds a parameter all-gather in
    backward (each (n-1)/n P per rank)
  + the loss's exchange (`exchange_bytes`, counted byte for byte by `losses.comm` on real ranks):
      gather  one all-gather of the global vectors (image and sentence fused), the words
              (+ mask) and the local score rows [B, nB], each with a reduce-scatter backward;
              nothing overlaps them; the word counts all-gathered over the host network
      ring    the global vectors as above; word blocks hop rank to rank while the previous block
              is scored, so a step pays max(compute, hop) per block plus the fill (the small
              sends home that wait on nothing to overlap with); the word counts of the ranks it
              visits in one round of host messages
      window  modelled only: a capped gather that fetches just the ceil(K / B) blocks it scores,
              i.e. the ring's bytes with nothing overlapped; gather and ring then differ by
              overlap alone
Collective times follow NCCL's tuner (src/graph/tuning.cc, `ncclTopoTuneModel`): a ring pays
(n-1)/n of the volume per pass at the bus bandwidth and one latency per step, at network latency
only for the steps that cross a node (nodes - 1 of the n - 1 steps of an all-gather, twice that
for an all-reduce), NVLink latency for the rest; an all-reduce takes the faster of the ring and
the tree (2 ((n/nodes - 1) NVLink + log2(nodes) network latencies), the volume twice at the bus
bandwidth), as the tuner picks by size. Between nodes NCCL runs a ring per NIC (channels), so a
collective's inter-node bus bandwidth per GPU is the node's NIC aggregate over its GPUs; the
slower of that and NVLink sets the pace. The loss's own ring moves in lock step, so each of its
hops is paced by the slowest, node-crossing one: one NIC.

Defaults (`Network`), per link, H100/H200 HGX nodes with NDR InfiniBand:
  NVLink 4: 900 GB/s bidirectional per GPU; NCCL's all-reduce bus bandwidth inside an HGX node
            ~360 GB/s without NVLS (nccl-tests, docs/PERFORMANCE.md's busbw; NVIDIA's HGX H100
            figures), p2p between two GPUs of a node likewise ~360 GB/s; ~3 us per hop
  NDR:      one ConnectX-7 400 Gb/s NIC per GPU, 8 per node: ~45 GB/s of 50 per NIC achievable
            (nccl-tests busbw on NDR), so 8 x 45 = 360 GB/s per node shared by its 8 GPUs' rings
            (45 GB/s per GPU per ring, 8 rings); ~8 us per hop
  host:     gloo over the hosts' TCP network, ~30 us per small message between nodes (a kernel
            TCP round trip on a datacenter network is tens of microseconds; an estimate, not an
            nccl-tests figure)
Replace them with a cluster's own nccl-tests figures (`--nvlink-gbps`, `--nic-gbps`, ...).

Memory (`exchange_memory_mb`): what the exchange holds per GPU at once, the backend's working
set included (`local_reference.DEFAULT_BLOCK_ELEMENTS`: ~3 blocks of fp32 intermediates alive in
backward, its upcasts among them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from cmgl_dist.bench.profiler import COLLECTIVE_PHASES
from cmgl_dist.losses.local_reference import DEFAULT_BLOCK_ELEMENTS

GRADIENT_PASSES = {0: ("all_reduce",), 1: ("reduce_scatter", "all_gather"), 2: ("reduce_scatter", "all_gather"),
                   3: ("reduce_scatter", "all_gather", "all_gather")}
LOSS_PHASES = ("local_loss", "global_loss")
COMM_PHASES = COLLECTIVE_PHASES
EXCHANGES = ("gather", "window", "ring")  # window: modelled only (see above)
HOST_INTS = 2  # batch size and word slots, sent per step over the host group (losses.comm)
# The reference backend's working set: ~3 blocks of DEFAULT_BLOCK_ELEMENTS fp32 values alive in backward.
BACKEND_WORKING_BYTES = 3 * DEFAULT_BLOCK_ELEMENTS * 4
CARRY_BYTES = 4  # the ring's travelling word gradient: float32 at least (losses.local_ring.carry_dtype)


@dataclass(frozen=True)
class Network:
    gpus_per_node: int = 8
    nvlink_gbps: float = 360.0   # GB/s, NCCL bus bandwidth (and p2p) inside a node
    nvlink_latency_us: float = 3.0
    nic_gbps: float = 45.0       # GB/s achievable per NIC (NDR 400 Gb/s)
    nics_per_node: int = 8
    nic_latency_us: float = 8.0
    host_latency_us: float = 30.0  # one small gloo message between nodes over TCP

    def bus(self, gpus: int) -> tuple[float, float]:
        """(bytes/s per GPU, latency s) of a collective's slowest link over `gpus`."""
        if gpus <= self.gpus_per_node:
            return self.nvlink_gbps * 1e9, self.nvlink_latency_us * 1e-6
        # one ring per NIC, each carrying 1/nics of the data across the node boundary
        return min(self.nvlink_gbps, self.nics_per_node * self.nic_gbps) * 1e9, self.nic_latency_us * 1e-6

    def nodes(self, gpus: int) -> int:
        return math.ceil(gpus / self.gpus_per_node)

    def ring_latency(self, steps: int, crossing: int) -> float:
        """Seconds of latency of `steps` ring steps of which `crossing` cross a node."""
        return (steps - crossing) * self.nvlink_latency_us * 1e-6 + crossing * self.nic_latency_us * 1e-6

    def hop(self, gpus: int) -> tuple[float, float]:
        """(bytes/s, latency s) of the slowest point-to-point hop of a ring over `gpus`."""
        if gpus <= self.gpus_per_node:
            return self.nvlink_gbps * 1e9, self.nvlink_latency_us * 1e-6
        return self.nic_gbps * 1e9, self.nic_latency_us * 1e-6


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
    word_bytes: int = 4         # bytes per element of the words as sent (2 when the model hands bf16)
    feature_bytes: int = 4      # the global vectors as sent
    score_bytes: int = 4        # the local scores and their sums (float32 for 16/32-bit inputs)
    ring_recompute: float = 0.25  # forward's share of the local loss, recomputed by the ring's backward
    backend_working_bytes: float = BACKEND_WORKING_BYTES


def collective_ms(kind: str, volume_bytes: float, gpus: int, net: Network) -> float:
    """One collective as NCCL's tuner prices it; `volume_bytes` is the full (gathered / reduced) tensor."""
    if gpus == 1:
        return 0.0
    bandwidth, _ = net.bus(gpus)
    nodes = net.nodes(gpus)
    passes = 2 if kind == "all_reduce" else 1
    ring = (passes * (gpus - 1) / gpus * volume_bytes / bandwidth
            + net.ring_latency(passes * (gpus - 1), passes * (nodes - 1)))
    if kind != "all_reduce":
        return ring * 1e3
    tree = 2 * volume_bytes / bandwidth + 2 * ((gpus // nodes - 1) * net.nvlink_latency_us
                                               + int(math.log2(nodes)) * net.nic_latency_us) * 1e-6
    return min(ring, tree) * 1e3


def blocks(w: Workload, gpus: int) -> int:
    """Word blocks of B texts each rank scores (its own included)."""
    return -(-texts_scored(w, gpus) // w.micro_batch)


def texts_scored(w: Workload, gpus: int) -> int:
    everyone = gpus * w.micro_batch
    return everyone if w.local_negatives is None else min(everyone, w.local_negatives)


def _carry_bytes(w: Workload) -> int:
    return max(w.word_bytes, CARRY_BYTES)


def _block(w: Workload, grad: bool = False) -> int:
    """Bytes of one word block [B, W, D] (+ its mask [B, W] as bytes), or of its travelling gradient."""
    b, words = w.micro_batch, w.words
    if grad:
        return b * words * w.embed_dim * _carry_bytes(w)
    return b * words * w.embed_dim * w.word_bytes + b * words


def _hops(w: Workload, exchange: str = "ring") -> tuple[int, int, int]:
    """Bytes of the ring's messages: a forward hop (block + text sums), a backward hop (owner's sums
    and loss gradient + the words' gradient, + the block again unless the forward kept it: with a
    cap), a fill message (B sums)."""
    sums = w.micro_batch * w.score_bytes
    again = 0 if _keeps_blocks(w, exchange) else _block(w)
    return _block(w) + sums, again + sums + w.score_bytes + _block(w, grad=True), sums


def _keeps_blocks(w: Workload, exchange: str = "ring") -> bool:
    """The ring keeps the visited blocks for backward when a cap bounds them (`local_ring`); the
    window always holds what it fetched."""
    return exchange == "window" or w.local_negatives is not None


def _host_hops(w: Workload, gpus: int, exchange: str) -> int:
    """Messages of HOST_INTS ints this rank sends per step: gather all-gathers every rank's; the ring
    sends to the ranks that visit it (at least one: its left neighbour checks its batch)."""
    if exchange == "gather":
        return gpus - 1
    return max(1, blocks(w, gpus) - 1)


def _gather_parts(w: Workload, gpus: int) -> tuple[tuple[str, float], ...]:
    """(kind, per-rank bytes) of the gathered form's local-loss collectives: words, mask, rows
    forward; words and rows reduce-scattered backward."""
    b, words, rows = w.micro_batch, w.words, w.micro_batch * gpus * w.micro_batch * w.score_bytes
    word_bytes = b * words * w.embed_dim * w.word_bytes
    return (("all_gather", word_bytes), ("all_gather", b * words), ("all_gather", rows),
            ("reduce_scatter", word_bytes), ("reduce_scatter", rows))


def exchange_bytes(w: Workload, gpus: int, exchange: str) -> dict[str, int]:
    """Bytes one rank sends per step (forward + backward) by kind, as `losses.comm` counts them."""
    n, b, d = gpus, w.micro_batch, w.embed_dim
    counts = dict.fromkeys(("all_gather", "reduce_scatter", "p2p", "host"), 0)
    if n == 1:
        return counts
    counts["host"] = _host_hops(w, n, exchange) * HOST_INTS * 8
    counts["all_gather"] = counts["reduce_scatter"] = (n - 1) * 2 * b * d * w.feature_bytes
    if exchange == "gather":
        for kind, size in _gather_parts(w, n):
            counts[kind] += (n - 1) * size
        return counts
    hops = blocks(w, n) - 1
    if hops:  # the fill: the sums home after the forward, the owner's sums (+ loss gradient) back
        forward, backward, sums = _hops(w, exchange)
        counts["p2p"] = hops * (forward + backward) + 2 * sums + w.score_bytes
    return counts


def _hop_ms(w: Workload, gpus: int, net: Network, exchange: str) -> list[float]:
    """ms of a forward hop, a backward hop and a fill message at the pace of the slowest hop."""
    bandwidth, latency = net.hop(gpus)
    return [(size / bandwidth + latency) * 1e3 for size in _hops(w, exchange)]


def ring_exposed_ms(w: Workload, gpus: int, net: Network) -> float:
    """The ring's exchange the scoring does not hide: per hop max(0, hop - compute of a block),
    forward and backward (the backward posts its hop before recomputing: it overlaps all of the
    block's work), plus the fill (the sums home and the owner's sums back: latency-bound)."""
    hops = blocks(w, gpus) - 1
    if hops == 0:
        return 0.0
    seconds = _hop_ms(w, gpus, net, "ring")
    block_forward = w.loss_ms * w.ring_recompute
    block_backward = w.loss_ms * (1 - w.ring_recompute) + (0 if _keeps_blocks(w) else block_forward)
    return (hops * (max(0.0, seconds[0] - block_forward) + max(0.0, seconds[1] - block_backward))
            + 2 * seconds[2])


def window_exposed_ms(w: Workload, gpus: int, net: Network) -> float:
    """The window's fetches: the ring's hops with nothing to hide them behind."""
    hops = blocks(w, gpus) - 1
    if hops == 0:
        return 0.0
    seconds = _hop_ms(w, gpus, net, "window")
    return hops * (seconds[0] + seconds[1]) + 2 * seconds[2]


def exchange_ms(w: Workload, gpus: int, net: Network, exchange: str) -> float:
    """Exposed time of the loss's exchange: the host ints, the fused global vectors' all-gather and
    its reduce-scatter, and the local loss's exchange."""
    if gpus == 1:
        return 0.0
    n, vectors = gpus, 2 * w.micro_batch * w.embed_dim * w.feature_bytes
    host = (n - 1 if exchange == "gather" else 1) * net.host_latency_us * 1e-3  # the ring's host messages: one round
    total = host + collective_ms("all_gather", n * vectors, n, net) + collective_ms("reduce_scatter", n * vectors, n, net)
    if exchange == "ring":
        return total + ring_exposed_ms(w, n, net)
    if exchange == "window":
        return total + window_exposed_ms(w, n, net)
    return total + sum(collective_ms(kind, n * size, n, net) for kind, size in _gather_parts(w, n))


def gradient_ms(w: Workload, gpus: int, net: Network) -> float:
    return sum(collective_ms(kind, w.param_bytes, gpus, net) for kind in GRADIENT_PASSES[w.zero_stage])


def loss_compute_ms(w: Workload, gpus: int, exchange: str) -> float:
    scale = texts_scored(w, gpus) / w.micro_batch
    recompute = w.ring_recompute if exchange == "ring" and gpus > 1 and not _keeps_blocks(w) else 0.0
    return w.loss_ms * scale * (1 + recompute)


def exchange_memory_mb(w: Workload, gpus: int, exchange: str) -> float:
    """What the local loss's exchange holds per rank at once, the backend's working set included:
      gather  every rank's words and their gradient, the gathered score rows [nB, nB] (fp32) and
              their gradient, with a cap the window's copy of the words and its gradient
      ring    three word blocks (held, in flight, this rank's gradient part), three carried
              gradients (in, out, the sum; float32 at least), with a cap the kept blocks
      window  every fetched block and its gradient"""
    if gpus == 1:
        return 0.0
    b, words, d = w.micro_batch, w.words, w.embed_dim
    block, carried = b * words * d * w.word_bytes, b * words * d * _carry_bytes(w)
    if exchange == "gather":
        held = 2 * gpus * block + 2 * (gpus * b) ** 2 * w.score_bytes
        if w.local_negatives is not None:
            held += 2 * texts_scored(w, gpus) * words * d * w.word_bytes
    elif exchange == "window":
        held = blocks(w, gpus) * (block + carried)
    else:
        held = 3 * block + 3 * carried + ((blocks(w, gpus) - 1) * block if _keeps_blocks(w) else 0)
    return (held + w.backend_working_bytes) / 1e6


def predict(w: Workload, gpus: int, net: Network, exchange: str = "ring") -> dict:
    """Predicted ms per step by part, samples/s, weak-scaling efficiency and the exposed share
    (exchange + gradient collectives over the step) at `gpus`."""
    parts = {"compute_ms": w.fixed_ms,
             "loss_ms": loss_compute_ms(w, gpus, exchange),
             "feature_comm_ms": exchange_ms(w, gpus, net, exchange),
             "gradient_comm_ms": gradient_ms(w, gpus, net)}
    step = sum(parts.values())
    exposed = parts["feature_comm_ms"] + parts["gradient_comm_ms"]
    return {"exchange": exchange, "gpus": gpus, "nodes": math.ceil(gpus / net.gpus_per_node), **parts,
            "step_ms": step, "samples_per_s": gpus * w.micro_batch / step * 1e3,
            "efficiency": (w.fixed_ms + w.loss_ms) / step, "exposed_share": exposed / step,
            "exchange_mb": exchange_memory_mb(w, gpus, exchange)}


def local_loss_limit(w: Workload, net: Network, max_gpus: int = 512, exchange: str = "ring") -> int | None:
    """Fewest GPUs (powers of two) at which the loss compute exceeds everything else in the step."""
    gpus = 1
    while gpus <= max_gpus:
        p = predict(w, gpus, net, exchange)
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
    """(GB/s, latency us) that make the ring all-reduce of `collective_ms` reproduce two measured
    all-reduces: a tiny one (latency only) and one of `big_bytes`."""
    latency_s = small_ms * 1e-3 / (2 * (gpus - 1))
    seconds = max(big_ms - small_ms, 1e-9) * 1e-3
    return 2 * (gpus - 1) / gpus * big_bytes / seconds / 1e9, latency_s * 1e6
