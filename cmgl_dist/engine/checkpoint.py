"""Atomic, resumable checkpoints: DeepSpeed's state plus ours (step, data position, RNG, config).

Layout under `<run_dir>/checkpoints/`:

    step_00000010/        DeepSpeed's files (model, optimizer partitions, lr scheduler)
        client.json       TrainState, the resolved config and the data fingerprint (rank 0)
        rank_00001.json   that rank's RNG states
        universal.*       the same model and optimizer state, consolidated per parameter (rank 0):
                          what a resume on another world size loads (cmgl_dist/engine/universal.py)
        COMPLETE          written last, after every rank finished: the world size and the
                          sha256 of every other file in the folder
    latest                the name of the newest complete checkpoint

DeepSpeed's own `latest` file is disabled (save_latest=False): ours is replaced atomically
(temp + os.replace) only after a barrier and the COMPLETE marker, so a save killed half-way
leaves `latest` on the previous checkpoint. A resume checks every file against COMPLETE's
checksums; a checkpoint that fails (a file changed, truncated or missing) is passed over, with a
warning, for the newest older one that passes. Client state is JSON, never pickled.

A resume on the world size that wrote the checkpoint loads DeepSpeed's files; on another world
size it loads the consolidated copy (universal.*), resharded exactly, and continues the data at
the same global position (`TrainState.data_samples`: the global order of cmgl_dist/data/order.py
makes that position mean the same samples at any world size). Ranks that did not exist when it
was written start their RNG from (seed, rank, step) instead of a saved state.

`data_fingerprint` (client.json `data`) is the content fingerprint of the packs the run trains on
(`shards_fingerprint` of each source, see cmgl_dist.data.shardlist): a resume compares it with the
packs' fingerprint now and refuses when they differ (`cmgl train` preflight), so a run never
continues, or exports unchanged, a model of data that has since been repacked or replaced.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import os
import random
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from cmgl_dist.atomic import write_text_atomic
from cmgl_dist.engine.schedule import apply_current_schedule
from cmgl_dist.engine.universal import load_consolidated, save_consolidated

log = logging.getLogger(__name__)

LATEST = "latest"
COMPLETE = "COMPLETE"
_TAG = re.compile(r"^step_(\d{8})$")
_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


@dataclasses.dataclass
class TrainState:
    """Where the run stands after `step` optimizer steps."""
    step: int = 0
    samples_seen: int = 0
    data_epoch: int = 0
    data_batch: int = 0           # batches of `data_epoch` each rank has consumed
    data_samples: Optional[int] = None  # samples of `data_epoch` consumed over all ranks (None: not recorded)
    nonfinite_skipped: int = 0    # micro batches dropped for a non-finite loss
    samples_skipped: int = 0      # samples the loader dropped (unreadable), summed over ranks


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def complete_tags(root: Path) -> list[str]:
    """Tag folders under `root` holding a COMPLETE marker, oldest first (checksums not yet checked)."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if _TAG.match(p.name) and (p / COMPLETE).is_file())


