"""Put the project on a Python path as setup.py maps it, without installing it.

    python3 benchmarks/stage_project.py DEST     # then PYTHONPATH=DEST

setup.py installs the folder kernels/ as `cmgl_dist.kernels` (and shards/, configs/ likewise), so
the source tree itself cannot go on sys.path. DEST gets a `cmgl_dist` folder of links: one to each
entry of cmgl_dist/, one to each mapped folder under its package name. The mapping is read from
setup.py's `package_dir` (one copy of that fact), so a package added there is staged too. Used
where pip cannot install the project (`make gpu-check-box`: no index, no build backend needed).
"""
from __future__ import annotations

import ast
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_dir(setup_py: Path = ROOT / "setup.py") -> dict[str, str]:
    """setup()'s package_dir, read without running setup.py."""
    for node in ast.walk(ast.parse(setup_py.read_text(), str(setup_py))):
        if isinstance(node, ast.keyword) and node.arg == "package_dir":
            return ast.literal_eval(node.value)
    raise ValueError(f"{setup_py}: no package_dir in setup()")


def stage(dest: Path, mapping: dict[str, str], root: Path = ROOT) -> None:
    """Links under dest: top-level packages as folders of links, mapped subpackages as one link."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    nested = {name: folder for name, folder in mapping.items() if "." in name}
    for name, folder in mapping.items():
        if "." in name:
            continue
        target = dest / name
        target.mkdir()
        mapped_here = {sub.split(".", 1)[1] for sub in nested if sub.startswith(name + ".")}
        for entry in (root / folder).iterdir():
            if entry.name not in mapped_here and entry.name != "__pycache__":
                (target / entry.name).symlink_to(entry)
    for name, folder in sorted(nested.items()):
        (dest / name.replace(".", "/")).symlink_to(root / folder)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python3 benchmarks/stage_project.py DEST")
    stage(Path(sys.argv[1]).resolve(), package_dir())
