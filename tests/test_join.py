"""Joining the process group is visible and bounded: a rank logs where it joins before it waits, and
one whose peers never come ends within train.dist_timeout_s with one line naming the store."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from helpers import free_port

from cmgl_dist.config import TrainConfig


def test_a_rank_without_peers_ends_in_one_line_naming_the_store(small_shards, tmp_path):
    port = free_port()  # nobody listens there: rank 0 of this job never comes
    env = {**os.environ, "RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    sets = [f"data.shards={small_shards}", f"train.run_dir={tmp_path / 'run'}", "train.dist_timeout_s=10"]
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "cmgl_dist.cli", "train", "--config", "debug",
                           *[a for item in sets for a in ("--set", item)]],
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 1, done.stderr[-2000:]
    assert time.monotonic() - started < 120
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("cmgl train: rank 1 on ") and f"store 127.0.0.1:{port} within 10s" in last, last
    assert "rank 1 of 2 on " in done.stderr and f"joins the process group: store 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_global_batch_derives_the_accumulation_for_each_world_size():
    train = TrainConfig(micro_batch=4, global_batch=16)
    assert [train.for_world(w).grad_accum for w in (1, 2, 4)] == [4, 2, 1]
    assert all(train.for_world(w).samples_per_step(w) == 16 for w in (1, 2, 4))
    with pytest.raises(ValueError, match=r"train.global_batch=16 is not a multiple of train.micro_batch=4 x 3"):
        train.for_world(3)
    assert TrainConfig(micro_batch=4, grad_accum=3).for_world(5).grad_accum == 3  # unset: nothing derived
