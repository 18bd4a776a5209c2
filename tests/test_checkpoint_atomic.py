"""Checkpoint bookkeeping without a training run: what a save killed half-way leaves behind is
never resumed from, and RNG states survive their JSON round trip. (The real kill -9 and resume
of a 2-rank run is in test_engine_runs.py.)"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from cmgl_dist.atomic import write_text_atomic
from cmgl_dist.engine.checkpoint import (COMPLETE, LATEST, Checkpointer, capture_rng, resolve_resume, restore_rng,
                                         tag_for)


def _complete(root, step):
    folder = root / tag_for(step)
    folder.mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"weights")
    (folder / COMPLETE).write_text("2\n")
    write_text_atomic(root / LATEST, tag_for(step) + "\n")


def test_a_save_killed_half_way_is_never_resumed(tmp_path):
    root = tmp_path / "checkpoints"
    _complete(root, 2)
    partial = root / tag_for(4)  # killed after DeepSpeed wrote some files, before COMPLETE and latest
    partial.mkdir()
    (partial / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"half")

    assert resolve_resume("auto", root) == (root, tag_for(2))
    assert Checkpointer(root, keep_last=2, rank=0).complete_tags() == [tag_for(2)]
    Checkpointer(root, keep_last=2, rank=1).remove_partial()  # only rank 0 cleans up
    assert partial.exists()
    Checkpointer(root, keep_last=2, rank=0).remove_partial()
    assert not partial.exists() and (root / tag_for(2)).exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp files left


def test_latest_pointing_at_an_incomplete_folder_falls_back_to_the_newest_complete(tmp_path):
    root = tmp_path / "checkpoints"
    _complete(root, 2)
    (root / tag_for(4)).mkdir()
    write_text_atomic(root / LATEST, tag_for(4))
    assert resolve_resume("auto", root) == (root, tag_for(2))


def test_resume_argument_forms(tmp_path):
    root = tmp_path / "checkpoints"
    assert resolve_resume("auto", root) is None  # nothing yet: a fresh start
    assert resolve_resume(None, root) is None
    _complete(root, 2)
    _complete(root, 4)
    assert resolve_resume(str(root), tmp_path / "elsewhere") == (root, tag_for(4))
    assert resolve_resume(str(root / tag_for(2)), tmp_path / "elsewhere") == (root, tag_for(2))
    with pytest.raises(FileNotFoundError, match="--resume auto"):
        resolve_resume(str(tmp_path / "nothing"), root)


def test_rng_states_round_trip_through_json():
    import json

    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    saved = json.loads(json.dumps(capture_rng()))
    expected = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(), torch.randn(2).tolist())
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    restore_rng(saved)
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(), torch.randn(2).tolist()) == expected
