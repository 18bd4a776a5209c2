"""The GPU check is runnable by anyone with a clone: no path outside the repository, no wheels
folder of a particular machine; `cmgl bench gpu` runs the script of the checkout it is given and
refuses one without it; the offline machine's way in (`make gpu-check-box`) stages the project
as setup.py maps it. (The whole check, offline, is tests/test_gpu_box_sim.py: make gpu-box-sim.)"""
import os
import subprocess
import sys
from pathlib import Path

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
    texts["make gpu-check-box"] = _make_target("gpu-check-box")
    for name, text in texts.items():
        for outside in ("../shared", "/work/", ".whl/", "run(command", "carry="):
            assert outside not in text, f"{name} refers to {outside!r}"


def test_bench_gpu_runs_the_checkout_it_is_given(tmp_path):
    command = [sys.executable, "-P", "-m", "cmgl_dist.cli", "bench", "gpu", "--out", str(tmp_path / "out")]
    done = subprocess.run(command + ["--source", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "gpu_check.sh not found" in done.stderr
    # The checkout's script runs (only its verdict: no stage), with this Python and OUT.
    done = subprocess.run(command + ["--source", str(ROOT), "--stages", " "], capture_output=True, text=True,
                          timeout=300)
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert done.returncode == 0 and "verdict: triton fwd+bwd T=I=128 bf16 ms nan (<= 10): missing" in log


def test_the_project_is_staged_as_setup_py_maps_it(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import stage_project
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    mapping = stage_project.package_dir()
    assert mapping["cmgl_dist.kernels"] == "kernels" and mapping["cmgl_dist"] == "cmgl_dist"
    stage_project.stage(tmp_path / "site", mapping)
    probe = ("import importlib.util as u, cmgl_dist.configs as c; "
             "print(u.find_spec('cmgl_dist.kernels').origin, u.find_spec('cmgl_dist.shards.sources').origin, c.__file__)")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    done = subprocess.run([sys.executable, "-S", "-P", "-c", probe], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    kernels, sources, configs = done.stdout.split()
    assert kernels == str(tmp_path / "site" / "cmgl_dist" / "kernels" / "__init__.py")
    assert Path(kernels).resolve() == ROOT / "kernels" / "__init__.py"
    assert Path(sources).resolve() == ROOT / "shards" / "sources" / "__init__.py"
    assert Path(configs).resolve() == ROOT / "configs" / "__init__.py"
