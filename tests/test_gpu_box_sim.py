"""The offline GPU machine, simulated on this one: `make gpu-check-box DRY=1` passes every stage.

That machine has Python with torch, triton, torchvision, transformers and nvidia-ml-py (and their
own dependencies) and nothing else: no venv, no cmgl, no network. Here: a fresh `python -m venv`
whose site-packages links exactly those distributions and the ones they require (read from
their metadata) from this interpreter's; `make gpu-wheels` (with the package index, for this
Python's version); then, in a network namespace of its own (`unshare -n`, loopback only, so
torchrun's rendezvous works and nothing else does), `make gpu-check-box DRY=1`. Every stage must
end rc 0, every output file must be in OUT, the BERT-base folder's vocabulary must be 30522.

Minutes on two cores, and it needs the package index and `unshare`: it runs from
`make gpu-box-sim` (which CI runs where `unshare -n` works; .ci/run), not in `make test`.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
BOX_SET = ("torch", "triton", "torchvision", "transformers", "nvidia-ml-py")
OUTPUTS = ("COMMIT", "gpu_check.log", "tests.log", "kernel_compile_sm90.csv", "local_similarity.csv",
           "e2e_throughput.csv", "step_breakdown.csv", "logs.tar.gz")
WHEELS_MAX = 64 * 2**20

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600), pytest.mark.skipif(os.environ.get("CMGL_BOX_SIM") != "1",
                                                   reason="the offline GPU machine simulation: make gpu-box-sim")]


def closure(names) -> list[importlib.metadata.Distribution]:
    """The distributions `names` need, theirs included (extras and other platforms' left out)."""
    found, todo = {}, list(names)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in found:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # an optional need this interpreter lacks: the box would lack it too
        found[name] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return list(found.values())


def box_python(folder: Path) -> Path:
    """A venv (with pip, as the box has) whose site-packages links only the box's distributions."""
    subprocess.run([sys._base_executable, "-m", "venv", str(folder)], check=True, timeout=300)
    site = next((folder / "lib").glob("python3*/site-packages"))
    for dist in closure(BOX_SET):
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source = Path(dist.locate_file(top))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    return folder / "bin" / "python"


def test_the_check_runs_on_a_simulated_offline_gpu_machine(tmp_path):
    assert shutil.which("unshare"), "unshare (util-linux) is needed for a namespace without network"
    python = box_python(tmp_path / "box")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path), PATH=f"{python.parent}:{env['PATH']}")
    probe = subprocess.run([str(python), "-c", "import torch, triton, torchvision, transformers, pynvml\n"
                            "for name in ('deepspeed', 'webdataset', 'cmgl_dist', 'pytest', 'ray', 'matplotlib'):\n"
                            "    try: __import__(name)\n    except ImportError: pass\n"
                            "    else: raise SystemExit(name + ' is importable')"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert probe.returncode == 0, probe.stderr[-2000:]
    wheels, out = tmp_path / "whl", tmp_path / "out"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run(["make", "-C", str(ROOT), "gpu-wheels", f"GPU_WHEELS={wheels}", f"GPU_PYTHON={version}"],
                   check=True, timeout=600)
    size = sum(f.stat().st_size for f in wheels.rglob("*") if f.is_file())
    assert size <= WHEELS_MAX and not list(wheels.glob("ray-*"))

    make = (f"make -C {ROOT} gpu-check-box DRY=1 GPU_WHEELS={wheels} GPU_SITE={tmp_path / 'site'} "
            f"OUT={out} GPU_BOX_PYTHON={python}")
    done = subprocess.run(["unshare", "-n", "sh", "-c", f"ip link set lo up && {make}"], env=env,
                          capture_output=True, text=True, timeout=1500)
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").is_file() else ""
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    stages = re.findall(r"stage (\w+) rc=(\d+)", log)
    assert [name for name, _ in stages] == "setup tests compile bench128 bench512 e2e_setup e2e step".split()
    assert all(rc == "0" for _, rc in stages), stages
    assert [name for name in OUTPUTS if not (out / name).is_file()] == []
    assert "text encoder vocabulary: 30522" in log
    assert log.strip().splitlines()[-1].split("] ", 1)[1].startswith("verdict: ")
    assert (out / "COMMIT").read_text().strip() not in ("", "unknown")
