"""An elastic run on two hosts loses one, goes on alone, takes it back, and trains every sample of the
epoch exactly once.

Two network namespaces joined by a veth pair stand for two hosts: each has its own host name (an
unshared UTS namespace) and hosts file (/etc/netns/NAME/hosts, so torchrun's host names resolve to
the veth addresses, 192.0.2.0/24, which exist only inside them), and runs one `launch/torchrun.sh`
agent (NNODES=1:2, one CPU rank) with the c10d rendezvous on host 0 and gloo over the veth. Host 1
is killed (SIGKILL, agent and worker) mid-epoch after a checkpoint; host 0's worker fails within
the process-group timeout, its agent restarts it at world size 1 from the last checkpoint; host 1
starts again and the group returns to 2. samples.jsonl, cut back to the checkpoint at every resume,
then holds the run's own trajectory: every sample of the epoch once, and world sizes 2, 1, 2.

Needs root (namespaces); skipped with the reason elsewhere. Slow (restarts import DeepSpeed again).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

LAUNCH = Path(__file__).resolve().parents[1] / "launch"
GLOBAL_BATCH = 8
DEADLINE_S = 420  # the whole scenario; every wait below is bounded by it


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@contextmanager
def two_hosts():
    """Namespace names of host0 and host1, deleted (with their hosts files) however the test ends."""
    tag = f"cg{os.getpid() % 100000}"
    names, made = [f"{tag}h0", f"{tag}h1"], []
    try:
        if os.geteuid() != 0:
            pytest.skip("network namespaces need root")
        try:
            for name in names:
                _ip("netns", "add", name)
                made.append(name)
            _ip("link", "add", f"{tag}a", "type", "veth", "peer", "name", f"{tag}b")
        except (OSError, subprocess.SubprocessError) as err:
            pytest.skip(f"cannot make network namespaces here: {getattr(err, 'stderr', err)!r}")
        for i, (name, dev) in enumerate(zip(names, (f"{tag}a", f"{tag}b"))):
            _ip("link", "set", dev, "netns", name)
            _ip("-n", name, "addr", "add", f"192.0.2.{i + 1}/24", "dev", dev)
            _ip("-n", name, "link", "set", dev, "up")
            _ip("-n", name, "link", "set", "lo", "up")
            hosts = Path("/etc/netns") / name / "hosts"
            hosts.parent.mkdir(parents=True, exist_ok=True)
            hosts.write_text("127.0.0.1 localhost\n192.0.2.1 host0\n192.0.2.2 host1\n")
        yield names
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
            shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)
        try:
            Path("/etc/netns").rmdir()  # only when no other namespace has a hosts file there
        except OSError:
            pass


def start_agent(namespace: str, host: str, args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "NNODES": "1:2", "NPROC_PER_NODE": "1", "MAX_RESTARTS": "4", "RDZV_ENDPOINT": "host0:29400",
           "RDZV_ID": "two-hosts", "RDZV_IS_HOST": "1" if host == "host0" else "0",
           "RDZV_CONF": "last_call_timeout=2,join_timeout=120"}
    script = f'hostname {host} && exec bash {LAUNCH / "torchrun.sh"} "$@"'
    return subprocess.Popen(["ip", "netns", "exec", namespace, "unshare", "--uts", "sh", "-c", script, "sh", *args],
                            env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)


def kill_host(namespace: str, agent: subprocess.Popen) -> None:
    """SIGKILL every process of the host (agent and workers: torchrun starts its workers in sessions
    of their own, so the agent's process group alone would leave them running)."""
    pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=20).stdout
    for pid in [agent.pid, *map(int, pids.split())]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    agent.wait(timeout=30)


def world_by_step(run_dir: Path) -> dict[int, int]:
    path = run_dir / "samples.jsonl"
    ranks: dict[int, int] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written
        ranks[record["step"]] = max(ranks.get(record["step"], 0), record["rank"] + 1)
    return ranks


