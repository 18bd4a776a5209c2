"""`cmgl bench gpu --out DIR [--source CHECKOUT] [--dry]`: the GPU check (benchmarks/gpu_check.sh).

The check's stages are shell (timeouts per stage, results copied to DIR as they come) and run
the benchmarks/ scripts of a source checkout, which an installed cmgl does not carry: the
checkout is named explicitly (`--source`, default the current folder, as `make gpu-check` runs
it) rather than guessed from where this module happens to be installed. The script's header says
what it measures and where the rows go; on a GPU machine without network, `make gpu-check-box`
runs the same script with the machine's own Python.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

SCRIPT = Path("benchmarks") / "gpu_check.sh"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="cmgl bench gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for the check's results and logs")
    parser.add_argument("--source", type=Path, default=Path.cwd(),
                        help=f"the source checkout holding {SCRIPT} (default: the current folder)")
    parser.add_argument("--dry", action="store_true", help="every stage tiny, on any machine (DRY=1)")
    parser.add_argument("--stages", help="only these stages, space-separated (default: all)")
    args = parser.parse_args(argv)
    script = args.source / SCRIPT
    if not script.is_file():
        print(f"cmgl bench gpu: {script} not found; the GPU check runs from a source checkout "
              "(git clone, then run it there or pass --source CHECKOUT)", file=sys.stderr)
        return 2
    env = {**os.environ, "OUT": str(args.out.resolve()), "PY": sys.executable, "DRY": "1" if args.dry else "0"}
    if args.stages:
        env["STAGES"] = args.stages
    return subprocess.run(["bash", str(script.resolve())], env=env).returncode
