"""The GPU check is runnable by anyone with a clone: no path outside the repository, no wheels
folder of a particular machine; `cmgl bench gpu` finds the script and refuses a missing wheels
folder with a clear message. (Its DRY=1 run takes about 90 s on two loaded cores: by hand.)"""
import subprocess
import sys
from pathlib import Path

from cmgl_dist.bench import gpu

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("gpu_*.sh"))


def _make_target(name):
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = lines.index(next(line for line in lines if line.startswith(f"{name}:")))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("\t")), len(lines))
    return "\n".join(lines[start:end])


def test_no_script_reaches_outside_the_repository():
    texts = {path.name: path.read_text() for path in SCRIPTS}
    texts["make gpu-check"] = _make_target("gpu-check")
    for name, text in texts.items():
        for outside in ("../shared", "/work/", ".whl", "run(command", "carry="):
            assert outside not in text, f"{name} refers to {outside!r}"


def test_bench_gpu_finds_the_script_and_checks_its_arguments(tmp_path):
    assert gpu.SCRIPT == ROOT / "benchmarks" / "gpu_check.sh" and gpu.SCRIPT.is_file()
    done = subprocess.run([sys.executable, "-P", "-m", "cmgl_dist.cli", "bench", "gpu", "--out", str(tmp_path),
                           "--offline", str(tmp_path / "missing")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "is not a folder" in done.stderr
