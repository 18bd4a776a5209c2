"""Real `cmgl train` runs on CPU ranks with gloo, started through the launch scripts, on shards packed
from real reports (debug config: tiny CNN + tiny BERT, 64 px crops, 12 steps of 2 x 8 samples).

- ZeRO 1, 2 and 3 each train and the loss goes down; metrics.jsonl holds one full record per step.
- A run killed with SIGKILL (launcher and every rank) after a checkpoint resumes with
  `--resume auto` on two torchrun agents acting as two nodes (c10d rendezvous on localhost, one
  CPU rank each) and reproduces the uninterrupted ZeRO-1 run's per-step loss, lr and grad norm
  bit for bit: same world size, same per-rank data position and RNG states, CPU kernels that are
  deterministic for a fixed thread count, and a 2-rank gloo sum that is order-free (a + b == b + a).
- The ZeRO-3 run's export equals DeepSpeed's own consolidation of its last checkpoint, reloads
  with `load_exported`, and its text encoder loads with plain transformers.
- A loss that is never finite stops the run with exit code 1 and a checkpoint whose weights no
  dropped batch reached.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from helpers import free_port

from cmgl_dist.engine.checkpoint import COMPLETE, LATEST, data_fingerprint, tag_for
from cmgl_dist.engine.schedule import WarmupCosine

LAUNCH = Path(__file__).resolve().parents[1] / "launch"
STEPS = 12  # debug.yaml: 12 steps, a checkpoint every 4, a metrics record every step
CKPT_EVERY = 4
RECORD_KEYS = {"step", "loss", "loss_global", "loss_local", "lr", "grad_norm", "samples_per_s", "step_time_s",
               "data_wait_share", "peak_mem_mb", "samples_seen", "nonfinite_skipped", "samples_skipped"}


def _env(**extra) -> dict:
    return {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **extra}


def _train_args(shards: Path, run_dir: Path, *overrides: str) -> list[str]:
    sets = [f"data.shards={shards}", f"train.run_dir={run_dir}", *overrides]
    return ["--config", "debug", *[arg for item in sets for arg in ("--set", item)]]


def _launch(script: str, args: list[str], **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(LAUNCH / script), *args], env=_env(**env), capture_output=True, text=True,
                          timeout=240)


def _check(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, f"exit code {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]



@pytest.fixture(scope="module")
def zero_run(small_shards, tmp_path_factory):
    """stage -> run dir of a finished 2-rank run (each stage launched once per module)."""
    runs = {}

    def run(stage: int) -> Path:
        if stage not in runs:
            run_dir = tmp_path_factory.mktemp(f"zero{stage}")
            # The ZeRO-3 run also exports: the hardest case for gathering the weights.
            _check(_launch("local_cpu.sh", _train_args(small_shards, run_dir, f"zero.stage={stage}",
                                                       f"train.export={str(stage == 3).lower()}")))
            runs[stage] = run_dir
        return runs[stage]
    return run


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stage_trains_and_the_loss_goes_down(zero_run, stage):
    losses = [r["loss"] for r in _metrics(zero_run(stage))]
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses


def test_metrics_checkpoints_and_tensorboard_of_a_run(zero_run):
    run_dir = zero_run(1)
    records = _metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    from cmgl_dist.config import load_config

    cfg = load_config(str(run_dir / "config.yaml"))
    ratio = WarmupCosine(cfg.schedule, cfg.train.steps)
    for r in records:
        assert RECORD_KEYS <= r.keys() and not any(k.startswith("gpu_") for k in r)  # no GPU: absent, not faked
        assert math.isclose(r["loss"], r["loss_global"] + r["loss_local"], rel_tol=1e-5)
        assert math.isclose(r["lr"], cfg.optimizer.lr * ratio(r["step"] - 1), rel_tol=1e-9)
        assert r["grad_norm"] > 0 and r["samples_per_s"] > 0 and r["peak_mem_mb"] > 0
        assert 0 <= r["data_wait_share"] < 1
        assert r["samples_seen"] == r["step"] * 2 * cfg.train.micro_batch
        assert r["nonfinite_skipped"] == 0 and r["samples_skipped"] == 0
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / LATEST).read_text().strip() == tag_for(STEPS)
    kept = sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("step_"))
    assert kept == [tag_for(STEPS - CKPT_EVERY), tag_for(STEPS)]  # keep_last=2
    assert all((checkpoints / tag / COMPLETE).is_file() for tag in kept)
    client = json.loads((checkpoints / tag_for(STEPS) / "client.json").read_text())
    assert client["data"] == data_fingerprint(cfg.data)  # what a resume compares with the packs now
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))


def _kill_tree(pid: int) -> None:
    """SIGKILL the launcher and every process under it (torchrun starts ranks in their own sessions)."""
    launcher = psutil.Process(pid)
    for process in [launcher, *launcher.children(recursive=True)]:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def test_sigkill_then_resume_on_two_agents_reproduces_the_run(zero_run, small_shards, tmp_path):
    reference = _metrics(zero_run(1))
    run_dir = tmp_path / "killed"
    log = open(tmp_path / "killed.log", "w")
    launcher = subprocess.Popen(["bash", str(LAUNCH / "local_cpu.sh"), *_train_args(small_shards, run_dir, "train.export=false")],
                                env=_env(), stdout=log, stderr=subprocess.STDOUT)
    latest = run_dir / "checkpoints" / LATEST
    deadline = time.monotonic() + 180
    while not (latest.is_file() and latest.read_text().strip() == tag_for(CKPT_EVERY)):
        assert launcher.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline, f"no step-{CKPT_EVERY} checkpoint within 180 s"
        time.sleep(0.005)
    _kill_tree(launcher.pid)
    launcher.wait()
    killed_at = int(latest.read_text().strip().removeprefix("step_"))
    assert killed_at < STEPS, "the run finished before the kill"

    port = free_port()
    agents = [subprocess.Popen(["bash", str(LAUNCH / "torchrun.sh"),
                                *_train_args(small_shards, run_dir, "train.export=false"), "--resume", "auto"],
                               env=_env(NNODES="2", NPROC_PER_NODE="1", RDZV_ENDPOINT=f"127.0.0.1:{port}",
                                        RDZV_ID="kill-resume"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for _ in range(2)]
    outputs = [agent.communicate(timeout=240)[0] for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert f"resumed from {run_dir / 'checkpoints' / tag_for(killed_at)}" in "".join(outputs)

    resumed = _metrics(run_dir)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))  # records past the checkpoint rewritten
    for ours, uninterrupted in zip(resumed[killed_at:], reference[killed_at:]):
        for key in ("loss", "loss_global", "loss_local", "lr", "grad_norm", "samples_seen"):
            assert ours[key] == uninterrupted[key], (ours["step"], key, ours[key], uninterrupted[key])


def test_zero3_export_holds_the_trained_weights_and_reloads(zero_run, small_shards):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    from cmgl_dist.data.loader import make_loader
    from cmgl_dist.data.shardlist import shard_urls
    from cmgl_dist.model.text_backbone import check_vocabulary, embedding_rows
    from cmgl_dist.engine.export import load_exported
    from cmgl_dist.model import build_model

    run_dir = zero_run(3)
    export = run_dir / "export"
    exported = load_file(str(export / "model.safetensors"))
    # DeepSpeed's own reassembly of the final ZeRO-3 partitions: an independent path to the weights.
    consolidated = get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"), tag=tag_for(STEPS))
    assert exported.keys() == consolidated.keys()
    assert all(torch.equal(exported[k], consolidated[k]) for k in exported)

    model, cfg = load_exported(export)
    trained = build_model(cfg.model.model_copy(update={"image_pretrained": False}))
    trained.load_state_dict(consolidated, strict=True)
    trained.eval()
    batch = next(iter(make_loader(shard_urls(str(small_shards), "val"), cfg.data, model.tokenizer, train=False,
                                  batch_size=4, seed=0)))
    with torch.no_grad():
        for ours, theirs in zip((*model.encode_image(batch["images"]), *model.encode_text(batch)),
                                (*trained.encode_image(batch["images"]), *trained.encode_text(batch))):
            assert torch.equal(ours, theirs)
        # The text side loads without cmgl: transformers' own classes on the save_pretrained folder.
        plain = AutoModel.from_pretrained(str(export / "text_encoder")).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(export / "text_encoder"))
        check_vocabulary(tokenizer, embedding_rows(plain), "exported text_encoder")
        tokens = tokenizer(batch["texts"], padding=True, return_tensors="pt")
        expected = model.text_backbone.transformer(**tokens).last_hidden_state
        assert torch.equal(plain(**tokens).last_hidden_state, expected)
    image = load_file(str(export / "image_encoder.safetensors"))
    assert all(torch.equal(image[k], v) for k, v in model.image_backbone.state_dict().items())


def test_nonfinite_losses_stop_the_run_with_a_checkpoint(small_shards, tmp_path):
    # A temperature of 1e-45 turns every logit into inf: the loss is NaN from the first micro batch.
    done = _launch("local_cpu.sh", _train_args(small_shards, tmp_path, "loss.global_temperature=1e-45",
                                               "train.max_nonfinite=2"), NPROC_PER_NODE="1")
    assert done.returncode == 1, done.stderr[-3000:]
    # Drops are read on log steps (every step in debug.yaml): the second in a row stops the run.
    assert "2 non-finite losses in a row by step 2" in done.stderr
    assert (tmp_path / "checkpoints" / LATEST).read_text().strip() == tag_for(2)
    assert json.loads((tmp_path / "checkpoints" / tag_for(2) / "client.json").read_text())["state"]["nonfinite_skipped"] == 2