def checkpoint_worlds(run_dir: Path, after: int) -> set[int]:
    """World sizes of the complete checkpoints past step `after`."""
    worlds = set()
    for marker in (run_dir / "checkpoints").glob("step_*/COMPLETE"):
        try:
            if int(marker.parent.name.removeprefix("step_")) > after:
                worlds.add(json.loads(marker.read_text())["world_size"])
        except (OSError, ValueError):
            continue  # being written
    return worlds


def wait_for(what: str, condition, deadline: float, agents) -> None:
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        if agents[0].poll() is not None:
            raise AssertionError(f"host 0's agent ended (exit {agents[0].returncode}) while waiting for {what}")
        time.sleep(0.5)


def test_a_host_leaves_and_comes_back_and_every_sample_is_trained_once(small_shards, tmp_path):
    manifest = json.loads((small_shards / "manifest.json").read_text())
    train_samples = manifest["splits"]["train"]["samples"]
    epoch_steps = train_samples // GLOBAL_BATCH
    run_dir = tmp_path / "run"
    sets = [f"data.shards={small_shards}", f"train.run_dir={run_dir}", f"train.global_batch={GLOBAL_BATCH}",
            # more steps than the test waits for: host 0 alone must not finish the run before host 1 is back
            "train.micro_batch=4", f"train.steps={50 * epoch_steps}", "train.ckpt_every=2", "train.keep_last=2",
            "train.log_every=1", "train.record_samples=true", "train.export=false", "train.tensorboard=false",
            "train.dist_timeout_s=60"]
    args = ["--config", "debug", *[a for item in sets for a in ("--set", item)]]
    deadline = time.monotonic() + DEADLINE_S
    agents = []
    with two_hosts() as (ns0, ns1):
        try:
            agents = [start_agent(ns0, "host0", args, tmp_path / "host0.log"),
                      start_agent(ns1, "host1", args, tmp_path / "host1.log")]
            wait_for("4 steps on 2 ranks", lambda: sum(w == 2 for w in world_by_step(run_dir).values()) >= 4,
                     deadline, agents)
            kill_host(ns1, agents[1])
            killed_at = max(world_by_step(run_dir))
            assert killed_at < epoch_steps, "the run reached the end of the epoch before host 1 was killed"
            wait_for("a checkpoint written by host 0 alone", lambda: 1 in checkpoint_worlds(run_dir, after=killed_at),
                     deadline, agents)
            rejoined_at = max(world_by_step(run_dir))
            agents[1] = start_agent(ns1, "host1", args, tmp_path / "host1.log")
            wait_for("the group back at 2", lambda: 2 in checkpoint_worlds(run_dir, after=rejoined_at), deadline, agents)
            wait_for("the epoch's last step", lambda: max(world_by_step(run_dir)) >= epoch_steps, deadline, agents)
            assert agents[0].poll() is None and agents[1].poll() is None, "an agent ended on its own"
        except BaseException:
            logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in tmp_path.glob("*.log"))
            print(logs)
            raise
        finally:
            for namespace, agent in zip((ns0, ns1), agents):
                kill_host(namespace, agent)
    steps: dict[int, list[str]] = {}
    for text in (run_dir / "samples.jsonl").read_text().splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue  # the line being written when the hosts were killed
        steps.setdefault(line["step"], []).extend(line["keys"])
    assert sorted(steps) == list(range(1, max(steps) + 1))  # each step once: resumes cut the file back
    worlds = [world_by_step(run_dir)[s] for s in sorted(steps)]
    alone = [i for i, w in enumerate(worlds) if w == 1 and 2 in worlds[:i]]
    assert alone and 2 in worlds[alone[0]:], worlds  # 2, then 1, then 2 again
    epoch = [key for s in range(1, epoch_steps + 1) for key in steps[s]]
    assert len(epoch) == epoch_steps * GLOBAL_BATCH == len(set(epoch))  # every sample of the epoch once
    assert train_samples - len(epoch) < GLOBAL_BATCH  # only the last partial batch is left out
