"""`cmgl bench step`: the phase timer's exclusive times by hand, and a real 2-rank CPU run whose
named phases add up to the measured step within 10 %."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cmgl_dist.bench.profiler import PhaseTimer
from cmgl_dist.bench.step import breakdown_rows, summarise
from cmgl_dist.phases import installed, phase


class ScriptedClock:
    """Marks are the times (ms) the test sets; DeepSpeed's comm total likewise."""
    now = 0.0
    comm = 0.0

    def mark(self):
        return self.now

    def elapsed_ms(self, start, end):
        return end - start


def test_nested_phases_and_collectives_get_their_exclusive_time():
    clock = ScriptedClock()
    timer = PhaseTimer(clock=clock, comm_ms=lambda: clock.comm)
    with installed(timer):
        timer.begin_step()
        with phase("data_wait"):
            clock.now = 5.0
        with phase("backward"):
            clock.now = 8.0
            with phase("feature_all_gather"):
                clock.now = 11.0
            clock.now, clock.comm = 30.0, 4.0  # DeepSpeed reduced gradients for 4 ms inside backward
        clock.now = 31.0
        record = timer.end_step()
    assert record == {"data_wait": 5.0, "backward": 18.0, "feature_all_gather": 3.0, "gradient_reduction": 4.0,
                      "unattributed": 1.0, "step": 31.0}


def test_a_phase_closed_out_of_order_is_an_error():
    timer = PhaseTimer(clock=ScriptedClock())
    timer.enter("a")
    timer.enter("b")
    with pytest.raises(RuntimeError, match="'a' closed while 'b'"):
        timer.exit("a")


def test_breakdown_takes_the_median_of_the_rank_mean_and_sums_the_phases():
    ranks = [{"steps": [{"backward": 10, "step": 12, "unattributed": 2}, {"backward": 30, "step": 33, "unattributed": 3}]},
             {"steps": [{"backward": 20, "step": 22, "unattributed": 2}, {"backward": 40, "step": 41, "unattributed": 1}]}]
    p50 = summarise(ranks)
    assert p50 == {"backward": 25.0, "step": 27.0, "unattributed": 2.0, "sum_of_phases": 25.0}
    rows = {name: (ms, share) for name, ms, share in breakdown_rows(p50)}
    assert rows["sum_of_phases"] == (25.0, 25.0 / 27.0) and rows["step"] == (27.0, 1.0)
    assert list(rows) == ["backward", "unattributed", "sum_of_phases", "step"]


def test_two_cpu_ranks_write_a_breakdown_that_adds_up(small_shards, tmp_path):
    cmgl = str(Path(sys.executable).with_name("cmgl"))
    done = subprocess.run(
        [cmgl, "bench", "step", "--config", "debug", "--set", f"data.shards={small_shards}", "--steps", "4",
         "--warmup", "1", "--ranks", "2", "--out", str(tmp_path)],
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "step_breakdown.csv", newline="") as f:
        rows = {row["phase"]: float(row["ms_p50"]) for row in csv.DictReader(f)}
    for name in ("data_wait", "image_encoder_fwd", "text_encoder_fwd", "feature_all_gather", "global_loss",
                 "local_loss", "local_exchange", "backward", "gradient_reduction", "optimizer_step"):
        assert rows[name] > 0, name
    assert abs(rows["sum_of_phases"] / rows["step"] - 1) < 0.10
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2 and all(b > 0 for b in summary["comm_bytes_per_step_per_rank"])
    assert summary["local_exchange"] == "ring" and summary["exchange_bytes_per_step"]["p2p"] > 0
    assert isinstance(summary["exchange_overlapped"], bool)
    assert (tmp_path / "step_breakdown.png").stat().st_size > 1000
