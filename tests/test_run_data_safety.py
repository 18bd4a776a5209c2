"""A run and its data: a resume is refused, before any model is built, when the packs it trains on
changed or the world size differs; a missing `latest` or a damaged COMPLETE marker falls back to
the newest sound checkpoint instead of a fresh start; metrics.jsonl survives bytes that are not UTF-8."""
from __future__ import annotations

import json
import shutil

import pytest

from cmgl_dist.atomic import write_text_atomic
from cmgl_dist.config import ConfigError, load_config
from cmgl_dist.engine import train
from cmgl_dist.engine.checkpoint import COMPLETE, LATEST, data_fingerprint, file_checksums, resolve_resume, tag_for
from cmgl_dist.engine.telemetry import Telemetry
from cmgl_dist.shards.manifest import shards_sha256


def _checkpoint(root, step, config: dict, data: str | None = None, world_size: int = 1):
    folder = root / tag_for(step)
    folder.mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(f"weights {step}".encode())
    (folder / "client.json").write_text(json.dumps({"state": {"step": step}, "config": config, "data": data}))
    (folder / COMPLETE).write_text(json.dumps({"world_size": world_size, "files": file_checksums(folder)}))
    write_text_atomic(root / LATEST, tag_for(step) + "\n")
    return folder


def _drop_last_train_shard(pack):
    """What a repack with fewer samples leaves: one train shard fewer, a new content fingerprint."""
    manifest = json.loads((pack / "manifest.json").read_text())
    last = [s for s in manifest["shards"] if s["split"] == "train"][-1]
    manifest["shards"].remove(last)
    manifest["splits"]["train"]["samples"] -= last["samples"]
    manifest["shards_sha256"] = shards_sha256(manifest["shards"])
    (pack / "manifest.json").write_text(json.dumps(manifest))


def test_a_resume_on_a_repacked_pack_is_refused_naming_both_fingerprints(small_shards, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "1")
    pack = tmp_path / "shards"
    shutil.copytree(small_shards, pack)
    base = [f"data.shards={pack}", f"train.run_dir={tmp_path / 'run'}"]
    cfg = load_config("debug", base)
    trained_on = data_fingerprint(cfg.data)
    _checkpoint(tmp_path / "run" / "checkpoints", 4, cfg.model_dump(mode="json"), data=trained_on)
    assert train.preflight(cfg, "auto")[1] == (tmp_path / "run" / "checkpoints", tag_for(4))  # same data: resumes

    _drop_last_train_shard(pack)
    now = data_fingerprint(cfg.data)
    assert now != trained_on
    with pytest.raises(ConfigError) as refused:
        train.preflight(cfg, "auto")
    message = str(refused.value)
    assert trained_on in message and now in message and "another train.run_dir" in message
    # the command line: exit 2 before a process group or a model exists
    monkeypatch.setattr(train, "train", lambda *a: pytest.fail("training started on changed data"))
    argv = ["--config", "debug", "--resume", "auto"] + [a for item in base for a in ("--set", item)]
    assert train.main(argv) == 2
    assert "the training data changed" in capsys.readouterr().err


def test_a_resume_on_another_world_size_exits_2_before_the_model(small_shards, tmp_path, monkeypatch, capsys):
    base = [f"data.shards={small_shards}", f"train.run_dir={tmp_path}"]
    cfg = load_config("debug", base)
    _checkpoint(tmp_path / "checkpoints", 4, cfg.model_dump(mode="json"), data=data_fingerprint(cfg.data),
                world_size=2)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(train, "train", lambda *a: pytest.fail("training started on another world size"))
    argv = ["--config", "debug", "--resume", "auto"] + [a for item in base for a in ("--set", item)]
    assert train.main(argv) == 2
    assert "written by 2 ranks, this run has 1" in capsys.readouterr().err


def test_a_missing_latest_resumes_from_the_newest_complete_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    _checkpoint(root, 2, {})
    _checkpoint(root, 6, {})
    write_text_atomic(root / LATEST, tag_for(2) + "\n")  # a save killed between its COMPLETE and latest
    assert resolve_resume("auto", root) == (root, tag_for(6))
    (root / LATEST).unlink()
    assert resolve_resume("auto", root) == (root, tag_for(6))
    assert resolve_resume(str(root), tmp_path) == (root, tag_for(6))


@pytest.mark.parametrize("marker", [b"[1, 2]", b"{}", b'{"world_size": "2", "files": {}}', b"\xff\xfe\x00"])
def test_a_malformed_complete_marker_falls_back_to_the_previous_checkpoint(tmp_path, marker):
    root = tmp_path / "checkpoints"
    _checkpoint(root, 2, {})
    newer = _checkpoint(root, 4, {})
    (newer / COMPLETE).write_bytes(marker)
    assert resolve_resume("auto", root) == (root, tag_for(2))


def test_metrics_lines_that_are_not_utf8_are_dropped_not_fatal(tmp_path):
    records = [json.dumps({"step": s, "loss": 1.0}) for s in (1, 2)]
    (tmp_path / "metrics.jsonl").write_bytes(("\n".join(records) + "\n").encode() + b'{"step": 3, "\xff\xfe"}\n'
                                             + b"[" * 100_000 + b"\n")
    Telemetry(tmp_path, rank=0, start_step=5, total_steps=10, tensorboard=False).close()
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(r + "\n" for r in records)


def test_after_a_train_steps_change_the_first_resumed_step_runs_at_the_new_schedules_lr():
    import torch

    from cmgl_dist.config import ScheduleConfig
    from cmgl_dist.engine.schedule import WarmupCosine, apply_current_schedule, lr_scheduler_factory

    cfg = ScheduleConfig(warmup_steps=2)
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    old = lr_scheduler_factory(cfg, total_steps=10)(optimizer)
    for _ in range(6):
        optimizer.step()
        old.step()
    saved_optimizer, saved_schedule = optimizer.state_dict(), old.state_dict()
    # the resumed run, now train.steps=40: DeepSpeed restores both states, then the checkpointer applies
    optimizer = torch.optim.SGD([weight], lr=1.0)
    new = lr_scheduler_factory(cfg, total_steps=40)(optimizer)
    optimizer.load_state_dict(saved_optimizer)
    new.load_state_dict(saved_schedule)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(WarmupCosine(cfg, 10)(6))  # the old schedule's
    apply_current_schedule(new)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(WarmupCosine(cfg, 40)(6)) == new.get_last_lr()[0]


def test_a_shard_replaced_in_place_is_refused_on_resume(small_shards, tmp_path, monkeypatch):
    """The manifest (and so the pack's fingerprint) is unchanged; the shard's bytes are not."""
    monkeypatch.setenv("WORLD_SIZE", "1")
    pack = tmp_path / "shards"
    shutil.copytree(small_shards, pack)
    cfg = load_config("debug", [f"data.shards={pack}", f"train.run_dir={tmp_path / 'run'}"])
    train.preflight(cfg, None)  # the start records what it read
    _checkpoint(tmp_path / "run" / "checkpoints", 4, cfg.model_dump(mode="json"), data=data_fingerprint(cfg.data))
    train_shards = sorted(pack.glob("train-*.tar"))
    train_shards[0].touch()  # a new time, the same bytes: hashed again, and resumes
    assert train.preflight(cfg, "auto")[1] is not None
    train_shards[0].write_bytes(train_shards[1].read_bytes())  # replaced in place
    with pytest.raises(ConfigError, match=f"{train_shards[0].name} was replaced"):
        train.preflight(cfg, "auto")
