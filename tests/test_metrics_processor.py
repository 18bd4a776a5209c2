"""MetricsProcessor owns the window: loss parts averaged over ranks and micro batches, skips counted
whether or not a micro batch was kept, rates derived from the global batch, one record per log."""
import json

import pytest
import torch

from cmgl_dist.engine.checkpoint import TrainState
from cmgl_dist.engine.metrics import MetricsProcessor, window_rates
from cmgl_dist.engine.telemetry import Telemetry


def test_rates_from_the_global_batch():
    assert window_rates(steps=4, global_batch=32, seconds=2.0, data_wait_s=0.5) == {
        "samples_per_s": 64.0, "step_time_s": 0.5, "data_wait_share": 0.25}


def test_a_window_of_two_steps_makes_one_record(tmp_path):
    telemetry = Telemetry(tmp_path, rank=0, start_step=0, total_steps=10, tensorboard=False)
    metrics = MetricsProcessor(telemetry, global_batch=2 * 2 * 8, world_size=2, grad_accum=2, device=torch.device("cpu"))
    # micro batches: loss parts summed over 2 ranks; one non-finite batch dropped (its skips still count)
    for parts, skipped, kept in (([4.0, 2.0, 2.0], 1, True), ([8.0, 4.0, 4.0], 0, True),
                                 ([float("nan")] * 3, 2, False), ([0.0, 0.0, 0.0], 0, True), ([4.0, 4.0, 0.0], 3, True)):
        metrics.micro_batch(torch.tensor(parts), torch.tensor(float(skipped)), kept=kept)
        metrics.data_waited(0.01)
    metrics.step_done(torch.tensor(1.5))
    metrics.step_done(torch.tensor(2.5))
    state = TrainState()
    state.step, state.samples_seen = 2, 64
    state.samples_skipped += metrics.take_skipped()
    record = metrics.log(state, lr=1e-3)
    telemetry.close()
    # per step: mean over ranks (/2) and micro batches (/2); window: mean over its 2 steps
    assert record["loss"] == pytest.approx((4 + 8 + 0 + 4) / 4 / 2)
    assert record["loss_global"] == pytest.approx((2 + 4 + 0 + 4) / 8)
    assert record["grad_norm"] == 2.5 and record["samples_skipped"] == 6
    assert record["samples_per_s"] == pytest.approx(2 * 32 / (2 * record["step_time_s"]))
    assert record["data_wait_share"] == pytest.approx(5 * 0.01 / (2 * record["step_time_s"]))
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["step"] == 2
    assert metrics.steps == 0 and metrics.take_skipped() == 0  # a new window
