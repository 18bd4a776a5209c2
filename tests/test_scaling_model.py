"""The weak-scaling model's arithmetic against hand-computed cases (cmgl_dist.bench.scaling_model),
and the shipped H200 GLoRIA workload against the scaling target."""
import json
from pathlib import Path

import pytest

from cmgl_dist.bench.scaling_model import (Network, Workload, collective_ms, exchange_bytes, exchange_memory_mb,
                                           gradient_ms, link_from_all_reduce, local_loss_limit, predict,
                                           ring_exposed_ms, workload_from_breakdown)

# 1 GB/s and 10 us inside a node of 4; between nodes 4 NICs of 0.125 GB/s (0.5 GB/s a node) and 100 us.
NET = Network(gpus_per_node=4, nvlink_gbps=1.0, nvlink_latency_us=10.0, nic_gbps=0.125, nics_per_node=4,
              nic_latency_us=100.0)
H200_GLORIA = Path(__file__).parents[1] / "benchmarks" / "scaling_h200_gloria.json"


def work(**kw):
    fields = dict(micro_batch=2, embed_dim=3, words=5, param_bytes=1e6, fixed_ms=100.0, loss_ms=10.0, zero_stage=1,
                  word_bytes=2)
    return Workload(**{**fields, **kw})


def test_collectives_follow_nccls_ring_and_tree():
    # all-reduce of 1 MB on 4 GPUs in a node: ring 2 x (3/4 x 1e6 B / 1e9 B/s + 3 x 10 us) = 1.56 ms;
    # tree 2 x 1e6 / 1e9 + 2 x log2(4) x 10 us = 2.04 ms: the ring
    assert collective_ms("all_reduce", 1e6, 4, NET) == pytest.approx(1.56)
    # all-gather of 8 MB on 8 GPUs (two nodes: 4 NICs x 0.125 GB/s): 7/8 x 8e6 / 0.5e9 = 14 ms; of its 7
    # steps one crosses the node boundary (100 us), 6 stay on NVLink (10 us)
    assert collective_ms("all_gather", 8e6, 8, NET) == pytest.approx(14.0 + 0.1 + 0.06)
    # a small all-reduce on 64 GPUs (16 nodes of 4): ring 2 x 63/64 x 1e3 / 0.5e9 + (126 - 30) x 10 us
    # + 30 x 100 us; tree 2 x 1e3 / 0.5e9 + 2 x (3 x 10 us + log2(16) x 100 us) = 0.004 + 0.86 ms: the tree
    assert collective_ms("all_reduce", 1e3, 64, NET) == pytest.approx(2e3 / 0.5e9 * 1e3 + 0.86)
    assert collective_ms("all_reduce", 1e9, 1, NET) == 0.0


def test_only_node_crossing_steps_pay_network_latency_at_512_gpus():
    # 512 H200s (64 nodes): an all-gather's 511 steps, 63 of them across nodes, as NCCL's tuner prices them
    net = Network()
    assert collective_ms("all_gather", 0.0, 512, net) == pytest.approx((448 * 3 + 63 * 8) * 1e-3)
    assert collective_ms("all_gather", 0.0, 512, net) < 511 * 8e-3 / 2

def test_between_nodes_the_nics_add_up_and_nvlink_caps_them():
    assert Network().bus(16) == (360e9, 8e-6)  # 8 NICs x 45 GB/s = NVLink's 360
    assert Network(nics_per_node=4).bus(16)[0] == 180e9
    assert Network().hop(16) == (45e9, 8e-6)  # a point-to-point hop between nodes: one NIC
    assert Network().bus(8) == Network().hop(8) == (360e9, 3e-6)


def test_gradient_passes_per_zero_stage():
    # 2 GPUs, 1 MB: stage 0 all-reduce = min(ring 2 x (0.5 ms + 10 us), tree 2 ms + 20 us) = 1.02 ms;
    # stages 1-2 reduce-scatter + all-gather 2 x 0.51; stage 3 one more all-gather
    assert gradient_ms(work(zero_stage=0), 2, NET) == pytest.approx(1.02)
    assert gradient_ms(work(zero_stage=2), 2, NET) == pytest.approx(1.02)
    assert gradient_ms(work(zero_stage=3), 2, NET) == pytest.approx(1.53)


