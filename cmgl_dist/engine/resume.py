"""What a resume may change, checked before the process group and the model exist.

A resume continues exactly: same data (the packs' fingerprint), same config but for the fields in
RESUME_APPLIES, and the same global batch. It may run on another world size when the run reads the
world-size-free global order (data.order, cmgl_dist/data/order.py) and the checkpoint holds its
consolidated state (cmgl_dist/engine/universal.py): then micro batch and accumulation may change
too, as long as micro_batch x grad_accum x world size stays the global batch (train.global_batch
derives grad_accum for the new world size).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from cmgl_dist.config import CMGLConfig, ConfigError, recorded
from cmgl_dist.engine.checkpoint import (data_fingerprint, read_complete, resharding_problem,
                                         saved_data_fingerprint)

log = logging.getLogger(__name__)

# Fields a resumed run may change: they are read afresh from the config at every use (the loop's
# cadence, the run's length and the schedule's shape follow train.steps, the export, evaluation).
# Any other change would be silently overridden by the checkpoint's state, or break exact resume.
# Fields match exactly; RESUME_APPLIES_SECTIONS are whole sections a resume may change.
RESUME_APPLIES = frozenset({"name", "train.steps", "train.log_every", "train.ckpt_every", "train.keep_last",
                            "train.max_nonfinite", "train.tensorboard", "train.export", "train.run_dir",
                            "train.dist_timeout_s"})
RESUME_APPLIES_SECTIONS = ("eval.",)
# Compared by what it resolved to, not literally (`resumed_order`).
RESOLVED_ELSEWHERE = frozenset({"data.order"})
# How the global batch is split may change when train.global_batch keeps it (checked in check_world_change).
BATCH_SPLIT = frozenset({"train.micro_batch", "train.grad_accum", "train.global_batch"})


def flat(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resume_applies(field: str) -> bool:
    """Whether a resumed run may change `field`, a flattened name such as `train.steps`."""
    return field in RESUME_APPLIES or field.startswith(RESUME_APPLIES_SECTIONS)


def saved_config(folder: Path) -> dict[str, object]:
    """The flattened config a checkpoint was written with; a field added to the schema since had its
    default then."""
    return {**flat(CMGLConfig().model_dump(mode="json")),
            **flat(json.loads((folder / "client.json").read_text())["config"])}


def saved_global_batch(folder: Path) -> int:
    saved = saved_config(folder)
    return int(saved["train.micro_batch"]) * int(saved["train.grad_accum"]) * read_complete(folder)["world_size"]


def check_resumable_config(source: tuple[Path, str], cfg: CMGLConfig) -> None:
    """Refuse a resume whose config changes a field the checkpoint's state would override (optimizer.lr:
    the restored scheduler keeps the old one) or that breaks exact resume; name each such field."""
    root, tag = source
    saved = saved_config(root / tag)
    now = flat(recorded(cfg))  # as client.json holds it: URL credentials redacted
    split_may_change = now["train.global_batch"] == saved_global_batch(root / tag)
    changed = sorted(k for k in saved.keys() | now.keys()
                     if saved.get(k) != now.get(k) and not resume_applies(k) and k not in RESOLVED_ELSEWHERE
                     and not (split_may_change and k in BATCH_SPLIT))
    if changed:
        listed = "; ".join(f"{k}: {saved.get(k)!r} in the checkpoint, {now.get(k)!r} now" for k in changed)
        raise ConfigError(f"--resume from {root / tag} with a config that changes {listed}. A resume can change "
                          f"only {', '.join(sorted(RESUME_APPLIES))}, {', '.join(s + '*' for s in RESUME_APPLIES_SECTIONS)} "
                          "(and train.micro_batch when train.global_batch keeps the checkpoint's global batch): set the changed fields back, or "
                          "start a new run in another train.run_dir")


def resumed_order(source: tuple[Path, str], asked: str, resolved: str) -> str:
    """The data order a resume continues in: the one its checkpoint was trained in. A run's config
    records the order it resolved (global or stream); a checkpoint whose config says `auto` (or
    nothing) predates the global order and was trained streaming. data.order=auto follows the
    checkpoint; an explicit other order is refused (the position would point into another order)."""
    folder = source[0] / source[1]
    saved = saved_config(folder)["data.order"]
    saved = "stream" if saved == "auto" else saved
    if saved == resolved:
        return resolved
    if asked == "auto" and saved == "stream":
        log.warning("%s was trained in the streaming data order: the run continues in it (it resumes only on "
                    "its own world size; a new run reads the global order)", folder)
        return saved
    raise ConfigError(f"--resume from {folder}: trained in the {saved} data order, data.order={asked} now resolves "
                      f"to {resolved}: set data.order={saved} (or auto), or start a new run in another train.run_dir")


def check_resume_matches(source: tuple[Path, str], cfg: CMGLConfig, world_size: int, global_order: bool) -> None:
    """Refuse a resume on other data (a pack repacked or replaced since the checkpoint: the run would
    continue, or export unchanged, a model of the old data, and evaluation would score it on the new),
    and one on another world size that cannot continue exactly."""
    folder = source[0] / source[1]
    saved_world = read_complete(folder)["world_size"]
    if saved_world != world_size:
        check_world_change(folder, cfg, saved_world, world_size, global_order)
    elif not global_order and saved_config(folder)["train.micro_batch"] != cfg.train.micro_batch:
        raise ConfigError(f"--resume from {folder}: the streaming data order (data.order=stream, or a remote pack) "
                          "counts its position in micro batches: keep train.micro_batch at "
                          f"{saved_config(folder)['train.micro_batch']}")
    saved, now = saved_data_fingerprint(folder), data_fingerprint(cfg.data)
    if saved is None:
        log.warning("%s does not record its data fingerprint (written before it was recorded); "
                    "resuming without checking that the data is unchanged", folder)
    elif saved != now:
        raise ConfigError(f"--resume from {folder}: the training data changed since that checkpoint (data fingerprint "
                          f"{saved} in the checkpoint, {now} now: the pack was repacked or replaced). Start a new run in "
                          f"another train.run_dir (cmgl main: another --out, or move {cfg.train.run_dir} away), or "
                          "train on the pack the checkpoint was trained on")


def check_world_change(folder: Path, cfg: CMGLConfig, saved_world: int, world_size: int, global_order: bool) -> None:
    where = f"--resume from {folder}: written by {saved_world} ranks, this run has {world_size}"
    if not global_order:
        raise ConfigError(f"{where}; the streaming data order (data.order=stream, or a remote pack) depends on the "
                          f"world size: launch {saved_world} ranks, or start a new run in another train.run_dir")
    if cfg.zero.stage == 0:
        raise ConfigError(f"{where}; resharding needs zero.stage 1-3: launch {saved_world} ranks")
    problem = resharding_problem(folder)
    if problem is not None:
        raise ConfigError(f"{where}; {problem}: launch {saved_world} ranks, or start a new run in another "
                          "train.run_dir")
    saved_batch = saved_global_batch(folder)
    if cfg.train.samples_per_step(world_size) != saved_batch:
        raise ConfigError(f"{where}; the global batch would change from {saved_batch} to "
                          f"{cfg.train.samples_per_step(world_size)}: set train.global_batch={saved_batch} (and a "
                          f"train.micro_batch dividing {saved_batch // world_size})")
