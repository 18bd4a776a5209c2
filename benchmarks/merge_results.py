"""Keep a benchmark run's rows: merge each long-format CSV of a results folder (the GPU check's
OUT, a `cmgl bench` --out) into benchmarks/results/<same name>, replacing the rows of the cases it
measured again on the same machine (`cmgl_dist.bench.harness.update_rows`); rows keep their stamps.

    python benchmarks/merge_results.py OUT [--into benchmarks/results]
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from cmgl_dist.bench.harness import COLUMNS, read_rows, update_rows

RESULTS = Path(__file__).resolve().parent / "results"


def long_format(path: Path) -> bool:
    with open(path, newline="") as f:
        return tuple(next(csv.reader(f), ())) == COLUMNS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--into", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sources = sorted(p for p in args.folder.glob("*.csv") if long_format(p))
    if not sources:
        print(f"merge_results: no long-format CSV in {args.folder}", file=sys.stderr)
        return 1
    for source in sources:
        rows = read_rows(source)
        update_rows(args.into / source.name, rows)
        print(f"{source.name}: {len(rows)} rows into {args.into / source.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
