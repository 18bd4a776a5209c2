"""Processes started in the checkout root (torchrun's `-m`, Ray workers, `python -m`) put it on sys.path,
where the folder kernels/ would shadow the PyPI package `kernels` that transformers imports."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_importing_cmgl_takes_the_checkout_root_off_sys_path():
    probe = ("import sys; sys.path.insert(0, ''); import cmgl_dist; "
             "import importlib.util as u; spec = u.find_spec('kernels'); "
             "print(spec.origin if spec else 'absent'); print('' in sys.path)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    origin, root_on_path = out.stdout.split()
    assert root_on_path == "False"
    assert origin == "absent" or Path(origin).resolve() != ROOT / "kernels" / "__init__.py", origin


def test_the_cli_runs_as_a_module_from_the_checkout_root():
    out = subprocess.run([sys.executable, "-m", "cmgl_dist.cli", "train", "--config", "debug", "--dry-run"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "# resolved config" in out.stdout