def file_checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` but the COMPLETE marker, by relative path."""
    sums = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != COMPLETE):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        sums[str(path.relative_to(folder))] = digest.hexdigest()
    return sums


def read_complete(folder: Path) -> dict:
    """COMPLETE as {"world_size", "files"}; a marker from before checksums holds the world size only.
    ValueError for a marker that is neither (unreadable bytes, other JSON)."""
    text = (folder / COMPLETE).read_bytes().decode("utf-8")
    if text.strip().isdigit():
        return {"world_size": int(text), "files": None}
    marker = json.loads(text)
    if not (isinstance(marker, dict) and isinstance(marker.get("world_size"), int)
            and isinstance(marker.get("files"), dict)):
        raise ValueError(f"{folder / COMPLETE} is not a checkpoint marker (world_size and files)")
    return marker


def checkpoint_problem(folder: Path) -> Optional[str]:
    """Why `folder` cannot be resumed from (missing marker, a file whose checksum differs), or None."""
    if not (folder / COMPLETE).is_file():
        return f"no {COMPLETE} marker"
    try:
        expected = read_complete(folder)["files"]
    except (ValueError, OSError) as err:
        return f"unreadable {COMPLETE} marker ({err})"
    if expected is None:
        return None  # written before checksums existed: nothing to check against
    actual = file_checksums(folder)
    bad = sorted(name for name in expected.keys() | actual.keys() if expected.get(name) != actual.get(name))
    return f"{len(bad)} file(s) differ from their checksum: {', '.join(bad[:3])}" if bad else None


def newest_resumable(root: Path) -> Optional[str]:
    """The newest complete checkpoint under `root` that passes its checksums; None when there is none.

    `latest` is a pointer for people and tools, not the authority: when it is missing, unreadable or
    names an older or incomplete checkpoint (a save killed between its COMPLETE and its `latest`),
    the newest complete checkpoint still wins, so a resume never goes back to step 0 or behind one.
    """
    tags = complete_tags(root)
    if not tags:
        return None
    try:
        pointer = (root / LATEST).read_text().strip()
    except (OSError, ValueError):
        pointer = None
    if pointer != tags[-1]:
        log.warning("%s names %r, but %s is the newest complete checkpoint: resuming from it", root / LATEST,
                    pointer, tags[-1])
    return newest_sound(root, tags[-1])


def newest_sound(root: Path, first: str) -> str:
    """`first` if it passes its checksums, else the newest older complete checkpoint that does."""
    candidates = [t for t in reversed(complete_tags(root)) if t <= first]
    for tag in candidates:
        problem = checkpoint_problem(root / tag)
        if problem is None:
            if tag != first:
                log.warning("resuming from %s instead of the newer, damaged %s", root / tag, root / first)
            return tag
        log.warning("checkpoint %s is damaged (%s); trying the one before", root / tag, problem)
    raise RuntimeError(f"no checkpoint in {root} up to {first} passes its checksums: start a fresh run "
                       "(another train.run_dir, or remove the checkpoints folder)")


def data_fingerprint(data_cfg) -> str:
    """One fingerprint of every pack a run trains on (data.sources with their weights, or data.shards)."""
    from cmgl_dist.data.shardlist import shards_fingerprint, source_folders

    folders = source_folders(data_cfg)
    if len(folders) == 1:
        return shards_fingerprint(folders[0][0])  # the key evaluation records for the same pack
    parts = [f"{shards_fingerprint(shards)} {weight!r}" for shards, weight in folders]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def saved_data_fingerprint(folder: Path) -> Optional[str]:
    """The data fingerprint a checkpoint was trained on; None for one written before it was recorded."""
    return read_client(folder).get("data")


def read_client(folder: Path) -> dict:
    client = json.loads((folder / "client.json").read_text())
    if not isinstance(client, dict):
        raise ValueError(f"{folder / 'client.json'} is not a JSON object")
    return client


class Checkpointer:
    def __init__(self, root: str | os.PathLike, keep_last: int, rank: int, data: Optional[str] = None):
        self.root = Path(root)
        self.keep_last = keep_last
        self.rank = rank
        self.data = data  # data_fingerprint of the packs being trained on, recorded in every save

    # -- discovery --------------------------------------------------------------------------
    def complete_tags(self) -> list[str]:
        return complete_tags(self.root)

    def remove_partial(self) -> None:
        """Rank 0 at start-up: drop tag folders a killed save left without COMPLETE."""
        if self.rank != 0 or not self.root.is_dir():
            return
        for path in self.root.iterdir():
            if _TAG.match(path.name) and not (path / COMPLETE).is_file():
                shutil.rmtree(path)

    # -- save ---------------------------------------------------------------------------------
    def save(self, engine, state: TrainState, resolved_config: dict) -> str:
        tag = tag_for(state.step)
        folder = self.root / tag
        if self.rank == 0 and folder.exists():
            shutil.rmtree(folder)  # a damaged checkpoint passed over at resume, now saved again
        self.root.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        engine.save_checkpoint(str(self.root), tag=tag, save_latest=False)
        save_consolidated(engine, folder)
        write_text_atomic(folder / f"rank_{self.rank:05d}.json", json.dumps(capture_rng()))
        if self.rank == 0:
            client = {"state": dataclasses.asdict(state), "config": resolved_config, "data": self.data}
            write_text_atomic(folder / "client.json", json.dumps(client, indent=1))
        dist.barrier()
        if self.rank == 0:
            marker = {"world_size": dist.get_world_size(), "files": file_checksums(folder)}
            write_text_atomic(folder / COMPLETE, json.dumps(marker, indent=1))
            write_text_atomic(self.root / LATEST, tag + "\n")
            self._prune(keep=tag)
        dist.barrier()
        return tag

    def _prune(self, keep: str) -> None:
        tags = self.complete_tags()
        for tag in tags[:-self.keep_last]:
            if tag != keep:
                shutil.rmtree(self.root / tag)

    # -- load ---------------------------------------------------------------------------------
    def load(self, engine, tag: str) -> TrainState:
        folder = self.root / tag
        if not (folder / COMPLETE).is_file():
            raise RuntimeError(f"{folder} is not a complete checkpoint (no {COMPLETE} marker)")
        saved_world = read_complete(folder)["world_size"]
        if saved_world == dist.get_world_size():
            with weights_only_loads():
                load_path, _ = engine.load_checkpoint(str(self.root), tag=tag, load_optimizer_states=True,
                                                      load_lr_scheduler_states=True, custom_load_fn=load_module_state)
            if load_path is None:
                raise RuntimeError(f"DeepSpeed could not load {folder}")
        elif resharding_problem(folder) is None:
            load_consolidated(engine, folder)
            log.info("%s was written by %d ranks: its consolidated state was resharded onto %d", folder, saved_world,
                     dist.get_world_size())
        else:
            raise RuntimeError(f"{folder} was written by {saved_world} ranks, this run has {dist.get_world_size()}: "
                               f"{resharding_problem(folder)}")
        if engine.lr_scheduler is not None:
            apply_current_schedule(engine.lr_scheduler)  # this run's train.steps from the first step on
        client = json.loads((folder / "client.json").read_text())
        rng = folder / f"rank_{self.rank:05d}.json"
        state = TrainState(**client["state"])
        if rng.is_file():
            restore_rng(json.loads(rng.read_text()))
        else:  # a rank the saving run did not have
            seed_all(client["config"]["train"]["seed"] + self.rank + state.step)
        return state


def resharding_problem(folder: Path) -> Optional[str]:
    """Why `folder` cannot be loaded on another world size, or None."""
    from cmgl_dist.engine.universal import META, TENSORS

    if not (folder / TENSORS).is_file() or not (folder / META).is_file():
        return (f"it holds no consolidated state ({TENSORS}: written since resuming on another world size "
                "became possible), so it resumes only on the world size that wrote it")
    return None


# Module entries a checkpoint may lack: the text encoder's unused, frozen pooler, which the model
# keeps (for AutoModel-loadable exports) since after checkpoints of earlier runs were written.
OPTIONAL_MODULE_KEYS = (".pooler.",)


def load_module_state(src: dict, dst: torch.nn.Module) -> None:
    """DeepSpeed's module load, strict except for OPTIONAL_MODULE_KEYS (they keep their built value)."""
    missing, unexpected = dst.load_state_dict(src, strict=False)
    missing = [k for k in missing if not any(part in k for part in OPTIONAL_MODULE_KEYS)]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


@contextmanager
def weights_only_loads():
    """Make DeepSpeed's checkpoint reads use torch's safe (weights_only) unpickler.

    DeepSpeed calls torch.load(weights_only=False); torch's TORCH_FORCE_WEIGHTS_ONLY_LOAD switch
    overrides that per call, and only the few DeepSpeed types its ZeRO files hold are allowed, so a
    tampered checkpoint cannot run code. An unexpected type fails the load and names the type.
    """
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    previous = os.environ.get(_FORCE_WEIGHTS_ONLY)
    os.environ[_FORCE_WEIGHTS_ONLY] = "1"
    try:
        with torch.serialization.safe_globals([LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]):
            yield
    finally:
        if previous is None:
            del os.environ[_FORCE_WEIGHTS_ONLY]
        else:
            os.environ[_FORCE_WEIGHTS_ONLY] = previous


def resolve_resume(resume: Optional[str], run_checkpoints: Path) -> Optional[tuple[Path, str]]:
    """--resume value -> (checkpoints root, tag), or None for a fresh start.

    'auto': the run dir's newest complete checkpoint that passes its checksums (else the newest
    older one that does), if any (`newest_resumable`). A path: a checkpoints folder (the same) or
    one tag folder in it, which must pass its checksums.
    """
    if resume in (None, "", "none"):
        return None
    if resume == "auto":
        tag = newest_resumable(run_checkpoints)
        return (run_checkpoints, tag) if tag else None
    path = Path(resume)
    if (path / COMPLETE).is_file() and _TAG.match(path.name):
        problem = checkpoint_problem(path)
        if problem is not None:
            raise RuntimeError(f"--resume {resume}: damaged checkpoint ({problem}); name an older one "
                               "or its checkpoints folder")
        return path.parent, path.name
    if (tag := newest_resumable(path)) is not None:
        return path, tag
    raise FileNotFoundError(f"--resume {resume}: neither a checkpoints folder with a complete checkpoint nor a "
                            f"complete step_NNNNNNNN folder; use --resume auto to continue the run in train.run_dir")


# -- RNG state as JSON ------------------------------------------------------------------------
def _bytes(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode()


def _tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "torch": _bytes(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_bytes(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_tensor(s) for s in state["cuda"]])
