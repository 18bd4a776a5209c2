"""`cmgl bench gpu --out DIR [--offline WHEELS] [--dry]`: the GPU check (benchmarks/gpu_check.sh).

The check's stages are shell (timeouts per stage, results copied to DIR as they come), so this
command runs that script from the source checkout cmgl is installed from (`pip install -e`);
the script's header says what it measures and where the rows go.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="cmgl bench gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for the check's results and logs")
    parser.add_argument("--offline", type=Path, help="folder of wheels to install the project from first")
    parser.add_argument("--dry", action="store_true", help="every stage tiny, on any machine (DRY=1)")
    parser.add_argument("--stages", help="only these stages, space-separated (default: all)")
    args = parser.parse_args(argv)
    if not SCRIPT.is_file():
        print(f"cmgl bench gpu: {SCRIPT} not found; the GPU check runs from a source checkout "
              "(git clone, then `make install` or `pip install -e .`)", file=sys.stderr)
        return 2
    if args.offline is not None and not args.offline.is_dir():
        print(f"cmgl bench gpu: --offline {args.offline} is not a folder", file=sys.stderr)
        return 2
    env = {**os.environ, "OUT": str(args.out.resolve()), "PY": sys.executable, "DRY": "1" if args.dry else "0"}
    if args.offline is not None:
        env["OFFLINE"] = str(args.offline.resolve())
    if args.stages:
        env["STAGES"] = args.stages
    return subprocess.run(["bash", str(SCRIPT)], env=env).returncode
