"""The weak-scaling model's arithmetic against hand-computed cases (cmgl_dist.bench.scaling_model)."""
import pytest

from cmgl_dist.bench.scaling_model import (Network, Workload, collective_ms, feature_ms, gradient_ms,
                                           link_from_all_reduce, local_loss_limit, predict, workload_from_breakdown)

# 1 GB/s and 10 us inside a node of 4; 0.5 GB/s and 100 us between nodes.
NET = Network(gpus_per_node=4, nvlink_gbps=1.0, nvlink_latency_us=10.0, ib_gbps=0.5, ib_latency_us=100.0)


def work(**kw):
    fields = dict(micro_batch=2, embed_dim=3, words=5, param_bytes=1e6, fixed_ms=100.0, loss_ms=10.0, zero_stage=1)
    return Workload(**{**fields, **kw})


def test_collectives_follow_the_ring_formula():
    # all-reduce of 1 MB on 4 GPUs in a node: 2 x 3/4 x 1e6 B / 1e9 B/s = 1.5 ms, + 2 x log2(4) x 10 us = 0.04 ms
    assert collective_ms("all_reduce", 1e6, 4, NET) == pytest.approx(1.54)
    # all-gather of 8 MB total on 8 GPUs (two nodes: InfiniBand): 7/8 x 8e6 / 0.5e9 = 14 ms, + 3 x 100 us
    assert collective_ms("all_gather", 8e6, 8, NET) == pytest.approx(14.3)
    assert collective_ms("all_reduce", 1e9, 1, NET) == 0.0


def test_gradient_volume_per_zero_stage():
    # 2 GPUs: stages 0-2 move 2 x 1/2 x 1 MB = 1 MB (1 ms) + 2 x 1 x 10 us; stage 3 moves 1.5 MB + 3 x 10 us
    assert gradient_ms(work(zero_stage=0), 2, NET) == pytest.approx(1.02)
    assert gradient_ms(work(zero_stage=2), 2, NET) == pytest.approx(1.02)
    assert gradient_ms(work(zero_stage=3), 2, NET) == pytest.approx(1.53)


def test_feature_collectives_by_hand():
    # B=2, D=3, W=5, fp32, n=2. Per rank: global 2*2*3*4 = 48 B; words 2*5*(3*4+1) = 130 B (mask 10 B);
    # local rows 2*2*2*4 = 32 B. Gathers move n x size; backward all-reduces n x (size - mask).
    w, n = work(), 2
    expected = sum(collective_ms("all_gather", n * s, n, NET) + collective_ms("all_reduce", n * g, n, NET)
                   for s, g in ((48, 48), (130, 120), (32, 32)))
    assert feature_ms(w, n, NET) == pytest.approx(expected)
    bytes_only = (0.5 * 2 * (48 + 130 + 32) + 2 * 0.5 * 2 * (48 + 120 + 32)) / 1e9 * 1e3
    latency = (3 * 1 + 3 * 2) * 10e-3  # three gathers (1 x log2 2 x 10 us) and three all-reduces (2 x ...)
    assert feature_ms(w, n, NET) == pytest.approx(bytes_only + latency)


def test_the_loss_grows_with_the_gathered_texts_unless_capped():
    assert predict(work(), 1, NET)["loss_ms"] == 10.0
    assert predict(work(), 8, NET)["loss_ms"] == 80.0            # 16 texts / 2 = 8 x
    assert predict(work(local_negatives=6), 8, NET)["loss_ms"] == 30.0
    one = predict(work(), 1, NET)
    assert one["step_ms"] == 110.0 and one["efficiency"] == 1.0 and one["samples_per_s"] == pytest.approx(2 / 0.11)
    four = predict(work(), 4, NET)
    assert four["nodes"] == 1 and predict(work(), 5, NET)["nodes"] == 2
    assert four["step_ms"] == pytest.approx(100 + 40 + four["feature_comm_ms"] + four["gradient_comm_ms"])
    assert four["efficiency"] == pytest.approx(110 / four["step_ms"])


def test_where_the_local_loss_stops_scaling():
    # loss 10 x n/1 (B texts per GPU) passes the rest (~100 ms + comm) between 8 and 16 GPUs
    assert local_loss_limit(work(), NET) == 16
    assert local_loss_limit(work(local_negatives=8), NET) is None


def test_link_figures_reproduce_the_measured_all_reduces():
    gbps, latency_us = link_from_all_reduce(small_ms=0.2, big_ms=8.2, big_bytes=8e6, gpus=2)
    net = Network(gpus_per_node=2, nvlink_gbps=gbps, nvlink_latency_us=latency_us)
    assert collective_ms("all_reduce", 8e6, 2, net) == pytest.approx(8.2)
    assert latency_us == pytest.approx(100.0) and gbps == pytest.approx(1.0)


def test_a_breakdown_splits_into_fixed_and_growing_parts():
    p50 = {"data_wait": 5, "image_encoder_fwd": 20, "local_loss": 7, "global_loss": 1, "feature_all_gather": 9,
           "gradient_reduction": 4, "backward": 30, "unattributed": 2, "sum_of_phases": 76, "step": 75}
    w = workload_from_breakdown(p50, micro_batch=2, embed_dim=3, words=5, param_bytes=1.0)
    assert (w.fixed_ms, w.loss_ms) == (57, 8)
