"""`cmgl main` refuses cleanly: training's checks run as their own stage before torchrun starts
(a refusal is `cmgl train`'s one line, not a launcher traceback), and `--repack` that changes the
pack moves the run trained on the old pack aside, so training starts afresh on the new one."""
from __future__ import annotations

import json

import pytest

from cmgl_dist import pipeline
from helpers import write_inputs

UIDS = [f"CXR{n}" for n in range(1, 13)]


def _main_args(out, reports, images, image_size, *extra):
    return ["--out", str(out), "--reports", str(reports), "--images", str(images), "--metadata", "none",
            "--image-size", str(image_size), "--workers", "1", "--config", "debug", "--nproc", "1",
            "--skip-eval", *extra]


@pytest.fixture
def stages(monkeypatch):
    """Every stage runs for real except torchrun's training, which is recorded instead."""
    seen = []
    real = pipeline.run_stage

    def run_stage(name, cmd, env=None):
        seen.append(name)
        return 0.0 if name == "train" else real(name, cmd, env)

    monkeypatch.setattr(pipeline, "run_stage", run_stage)
    return seen


def test_a_training_refusal_is_one_line_before_torchrun(tmp_path, stages, capfd):
    reports, images = write_inputs(tmp_path, UIDS)
    with pytest.raises(SystemExit, match="stage 'preflight' failed"):
        pipeline.main(_main_args(tmp_path / "out", reports, images, 32, "--set", "train.precision=fp16"))
    assert stages == ["pack", "preflight"]  # torchrun never started
    err = [line for line in capfd.readouterr().err.splitlines() if line.startswith("cmgl train")]
    assert len(err) == 1 and "fp16 needs CUDA" in err[0]


def test_repack_moves_the_old_run_aside_and_trains_afresh(tmp_path, stages, caplog):
    reports, images = write_inputs(tmp_path, UIDS)
    out = tmp_path / "out"
    pipeline.main(_main_args(out, reports, images, 32))
    # the run trained on the first pack: a checkpoint recording that pack's fingerprint
    from cmgl_dist.engine.checkpoint import COMPLETE, LATEST, file_checksums, tag_for
    from cmgl_dist.config import load_config
    from cmgl_dist.engine.checkpoint import data_fingerprint

    cfg = load_config("debug", [f"data.shards={out / 'shards'}", f"train.run_dir={out / 'run'}"])
    folder = out / "run" / "checkpoints" / tag_for(2)
    folder.mkdir(parents=True)
    (folder / "client.json").write_text(json.dumps({"state": {"step": 2}, "config": cfg.model_dump(mode="json"),
                                                    "data": data_fingerprint(cfg.data)}))
    (folder / COMPLETE).write_text(json.dumps({"world_size": 1, "files": file_checksums(folder)}))
    (out / "run" / "checkpoints" / LATEST).write_text(tag_for(2) + "\n")

    stages.clear()
    pipeline.main(_main_args(out, reports, images, 48, "--repack"))
    assert stages == ["pack", "verify", "preflight", "train"]  # the preflight passed on the new pack
    aside = [p for p in out.iterdir() if p.name.startswith("run.before-repack-")]
    assert len(aside) == 1 and (aside[0] / "checkpoints" / tag_for(2) / "client.json").is_file()
    assert not (out / "run" / "checkpoints").exists() and aside[0].name in caplog.text
