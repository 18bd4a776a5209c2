"""The run side under faults and bad input, without a training run: lost samples are counted
exactly and a missing shard fails unless told otherwise; the run dir is locked; a torn metrics
line does not block a resume; a resume cannot silently keep old values of changed fields; a
damaged checkpoint is passed over for the previous sound one; config errors exit 2 with the
message; exports are readable by others and load in plain transformers without new weights."""
from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
import torch

from cmgl_dist.atomic import write_text_atomic
from cmgl_dist.config import load_config
from cmgl_dist.data import make_loader
from cmgl_dist.data.shardlist import shard_urls
from cmgl_dist.data.streams import ShardMissingError
from cmgl_dist.engine import train
from cmgl_dist.engine.checkpoint import COMPLETE, LATEST, file_checksums, resolve_resume, tag_for
from cmgl_dist.engine.telemetry import Telemetry
from cmgl_dist.evaluate.run import main as evaluate_main
from cmgl_dist.model import build_model


def _damaged_copy(small_shards, tmp_path):
    """A copy of the pack whose first test shard is cut in half and whose second is gone."""
    shards = tmp_path / "shards"
    shutil.copytree(small_shards, shards)
    manifest = json.loads((shards / "manifest.json").read_text())
    cut, gone = [s for s in manifest["shards"] if s["split"] == "test"][:2]
    data = (shards / cut["name"]).read_bytes()
    (shards / cut["name"]).write_bytes(data[:len(data) // 2])
    (shards / gone["name"]).unlink()
    return shards, manifest["splits"]["test"]["samples"]


@pytest.mark.parametrize("world_size", [1, 8], ids=["shard-per-stream", "more-streams-than-shards"])
def test_a_broken_or_missing_shard_counts_every_sample_it_held(small_shards, tmp_path, world_size):
    shards, total = _damaged_copy(small_shards, tmp_path)
    cfg = load_config("debug", ["data.workers=0", "data.on_missing_shard=skip"])
    tokenizer = build_model(cfg.model).tokenizer
    read = skipped = 0
    for rank in range(world_size):
        for batch in make_loader(shard_urls(str(shards), "test"), cfg.data, tokenizer, train=False, batch_size=8,
                                 seed=0, rank=rank, world_size=world_size):
            read, skipped = read + len(batch["keys"]), skipped + batch["skipped"]
    assert read + skipped == total and skipped >= 16


def test_a_missing_shard_fails_unless_told_otherwise(small_shards, tmp_path, capsys):
    shards, _ = _damaged_copy(small_shards, tmp_path)
    cfg = load_config("debug", ["data.workers=0"])
    loader = make_loader(shard_urls(str(shards), "test"), cfg.data, build_model(cfg.model).tokenizer,
                         train=False, batch_size=8, seed=0)
    with pytest.raises(ShardMissingError, match="data.on_missing_shard=skip"):
        list(loader)
    train_shard = next(s for s in json.loads((shards / "manifest.json").read_text())["shards"] if s["split"] == "train")
    (shards / train_shard["name"]).unlink()
    argv = ["--config", "debug", "--set", f"data.shards={shards}", "--set", f"train.run_dir={tmp_path / 'run'}"]
    assert train.main(argv) == 2
    assert "data.on_missing_shard=skip" in capsys.readouterr().err


def test_a_second_run_on_a_locked_run_dir_is_refused(small_shards, tmp_path, capsys):
    argv = ["--config", "debug", "--set", f"data.shards={small_shards}", "--set", f"train.run_dir={tmp_path}"]
    with train.run_dir_lock(tmp_path, rank=0):
        assert train.main(argv) == 2
    assert f"train.run_dir={tmp_path} is in use by cmgl train (pid {os.getpid()}" in capsys.readouterr().err


def test_a_torn_metrics_line_does_not_block_a_resume(tmp_path):
    records = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(records) + '\n{"step": 4, "lo')
    telemetry = Telemetry(tmp_path, rank=0, start_step=2, total_steps=10, tensorboard=False)
    telemetry.close()
    assert (tmp_path / "metrics.jsonl").read_text() == records[0] + "\n" + records[1] + "\n"


def _checkpoint(root, step, config: dict):
    folder = root / tag_for(step)
    folder.mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(f"weights {step}".encode())
    (folder / "client.json").write_text(json.dumps({"state": {"step": step}, "config": config}))
    (folder / COMPLETE).write_text(json.dumps({"world_size": 2, "files": file_checksums(folder)}))
    write_text_atomic(root / LATEST, tag_for(step) + "\n")
    return folder


def test_resume_refuses_changed_fields_it_cannot_apply(small_shards, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # the world size _checkpoint records
    base = [f"data.shards={small_shards}", f"train.run_dir={tmp_path}"]
    saved = load_config("debug", base).model_dump(mode="json")
    del saved["data"]["on_missing_shard"]  # written before that field existed: its default applies
    _checkpoint(tmp_path / "checkpoints", 4, saved)
    argv = ["--config", "debug", "--resume", "auto"]
    for item in base + ["optimizer.lr=0.5", "zero.stage=2"]:
        argv += ["--set", item]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert "optimizer.lr: 0.003 in the checkpoint, 0.5 now" in err and "zero.stage: 1 in the checkpoint, 2 now" in err
    # a longer run, another cadence: applied, so the resume goes ahead
    urls, source = train.preflight(load_config("debug", base + ["train.steps=20", "train.log_every=5"]), "auto")
    assert source == (tmp_path / "checkpoints", tag_for(4)) and urls


def test_a_damaged_checkpoint_falls_back_to_the_previous_sound_one(tmp_path):
    root = tmp_path / "checkpoints"
    older, newer = _checkpoint(root, 4, {}), _checkpoint(root, 8, {})
    assert resolve_resume("auto", root) == (root, tag_for(8))
    (newer / "mp_rank_00_model_states.pt").write_bytes(b"bit rot")
    assert resolve_resume("auto", root) == (root, tag_for(4))
    assert resolve_resume(str(root), tmp_path / "elsewhere") == (root, tag_for(4))
    with pytest.raises(RuntimeError, match="damaged checkpoint"):
        resolve_resume(str(newer), root)
    (older / "client.json").unlink()
    with pytest.raises(RuntimeError, match="passes its checksums"):
        resolve_resume("auto", root)


@pytest.mark.parametrize("text,message", [("train: {steps: [1, 2\n", "is not valid YAML"),
                                          ("- a list\n", "holds a list, not a mapping")])
def test_config_errors_exit_2_with_the_message(tmp_path, capsys, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    assert train.main(["--config", str(bad)]) == 2
    assert message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        evaluate_main(["--exports", str(tmp_path), "--out", str(tmp_path / "eval"), "--config", str(bad)])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_export_is_world_readable_and_loads_in_transformers_without_new_weights(tmp_path):
    from transformers import AutoModel

    from cmgl_dist.engine.export import export_model

    cfg = load_config("debug")
    previous = os.umask(0o077)
    try:
        export = export_model(build_model(cfg.model).state_dict(), cfg, tmp_path / "export")
    finally:
        os.umask(previous)
    for path in [export, *export.rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path
    model, info = AutoModel.from_pretrained(str(export / "text_encoder"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ours = build_model(cfg.model).text_backbone.transformer.state_dict()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ours.items())


def test_exporting_the_same_weights_writes_the_same_bytes(tmp_path):
    """The export's fingerprint keys every evaluation result, so identical runs must write
    identical files (a two-key metadata map was written in a per-process hash order)."""
    from cmgl_dist.engine.export import export_model

    cfg = load_config("debug")
    torch.manual_seed(0)
    state = build_model(cfg.model).state_dict()
    files = [(export_model(state, cfg, tmp_path / f"export{i}") / "model.safetensors").read_bytes() for i in range(4)]
    assert all(f == files[0] for f in files[1:])
