"""Export trained encoders in formats other code loads without cmgl's training stack.

`<run_dir>/export/`:
    config.yaml                the resolved config
    model.safetensors          the whole CMGLModel state dict (fp32)
    image_encoder.safetensors  the image backbone alone
    text_encoder/              the text transformer and its tokenizer (transformers' save_pretrained)

Only safetensors and transformers' own files are read back: nothing here unpickles. Files are 0644
and folders 0755 (exports are read by other users, e.g. Ray workers on a shared file system).
"""
from __future__ import annotations

import os
import shutil
from contextlib import nullcontext
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cmgl_dist.config import CMGLConfig, load_config, save_config
from cmgl_dist.model import CMGLModel, build_model

TEXT_DIR = "text_encoder"


def full_fp32_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's state dict in fp32 on CPU, whatever ZeRO stage and precision trained it.

    Collective under ZeRO: every rank must call it. Trainable parameters come from DeepSpeed's fp32
    master copy (exact even for bf16/fp16 runs); frozen ones from the module, gathered under ZeRO-3.
    """
    from deepspeed import zero
    from deepspeed.utils import safe_get_full_fp32_param

    keys = set(module.state_dict().keys())
    state = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        full = safe_get_full_fp32_param(param) if param.requires_grad else None
        if full is None:
            gathered = zero.GatheredParameters([param]) if hasattr(param, "ds_id") else nullcontext()
            with gathered:
                full = param.data.detach().clone()
        if name in keys:
            state[name] = full.float().cpu().contiguous()
    for name, buffer in module.named_buffers(remove_duplicate=False):
        if name in keys:
            state[name] = buffer.detach().cpu().clone().contiguous()
    missing = keys - state.keys()
    if missing:
        raise RuntimeError(f"export: no value for {sorted(missing)[:5]}")
    return state


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
    """(model in eval mode, its config) from an export folder; offline (the text encoder comes
    from the export's own save_pretrained folder, never from the hub)."""
    export_dir = Path(export_dir)
    cfg = load_config(str(export_dir / "config.yaml"))
    local = cfg.model.model_copy(update={"image_pretrained": False, "text_encoder": str(export_dir / TEXT_DIR)})
    model = build_model(local)
    state = load_file(str(export_dir / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Exports from before the text pooler was kept lack it; it is never used, so they still load.
    missing = [k for k in missing if ".pooler." not in k]
    if missing or unexpected:
        raise RuntimeError(f"{export_dir}/model.safetensors does not match its config.yaml: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    return model.eval(), cfg
