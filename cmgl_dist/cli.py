"""`cmgl` console entry point: one sub-command per stage, each owned by its own module."""
import importlib
import sys
from typing import Optional

# sub-command -> (module, function, one-line help). Modules are imported lazily so that
# `cmgl pack` does not pay for importing deepspeed, and `cmgl train` not for ray.
COMMANDS = {
    "pack": ("cmgl_dist.shards.pack", "main", "pack IU-RR (or --source nih/chexpert/mimic/padchest/csv) into WebDataset shards"),
    "verify": ("cmgl_dist.shards.verify", "main", "re-read shards and check them against manifest.json"),
    "train": ("cmgl_dist.engine.train", "main", "train with DeepSpeed ZeRO from a config"),
    "evaluate": ("cmgl_dist.evaluate.run", "main", "evaluate one checkpoint (zero-shot, probe, retrieval)"),
    "predict": ("cmgl_dist.predict", "main", "zero-shot scores and attention overlays for image files, from an export"),
    "sweep": ("cmgl_dist.evaluate.sweep", "main", "fan evaluation jobs out over Ray"),
    "main": ("cmgl_dist.pipeline", "main", "the whole job: pack, train, sweep, report"),
    "bench": ("cmgl_dist.bench", "main",
              "step|zero|scaling|gpu: profile a step, compare ZeRO stages, model scaling, the GPU check"),
}


def usage() -> str:
    lines = ["usage: cmgl <command> [args]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())  # asked for: stdout
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"cmgl: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
