"""`cmgl main`: the whole job — pack, train, evaluate, report — each stage resuming what is done.

Every stage runs as its own process (the same commands a user would type), so a failure names
the stage, and rerunning `cmgl main` with the same arguments picks up where it stopped: the pack
keeps finished shards made from the same inputs (and stops, saying what differs, when inputs or
packing arguments changed; --repack rewrites it), training resumes from its latest complete
checkpoint, and the sweep skips jobs already in results.jsonl.
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from cmgl_dist.logs import init_logger
from cmgl_dist.shards.bounds import bounded
from cmgl_dist.shards.schema import MANIFEST

log = logging.getLogger("cmgl.main")


def default_world_size() -> int:
    """Every GPU of the machine, else 2 CPU ranks (gloo)."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.device_count()
    except ImportError:
        pass
    return 2


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cmgl main", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs", help="everything goes under this folder (default: outputs)")
    p.add_argument("--reports", help="NLMCXR_reports.tgz or a folder of report XML (default: torchxrayvision's copy)")
    p.add_argument("--images", default="phantom", help="NLMCXR_png.tgz, a folder of PNGs, or 'phantom' (default)")
    p.add_argument("--metadata", help="DICOM metadata CSV for view positions (default: torchxrayvision's copy)")
    p.add_argument("--image-size", type=bounded("image_size"), default=256, help="longest side of packed images (default 256)")
    p.add_argument("--config", default="iurr_offline", help="training config name or file (default iurr_offline)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, repeatable (e.g. train.steps=100)")
    p.add_argument("--nproc", type=int, default=None, help="training ranks on this node (default: GPUs, else 2)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="packing processes")
    p.add_argument("--repack", action="store_true",
                   help="rewrite OUT/shards when it was packed from other inputs (default: stop and say what differs)")
    p.add_argument("--skip-eval", action="store_true", help="stop after training")
    return p.parse_args(argv)


def run_stage(name: str, cmd: list[str], env: Optional[dict] = None) -> float:
    log.info("== %s: %s", name, shlex.join(cmd))
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"cmgl main: stage '{name}' failed (exit {result.returncode}) after {seconds:.0f} s; "
                         "fix the cause and rerun the same command to resume")
    log.info("== %s: done in %.0f s", name, seconds)
    return seconds


def cmgl_script() -> str:
    # The console script, not `python -m cmgl_dist.cli`: `-m` puts the working directory on
    # sys.path, and from the repo root the folder kernels/ would shadow the PyPI `kernels`.
    return str(Path(sys.executable).with_name("cmgl"))


def cmgl(*args: str) -> list[str]:
    return [cmgl_script(), *args]


def pack_command(args: argparse.Namespace, shards: Path) -> list[str]:
    cmd = cmgl("pack", "--images", args.images, "--out", str(shards),
               "--image-size", str(args.image_size), "--workers", str(args.workers))
    if args.reports:
        cmd += ["--reports", args.reports]
    if args.metadata:
        cmd += ["--metadata", args.metadata]
    return cmd + (["--replace"] if args.repack else [])


def train_command(args: argparse.Namespace, shards: Path, run_dir: Path) -> list[str]:
    nproc = args.nproc or default_world_size()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                cmgl_script(), "train"]
    overrides = [f"data.shards={shards}", f"train.run_dir={run_dir}", *args.overrides]
    return launcher + ["--config", args.config, "--resume", "auto"] + [a for o in overrides for a in ("--set", o)]


def preflight_command(train: list[str]) -> list[str]:
    """`cmgl train --preflight` with the training command's arguments: the checks training starts
    with, run before torchrun so that a refusal is the one line `cmgl train` prints."""
    return cmgl("train", "--preflight", *train[train.index("train") + 1:])


def set_aside_old_run(run_dir: Path) -> Optional[Path]:
    """After --repack changed the pack, the run trained on the old one cannot resume on the new
    (its data fingerprint differs): it is moved aside, whole, so training starts afresh."""
    from cmgl_dist.locks import folder_lock

    if not run_dir.exists():
        return None
    aside = run_dir.with_name(f"{run_dir.name}.before-repack-{time.strftime('%Y%m%dT%H%M%S')}")
    with folder_lock(run_dir, "cmgl main --repack"):  # not while a training run writes it
        os.replace(run_dir, aside)
    return aside


def pack_fingerprint(shards: Path) -> Optional[str]:
    from cmgl_dist.shards.manifest import pack_sha256

    try:
        return pack_sha256(shards)
    except (FileNotFoundError, ValueError):
        return None


def main(argv: Optional[list[str]] = None) -> int:
    init_logger()
    args = parse_args(argv)
    out = Path(args.out)
    shards, run_dir, eval_dir = out / "shards", out / "run", out / "eval"
    timings = {}
    packed_before = (shards / MANIFEST).exists()
    fingerprint_before = pack_fingerprint(shards) if packed_before else None
    # Always run: it keeps finished shards made from the same inputs, and stops on other inputs.
    timings["pack"] = run_stage("pack", pack_command(args, shards))
    if packed_before:
        timings["verify"] = run_stage("verify", cmgl("verify", str(shards)))
    if args.repack and fingerprint_before is not None and pack_fingerprint(shards) != fingerprint_before:
        aside = set_aside_old_run(run_dir)
        if aside is not None:
            log.info("--repack changed the pack: the run trained on the old one is now %s; training starts afresh",
                     aside)
    train = train_command(args, shards, run_dir)
    world = {**os.environ, "WORLD_SIZE": str(args.nproc or default_world_size()), "RANK": "0"}
    timings["preflight"] = run_stage("preflight", preflight_command(train), env=world)
    timings["train"] = run_stage("train", train)
    if not args.skip_eval:
        timings["evaluate"] = run_stage(
            "evaluate", cmgl("sweep", "--exports", str(run_dir / "export"), "--shards", str(shards),
                             "--out", str(eval_dir)))
    # the job's summary: stdout, like the stages' own results
    print("\n" + "  ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    print(f"shards: {shards}\nrun (checkpoints, metrics.jsonl, export/): {run_dir}\nevaluation: {eval_dir}")
    return 0