def test_exchange_bytes_by_hand():
    # B=2, D=3, W=5, bf16 words, fp32 vectors and scores, n=2. Vectors 2 x 2*3*4 = 48 B each way.
    # gather: words 2*5*3*2 = 60, mask 10, rows 2*(2*2)*4 = 32 forward; words 60 + rows 32 backward.
    assert exchange_bytes(work(), 2, "gather") == {"all_gather": 48 + 60 + 10 + 32, "reduce_scatter": 48 + 60 + 32,
                                                  "p2p": 0, "host": 16}
    # ring, one hop: forward block 70 + sums 8; backward block 70 + sums 8 + loss grad 4 + words' grad carried
    # in float32 2*5*3*4 = 120; the fill: sums home 8, the owner's sums + loss grad back 12
    assert exchange_bytes(work(), 2, "ring") == {"all_gather": 48, "reduce_scatter": 48, "p2p": 78 + 202 + 20,
                                                "host": 16}
    # host ints: gather all-gathers every rank's (n - 1 messages); the ring sends only to the ranks that visit it
    assert exchange_bytes(work(), 8, "gather")["host"] == 7 * 16
    assert exchange_bytes(work(), 8, "ring")["host"] == 7 * 16                  # no cap: every rank visits
    assert exchange_bytes(work(local_negatives=4), 8, "ring")["host"] == 16     # 2 blocks: one neighbour
    assert exchange_bytes(work(local_negatives=2), 8, "ring")["host"] == 16     # own block only: still checks one
    assert exchange_bytes(work(local_negatives=2), 8, "ring")["p2p"] == 0  # the own block only
    # a cap of 3: ceil(3/2) = 2 blocks, kept for backward, which sends sums + loss grad + words' grad only
    assert exchange_bytes(work(local_negatives=3), 8, "ring")["p2p"] == 78 + (8 + 4 + 120) + 20
    assert exchange_bytes(work(), 1, "ring") == exchange_bytes(work(), 1, "gather") == dict.fromkeys(
        ("all_gather", "reduce_scatter", "p2p", "host"), 0)


def test_the_ring_hides_its_hops_behind_the_scoring():
    # one hop on 2 GPUs: 78 B and 202 B at 1 GB/s + 10 us each, the fill 2 x (8 B + 10 us)
    hops = (78 / 1e9 + 10e-6) * 1e3, (202 / 1e9 + 10e-6) * 1e3
    fill = 2 * (8 / 1e9 + 10e-6) * 1e3
    assert ring_exposed_ms(work(loss_ms=0.0), 2, NET) == pytest.approx(sum(hops) + fill)
    assert ring_exposed_ms(work(loss_ms=10.0), 2, NET) == pytest.approx(fill)


def test_the_loss_grows_with_the_scored_texts_and_the_ring_recomputes():
    assert predict(work(), 1, NET)["loss_ms"] == 10.0
    assert predict(work(), 8, NET, "gather")["loss_ms"] == 80.0           # 16 texts / 2 = 8 x
    assert predict(work(), 8, NET, "ring")["loss_ms"] == 100.0            # and the forward again in backward
    assert predict(work(local_negatives=6), 8, NET, "gather")["loss_ms"] == 30.0
    assert predict(work(local_negatives=6), 8, NET, "ring")["loss_ms"] == 30.0  # blocks kept: no recompute
    one = predict(work(), 1, NET)
    assert one["step_ms"] == 110.0 and one["efficiency"] == 1.0 and one["samples_per_s"] == pytest.approx(2 / 0.11)
    four = predict(work(), 4, NET, "gather")
    assert four["nodes"] == 1 and predict(work(), 5, NET)["nodes"] == 2
    assert four["step_ms"] == pytest.approx(100 + 40 + four["feature_comm_ms"] + four["gradient_comm_ms"])
    assert four["efficiency"] == pytest.approx(110 / four["step_ms"])


