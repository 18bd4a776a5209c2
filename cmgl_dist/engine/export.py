"""Export trained encoders in formats other code loads without cmgl's training stack.

`<run_dir>/export/`:
    config.yaml                the resolved config
    model.safetensors          the whole CMGLModel state dict (fp32)
    image_encoder.safetensors  the image backbone alone
    text_encoder/              the text transformer and its tokenizer (transformers' save_pretrained)
    export.json                every other file's sha256 and the tokenizer's vocabulary size

Only safetensors and transformers' own files are read back: nothing here unpickles. Files are 0644
and folders 0755 (exports are read by other users, e.g. Ray workers on a shared file system).

An export is checked before it is used (`check_export`, called by `load_exported`): every file
export.json lists must have its sha256, no other file may be there (a planted pickle such as
text_encoder/pytorch_model.bin is refused, never loaded), the weights must read as safetensors and
be finite, and the tokenizer built from text_encoder/ must have the vocabulary size recorded
(transformers builds a 5-token tokenizer, silently, when its files are missing: every word would
be [UNK]). Each refusal is an ExportError naming the file. Exports written before export.json get
the checks that need no record (pickles, readable and finite weights, a tokenizer as large as
its transformer's vocabulary).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cmgl_dist.atomic import write_text_atomic
from cmgl_dist.config import CMGLConfig, load_config, save_config
from cmgl_dist.engine.checkpoint import file_checksums
from cmgl_dist.model import CMGLModel, build_model
from cmgl_dist.untrusted import json_loads

log = logging.getLogger(__name__)
TEXT_DIR = "text_encoder"
RECORD = "export.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
RECORD_FORMAT = 1


class ExportError(ValueError):
    """An export that must not be used: the message names the file and what is wrong with it."""


def export_model(state: dict[str, torch.Tensor], cfg: CMGLConfig, export_dir: str | os.PathLike) -> Path:
    """Write `state` (a CMGLModel state dict) and its config to export_dir, replacing it atomically."""
    export_dir = Path(export_dir)
    staging = export_dir.with_name(f".{export_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    # Loading into a fresh model checks that the keys and shapes match before anything is written.
    model = build_model(cfg.model.model_copy(update={"image_pretrained": False}))
    model.load_state_dict(state, strict=True)
    save_config(cfg, staging / "config.yaml")
    # One metadata key: safetensors writes the metadata map in hash order, so two keys made the
    # bytes (and the export's fingerprint) differ between identical runs. The name is in config.yaml.
    save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
    image = {k: v.contiguous() for k, v in model.image_backbone.state_dict().items()}
    save_file(image, str(staging / "image_encoder.safetensors"), metadata={"format": "pt"})
    model.text_backbone.transformer.save_pretrained(str(staging / TEXT_DIR))
    model.tokenizer.save_pretrained(str(staging / TEXT_DIR))
    write_text_atomic(staging / RECORD, json.dumps({"format": RECORD_FORMAT, "files": file_checksums(staging),
                                                    "tokenizer_vocab_size": len(model.tokenizer)}, indent=1))
    share_readable(staging)

    old = export_dir.with_name(f".{export_dir.name}.old-{os.getpid()}")
    if export_dir.exists():
        os.replace(export_dir, old)
    os.replace(staging, export_dir)
    shutil.rmtree(old, ignore_errors=True)
    return export_dir


def share_readable(folder: Path) -> None:
    """Files 0644 and folders 0755 whatever the umask: exports are read by other users (Ray workers on
    a shared file system), and some writers create 0600 temp files."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def load_exported(export_dir: str | os.PathLike) -> tuple[CMGLModel, CMGLConfig]:
    """(model in eval mode, its config) from an export folder, checked first (`check_export`);
    offline (the text encoder comes from the export's own save_pretrained folder, never the hub)."""
    export_dir = Path(export_dir)
    record = check_export(export_dir)
    cfg = load_config(str(export_dir / "config.yaml"))
    local = cfg.model.model_copy(update={"image_pretrained": False, "text_encoder": str(export_dir / TEXT_DIR)})
    try:
        model = build_model(local)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds for damaged files
        raise ExportError(f"{export_dir / TEXT_DIR}: the text encoder does not load "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
    _check_tokenizer(export_dir, model, record)
    state = _finite_weights(export_dir / "model.safetensors")
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Exports from before the text pooler was kept lack it; it is never used, so they still load.
    missing = [k for k in missing if ".pooler." not in k]
    if missing or unexpected:
        raise RuntimeError(f"{export_dir}/model.safetensors does not match its config.yaml: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    return model.eval(), cfg


def check_export(export_dir: Path) -> dict | None:
    """export.json when every file matches it (None for an export written before it); ExportError
    naming the first file that is missing, altered, unlisted or a pickle."""
    if not (export_dir / "config.yaml").is_file():
        raise ExportError(f"{export_dir}: no config.yaml: is it an export dir written by `cmgl train`?")
    found = file_checksums(export_dir)
    found.pop(RECORD, None)
    pickles = sorted(name for name in found if name.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise ExportError(f"{export_dir / pickles[0]}: a pickle file in an export is refused (exports hold "
                          "safetensors only; loading a pickle can run code)")
    if not (export_dir / RECORD).is_file():
        log.warning("%s has no %s (written before exports recorded their files): its files' checksums "
                    "cannot be checked", export_dir, RECORD)
        return None
    try:
        record = json_loads((export_dir / RECORD).read_bytes())
        listed, vocab = record["files"], record["tokenizer_vocab_size"]
        if not (isinstance(listed, dict) and type(vocab) is int):
            raise TypeError("files or tokenizer_vocab_size of the wrong type")
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ExportError(f"{export_dir / RECORD}: not an export record ({e})") from None
    for name in sorted(listed.keys() | found.keys()):
        if name not in found:
            raise ExportError(f"{export_dir / name}: missing (export.json lists it)")
        if name not in listed:
            raise ExportError(f"{export_dir / name}: not written by the export (export.json does not list it)")
        if found[name] != listed[name]:
            raise ExportError(f"{export_dir / name}: sha256 differs from export.json (truncated or altered)")
    return record


def _check_tokenizer(export_dir: Path, model: CMGLModel, record: dict | None) -> None:
    """The tokenizer built from the export has the vocabulary it was exported with (without a
    record: at least its transformer's, which a degenerate 5-token tokenizer is far from)."""
    size = len(model.tokenizer)
    wanted = record["tokenizer_vocab_size"] if record else model.text_backbone.transformer.config.vocab_size
    if (size != wanted) if record else (size < wanted):
        raise ExportError(f"{export_dir / TEXT_DIR}: the tokenizer built from it has {size} tokens, "
                          f"{'export.json records' if record else 'its transformer has'} {wanted} "
                          "(its tokenizer files are missing or damaged)")


def _finite_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; ExportError naming the file when it does not read or
    holds a NaN or an infinity (a model that scores NaN must not score silently)."""
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise ExportError(f"{path}: missing") from None
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for damaged files
        raise ExportError(f"{path}: not a readable safetensors file ({str(e)[:200]})") from None
    bad = next((name for name, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is not None:
        raise ExportError(f"{path}: tensor {bad} holds NaN or infinite values")
    return state
