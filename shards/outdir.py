"""`cmgl pack --out DIR` safety: write only into an empty folder or the packer's own, and remove
only files the packer wrote.

A pack claims its folder with `DIR/.cmgl-pack.json` (its inputs, see provenance.py) before it
writes anything else. A folder with other files and no claim is refused; so is a rerun whose
inputs differ from the claim, unless `replace`. Cleaning removes only names the packer makes:
its temp files, and shards from an earlier plan that its own `.progress` records vouch for.
"""
from __future__ import annotations

import functools
import logging
import re
import shutil
from pathlib import Path

from cmgl_dist.locks import LOCK_FILE, folder_lock
from cmgl_dist.shards.provenance import differences
from cmgl_dist.shards.shard_jobs import PROGRESS_DIR
from cmgl_dist.shards.schema import MANIFEST, SHARD_FILE
from cmgl_dist.shards.writer import write_json_atomic
from cmgl_dist.untrusted import json_loads

log = logging.getLogger("cmgl.pack")

CLAIM = ".cmgl-pack.json"
STAGED_IMAGES = ".images"
_OWN_NAMES = {CLAIM, PROGRESS_DIR, STAGED_IMAGES, MANIFEST, LOCK_FILE}
_SHARD = r"(?:train|val|test)-\d{6}\.tar"
# Temp names of an interrupted writer: `.NAME.unrenamed` (a shard before its rename) and
# `.NAME.<pid>.tmp` (cmgl_dist.atomic), for a shard, the manifest, the claim or a progress record;
# the shard writer's own temp of `.NAME.unrenamed` is `..NAME.unrenamed.<pid>.tmp`.
_OWN_TEMP = re.compile(rf"^\.(?:\.?{_SHARD}(?:\.unrenamed)?|{_SHARD}\.json|manifest\.json|\.cmgl-pack\.json)"
                       rf"(?:\.\d+\.tmp)?$")


class OutRefused(RuntimeError):
    """--out holds something the pack must not touch, or a pack made from other inputs."""


def one_writer(pack_function):
    """Run `pack_function(..., out=DIR, ...)` holding DIR's writer lock (cmgl_dist.locks) throughout:
    a second pack into DIR is refused (FolderBusy, naming the holder) instead of mixing two packs."""
    @functools.wraps(pack_function)
    def locked(*args, out, **kwargs):
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise OutRefused(f"--out {out} is a file, not a folder")
        with folder_lock(out, "cmgl pack"):
            return pack_function(*args, out=out, **kwargs)
    return locked


def _is_own_temp(name: str) -> bool:
    return bool(_OWN_TEMP.match(name)) and (name.endswith(".tmp") or name.endswith(".unrenamed"))


def _cmgl_manifest(out: Path) -> bool:
    try:
        manifest = json_loads((out / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and "format" in manifest and "shards" in manifest


def _foreign_entries(out: Path) -> list[str]:
    """Entries of `out` whose names the packer never makes (a manifest.json only if not a pack's)."""
    names = sorted(p.name for p in out.iterdir())
    foreign = [n for n in names if n not in _OWN_NAMES and not SHARD_FILE.match(n) and not _is_own_temp(n)]
    return foreign + ([MANIFEST] if MANIFEST in names and not _cmgl_manifest(out) else [])


def claim(out: Path, inputs: dict, replace: bool) -> None:
    """Make `out` this pack's folder, or raise OutRefused saying why not and what to do.

    A claimed folder may hold other files too: they are left alone. An unclaimed one (empty, or
    a pack from before the claim file) must hold nothing but names the packer makes.
    """
    if out.exists() and not out.is_dir():
        raise OutRefused(f"--out {out} is a file, not a folder")
    if (out / CLAIM).is_file() and _holds_pack_output(out):
        _check_same_inputs(out, inputs, replace)
    elif out.is_dir() and (foreign := _foreign_entries(out)):
        raise OutRefused(f"--out {out} is not empty and not a cmgl pack (it holds {', '.join(foreign[:5])}"
                         f"{' ...' if len(foreign) > 5 else ''}); give an empty or new folder")
    _refuse_foreign_shards(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / CLAIM, inputs)


def _holds_pack_output(out: Path) -> bool:
    """A manifest or a shard: work a rerun with other inputs would replace (a claim alone is not)."""
    return any(p.name == MANIFEST or SHARD_FILE.match(p.name) for p in out.iterdir())


def _check_same_inputs(out: Path, inputs: dict, replace: bool) -> None:
    try:
        recorded = json_loads((out / CLAIM).read_bytes())
    except (OSError, ValueError):
        recorded = {}
    changed = differences(recorded, inputs) if isinstance(recorded, dict) else ["unreadable claim"]
    if changed and not replace:
        raise OutRefused(f"--out {out} holds a pack made from other inputs: {'; '.join(changed)}. Pack into "
                         "another --out, or pass --replace to rewrite this pack (cmgl main: --repack)")
    if changed:
        log.warning("replacing the pack in %s: %s", out, "; ".join(changed))
        shutil.rmtree(out / STAGED_IMAGES, ignore_errors=True)  # staged from the old inputs


def _refuse_foreign_shards(out: Path) -> None:
    """A shard-named file without the packer's progress record was not written by this pack."""
    if not out.is_dir():
        return
    foreign = [p.name for p in sorted(out.iterdir())
               if SHARD_FILE.match(p.name) and not (out / PROGRESS_DIR / f"{p.name}.json").is_file()]
    if foreign:
        raise OutRefused(f"--out {out} holds {', '.join(foreign[:5])}, which this pack did not write (no "
                         f"{PROGRESS_DIR} record); move them away or give another --out")


def remove_stale(out: Path, planned: set[str]) -> None:
    """Temp files of an interrupted run, and own shards (with progress records) a different plan left."""
    progress = out / PROGRESS_DIR
    for path in sorted(out.iterdir()):
        stale_shard = SHARD_FILE.match(path.name) and path.name not in planned
        if path.is_file() and (stale_shard or _is_own_temp(path.name)):
            _remove(out, path)
    for path in sorted(progress.iterdir()) if progress.is_dir() else []:
        record = path.name.removesuffix(".json")
        stale_record = SHARD_FILE.match(record) and record not in planned and path.name.endswith(".json")
        if path.is_file() and (stale_record or _is_own_temp(path.name)):
            _remove(out, path)


def _remove(out: Path, path: Path) -> None:
    log.info("removing stale %s", path.relative_to(out))
    path.unlink()
