"""Configs for `cmgl train`: the shipped YAMLs load, the DeepSpeed JSON is derived from them, the
schedule is what the config says, and a bad value or combination fails before any work with the
field and the fix."""
from __future__ import annotations

import math

import pytest
import torch

from cmgl_dist.config import load_config
from cmgl_dist.engine import train
from cmgl_dist.engine.deepspeed_config import deepspeed_config
from cmgl_dist.engine.schedule import WarmupCosine


@pytest.mark.parametrize("name", ["debug", "iurr_offline", "gloria_r50_bert"])
def test_shipped_configs_load_and_derive(name):
    cfg = load_config(name)
    ds = deepspeed_config(cfg, world_size=8, cuda=True)
    assert ds["train_batch_size"] == cfg.train.micro_batch * cfg.train.grad_accum * 8
    assert ds["zero_optimization"]["stage"] == cfg.zero.stage
    assert ds["gradient_clipping"] == cfg.train.grad_clip


def test_every_number_comes_from_the_config():
    cfg = load_config("debug", ["zero.stage=3", "zero.offload_optimizer=true", "zero.offload_params=true",
                                "train.precision=bf16", "train.grad_accum=4", "train.micro_batch=5",
                                "train.grad_clip=0.25", "optimizer.lr=2e-4", "optimizer.betas=[0.8, 0.95]",
                                "optimizer.weight_decay=0.05", "optimizer.eps=1e-6"])
    ds = deepspeed_config(cfg, world_size=3, cuda=True)
    assert ds["train_micro_batch_size_per_gpu"] == 5
    assert ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == 5 * 4 * 3
    assert ds["gradient_clipping"] == 0.25
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    assert ds["optimizer"] == {"type": "AdamW", "params": {
        "lr": 2e-4, "betas": [0.8, 0.95], "eps": 1e-6, "weight_decay": 0.05, "torch_adam": True, "fused": True}}


def test_fused_adamw_only_on_cuda_and_apex_optimizers_are_handed_over():
    cpu = deepspeed_config(load_config("debug"), world_size=2, cuda=False)
    assert cpu["optimizer"]["params"]["fused"] is False and "torch_autocast" not in cpu  # fp32
    apex = deepspeed_config(load_config("debug", ["optimizer.name=fused_adam"]), world_size=2, cuda=True)
    assert "optimizer" not in apex and apex["zero_allow_untested_optimizer"] is True


def test_warmup_then_cosine_to_the_floor():
    cfg = load_config("debug", ["schedule.warmup_steps=4", "schedule.min_lr_ratio=0.1", "train.steps=20"])
    ratio = WarmupCosine(cfg.schedule, total_steps=20)
    assert [ratio(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert ratio(4) == 1.0
    after = [ratio(s) for s in range(4, 20)]
    assert all(a > b for a, b in zip(after, after[1:]))
    assert math.isclose(ratio(20), 0.1) and ratio(19) > 0.1
    constant = WarmupCosine(load_config("debug", ["schedule.name=constant", "schedule.warmup_steps=2"]).schedule, 6)
    assert [constant(s) for s in range(6)] == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]


NEEDS_NO_SHARDS = [
    (["zero.stage=4"], "zero.stage"),
    (["data.crop_size=128"], "set data.crop_size <= data.image_size"),
    (["zero.offload_params=true"], "zero.offload_params needs zero.stage=3"),
    (["optimizer.name=fused_lamb"], "optimizer.name=fused_lamb needs zero.stage=0"),
    (["train.steps=0"], "train.steps"),
    (["schedule.warmup_steps=12"], "schedule.warmup_steps=12 must be < train.steps=12"),
    (["train.lrr=1e-4"], "train.lrr"),
    (["train.steps"], "not key=value"),
    (["data.resample=true"], "set train.batches_per_epoch"),
    (["data.shards=/nonexistent/shards"], "data.shards='/nonexistent/shards'"),
    (["loss.local_backend=triton", "loss.gamma2=40"], "loss.local_backend=triton takes loss.gamma1 <= 60.0"),
]


@pytest.mark.parametrize("overrides,message", NEEDS_NO_SHARDS, ids=[o[0] for o, _ in NEEDS_NO_SHARDS])
def test_bad_config_fails_before_any_work(overrides, message, capsys):
    argv = ["--config", "debug"] + [arg for item in overrides for arg in ("--set", item)]
    assert train.main(argv) == 2
    assert message in capsys.readouterr().err


def test_machine_checks_name_field_and_fix(capsys):
    try:
        import apex  # noqa: F401
    except ImportError:
        assert train.main(["--config", "debug", "--set", "optimizer.name=fused_adam", "--set", "zero.stage=0"]) == 2
        err = capsys.readouterr().err
        assert "optimizer.name=fused_adam needs NVIDIA apex" in err and "optimizer.name=adamw" in err
    if not torch.cuda.is_available():
        assert train.main(["--config", "debug", "--set", "train.precision=fp16"]) == 2
        assert "set train.precision=fp32" in capsys.readouterr().err


def test_existing_run_needs_resume(tmp_path, small_shards, capsys):
    (tmp_path / "checkpoints" / "step_00000002").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step_00000002" / "COMPLETE").write_text("2\n")
    argv = ["--config", "debug", "--set", f"data.shards={small_shards}", "--set", f"train.run_dir={tmp_path}"]
    assert train.main(argv) == 2
    assert "pass --resume auto" in capsys.readouterr().err


def test_dry_run_prints_config_deepspeed_json_and_world(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert train.main(["--config", "debug", "--set", "zero.stage=2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# resolved config" in out and "name: debug" in out
    assert '"train_batch_size": 32' in out and '"stage": 2' in out
    assert '"nodes": 2' in out and '"global_batch": 32' in out