def test_ring_memory_stays_flat_and_gather_memory_grows():
    # a block: 2 x 5 x 3 words, 2 bytes each (60 B); its carried gradient 4 bytes each (120 B); a working set of 1 kB
    small = dict(backend_working_bytes=1000)
    ring = {n: exchange_memory_mb(work(**small), n, "ring") for n in (2, 64, 512)}
    assert len(set(ring.values())) == 1 and ring[2] == pytest.approx((3 * 60 + 3 * 120 + 1000) / 1e6)
    # gather: every rank's words and their gradient (2 n x 60 B) + the score rows [2n, 2n] fp32 and their gradient
    for n in (2, 512):
        assert exchange_memory_mb(work(**small), n, "gather") == pytest.approx(
            (2 * n * 60 + 2 * (2 * n) ** 2 * 4 + 1000) / 1e6)
    # a cap of 6: 3 blocks, the two visited ones kept; the gather adds the window's copy (6 texts x 5 x 3 x 2 B) x 2
    capped = {n: exchange_memory_mb(work(local_negatives=6, **small), n, "ring") for n in (4, 64, 512)}
    assert len(set(capped.values())) == 1 and capped[4] == pytest.approx((5 * 60 + 3 * 120 + 1000) / 1e6)
    assert exchange_memory_mb(work(local_negatives=6, **small), 4, "gather") == pytest.approx(
        (2 * 4 * 60 + 2 * 8 ** 2 * 4 + 2 * 180 + 1000) / 1e6)
    # the window: every fetched block and its gradient
    assert exchange_memory_mb(work(local_negatives=6, **small), 64, "window") == pytest.approx(
        (3 * (60 + 120) + 1000) / 1e6)


def test_the_window_is_the_ring_without_overlap():
    capped = work(local_negatives=6)
    for n in (4, 64):
        window, ring = predict(capped, n, NET, "window"), predict(capped, n, NET, "ring")
        assert exchange_bytes(capped, n, "window") == exchange_bytes(capped, n, "ring")
        assert window["loss_ms"] == ring["loss_ms"]
        assert window["feature_comm_ms"] >= ring["feature_comm_ms"]
    no_compute = work(local_negatives=6, loss_ms=0.0)
    assert predict(no_compute, 4, NET, "window")["feature_comm_ms"] == pytest.approx(
        predict(no_compute, 4, NET, "ring")["feature_comm_ms"])


def test_where_the_local_loss_stops_scaling():
    # loss 10 x n (B texts per GPU) passes the rest (~100 ms + comm) between 8 and 16 GPUs
    assert local_loss_limit(work(), NET, exchange="gather") == 16
    assert local_loss_limit(work(local_negatives=8), NET) is None


def test_the_h200_gloria_recipe_meets_the_exposed_communication_target_with_the_ring():
    fields = {k: v for k, v in json.loads(H200_GLORIA.read_text()).items() if k != "source"}
    recipe = Workload(**{**fields, "local_negatives": 256})
    net = Network()
    assert predict(recipe, 64, net, "ring")["exposed_share"] <= 0.05
    assert predict(recipe, 512, net, "ring")["exposed_share"] <= 0.10
    assert predict(recipe, 512, net, "gather")["exposed_share"] > 0.10
    # the gather holds every rank's words and the [nB, nB] score rows with their gradients: ~54 GB at 512
    assert predict(recipe, 512, net, "gather")["exchange_mb"] >= 40e3
    assert predict(recipe, 512, net, "ring")["exchange_mb"] < 2e3
    # K = 256 = 2B: each image scores twice its one-GPU texts, so (fixed + loss) / (fixed + 2 loss) caps efficiency
    cap = (recipe.fixed_ms + recipe.loss_ms) / (recipe.fixed_ms + 2 * recipe.loss_ms)
    assert cap == pytest.approx(0.66, abs=0.005)
    assert all(predict(recipe, n, net, e)["efficiency"] <= cap + 1e-9 for n in (2, 64, 512) for e in ("gather", "ring"))
    uncapped = Workload(**fields)
    assert len({predict(uncapped, n, net, "ring")["exchange_mb"] for n in (2, 8, 64, 512)}) == 1


def test_link_figures_reproduce_the_measured_all_reduces():
    gbps, latency_us = link_from_all_reduce(small_ms=0.2, big_ms=8.2, big_bytes=8e6, gpus=2)
    net = Network(gpus_per_node=2, nvlink_gbps=gbps, nvlink_latency_us=latency_us)
    assert collective_ms("all_reduce", 8e6, 2, net) == pytest.approx(8.2)
    assert latency_us == pytest.approx(100.0) and gbps == pytest.approx(1.0)


def test_a_breakdown_splits_into_fixed_and_growing_parts():
    p50 = {"data_wait": 5, "image_encoder_fwd": 20, "local_loss": 7, "global_loss": 1, "feature_all_gather": 9,
           "local_exchange": 3, "gradient_reduction": 4, "backward": 30, "unattributed": 2, "sum_of_phases": 79,
           "step": 78}
    w = workload_from_breakdown(p50, micro_batch=2, embed_dim=3, words=5, param_bytes=1.0)
    assert (w.fixed_ms, w.loss_ms) == (57, 8)
