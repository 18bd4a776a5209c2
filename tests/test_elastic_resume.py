"""A run resumes on another world size and continues as if it had never changed.

A 2-rank run (micro batch 4, global batch 8) checkpointed at step 4 resumes on 1 rank (micro
batch 8) to step 8. Against an uninterrupted 1-rank run with the same seed and global batch:
every step's sample keys are equal (samples.jsonl), the losses of steps 5-8 agree within 1e-3
relative (both encoders locked, so no dropout and no batch-norm statistics depend on how the batch
is split; the loss takes all negatives of the global batch), and the optimizer state the 1-rank
engine holds after the resume equals the checkpoint's consolidated state bit for bit, which in turn
holds DeepSpeed's own consolidation of the partitioned master weights.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers import free_port

from cmgl_dist.engine.checkpoint import tag_for

LAUNCH = Path(__file__).resolve().parents[1] / "launch"
COMMON = ["model.freeze_image=true", "model.freeze_text_layers=4", "train.global_batch=8", "train.steps=8",
          "train.ckpt_every=4", "train.record_samples=true", "train.export=false", "train.tensorboard=false"]


def launch(shards: Path, run_dir: Path, ranks: int, *overrides: str, resume: str | None = None) -> None:
    sets = [f"data.shards={shards}", f"train.run_dir={run_dir}", *COMMON, *overrides]
    args = ["--config", "debug", *[a for item in sets for a in ("--set", item)]]
    args += ["--resume", resume] if resume else []
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "NPROC_PER_NODE": str(ranks)}
    done = subprocess.run(["bash", str(LAUNCH / "local_cpu.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def step_keys(run_dir: Path) -> dict[int, list[str]]:
    """step -> the step's keys, ranks in order (their micro batches are consecutive in the global order)."""
    lines = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    steps: dict[int, list[str]] = {}
    for line in sorted(lines, key=lambda l: (l["step"], l["rank"])):
        steps.setdefault(line["step"], []).extend(line["keys"])
    return steps


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def runs(small_shards, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("elastic")
    launch(small_shards, root / "one", 1, "train.micro_batch=8")
    launch(small_shards, root / "two", 2, "train.micro_batch=4")
    launch(small_shards, root / "resumed", 1, "train.micro_batch=8",
           resume=str(root / "two" / "checkpoints" / tag_for(4)))
    return {"one": root / "one", "two": root / "two", "resumed": root / "resumed"}


def test_two_ranks_resumed_on_one_continue_the_one_rank_run(runs):
    reference, two, resumed = step_keys(runs["one"]), step_keys(runs["two"]), step_keys(runs["resumed"])
    assert sorted(reference) == list(range(1, 9)) and all(len(k) == 8 for k in reference.values())
    assert {s: two[s] for s in range(1, 5)} == {s: reference[s] for s in range(1, 5)}
    assert sorted(resumed) == [5, 6, 7, 8]  # the resumed run's own steps only
    assert resumed == {s: reference[s] for s in range(5, 9)}
    want, got = losses(runs["one"]), losses(runs["resumed"])
    for step in range(5, 9):
        assert abs(got[step] - want[step]) <= 1e-3 * abs(want[step]), (step, got[step], want[step])


def _reshard_check(rank: int, port: int, shards: Path, source: Path, out: Path, stage: int = 1) -> None:
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from cmgl_dist.config import load_config
    from cmgl_dist.engine.build import build_trainer
    from cmgl_dist.engine.distributed import init_distributed
    from cmgl_dist.engine.universal import consolidated_tensors, optimizer_step, read_consolidated

    cfg = load_config("debug", [f"data.shards={shards}", f"train.run_dir={out / 'run'}", *COMMON,
                                "train.micro_batch=8", f"zero.stage={stage}"])
    world = init_distributed()
    try:
        built = build_trainer(cfg, world, out / "run", None, (source.parent, source.name))
        saved, meta = read_consolidated(source)
        now = consolidated_tensors(built.engine)
        torch.save({"same_keys": saved.keys() == now.keys(),
                    "different": sorted(k for k in saved if not torch.equal(saved[k], now[k])),
                    "moments": sum(k.startswith("exp_avg") for k in now),
                    "step": (optimizer_step(built.engine), meta["optimizer_step"]),
                    "lr": (built.engine.lr_scheduler.state_dict()["last_epoch"], meta["scheduler"]["last_epoch"])},
                   out / "check.pt")
        built.close()
    finally:
        dist.destroy_process_group()


def test_the_resharded_optimizer_state_equals_the_consolidated_checkpoint(runs, small_shards, tmp_path):
    source = runs["two"] / "checkpoints" / tag_for(4)
    mp.spawn(_reshard_check, args=(free_port(), small_shards, source, tmp_path), nprocs=1, join=True)
    check = torch.load(tmp_path / "check.pt")
    assert check["same_keys"] and check["different"] == [] and check["moments"] > 0
    assert check["step"] == (4, 4) and check["lr"] == (4, 4)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_2_and_3_reshard_exactly_too(small_shards, tmp_path, stage):
    launch(small_shards, tmp_path / "two", 2, "train.micro_batch=4", "train.steps=4", f"zero.stage={stage}")
    source = tmp_path / "two" / "checkpoints" / tag_for(4)
    mp.spawn(_reshard_check, args=(free_port(), small_shards, source, tmp_path, stage), nprocs=1, join=True)
    check = torch.load(tmp_path / "check.pt")
    assert check["same_keys"] and check["different"] == [] and check["moments"] > 0
    assert check["step"] == (4, 4) and check["lr"] == (4, 4)


def test_the_consolidated_masters_equal_deepspeeds_own_consolidation(runs):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import load_file

    folder = runs["two"] / "checkpoints" / tag_for(4)
    theirs = get_fp32_state_dict_from_zero_checkpoint(str(folder.parent), tag=folder.name)
    ours = load_file(str(folder / "universal.safetensors"))
    trainable = [k for k in ours if k.startswith("exp_avg/")]
    assert trainable
    for key in trainable:
        name = key.removeprefix("exp_avg/")
        assert torch.equal(ours[f"module/{name}"], theirs[name].float()), name


def _client(folder: Path, config: dict) -> tuple[Path, str]:
    folder.mkdir(parents=True)
    (folder / "client.json").write_text(json.dumps({"state": {"step": 4}, "config": config, "data": None}))
    return folder.parent, folder.name


def test_a_checkpoint_from_before_the_global_order_continues_streaming(tmp_path):
    from cmgl_dist.config import ConfigError
    from cmgl_dist.engine.resume import resumed_order

    old = _client(tmp_path / "old" / tag_for(4), {"train": {"micro_batch": 4}})  # no data.order: it streamed
    assert resumed_order(old, "auto", "global") == "stream"
    with pytest.raises(ConfigError, match="trained in the stream data order, data.order=global"):
        resumed_order(old, "global", "global")
    new = _client(tmp_path / "new" / tag_for(4), {"data": {"order": "global"}})
    assert resumed_order(new, "auto", "global") == "global"
