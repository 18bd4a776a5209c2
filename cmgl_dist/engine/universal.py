"""A world-size-free copy of the training state, written beside DeepSpeed's own files at every save.

DeepSpeed's ZeRO files hold each rank's partition of the fp32 master weights and of the Adam
moments, laid out for that world size. This is the same state consolidated per parameter, in the
spirit of DeepSpeed's universal checkpoint but written at save time (no conversion step, no extra
process pool): a resume on another number of ranks loads it into the freshly partitioned engine
through DeepSpeed's own per-parameter accessors (`safe_set_full_fp32_param`,
`safe_set_full_optimizer_state`), which cut each full tensor at the new partition bounds. Every
value is copied, never recomputed, so the resharded state equals the saved one bit for bit.

    universal.safetensors   module/<name>: the module's state in fp32 (trainable parameters are the
                            fp32 masters); exp_avg/<name>, exp_avg_sq/<name>: Adam's moments
    universal.json          Adam's step count, the lr scheduler's state, DeepSpeed's counters

Collective: every rank calls `save_consolidated` and `load_consolidated`; rank 0 writes. Written for
ZeRO stages 1 to 3 with AdamW (the optimizers whose state is the two moments and a step count).
"""
from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

from cmgl_dist.atomic import write_text_atomic

TENSORS = "universal.safetensors"
META = "universal.json"
MOMENTS = ("exp_avg", "exp_avg_sq")


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


def trainable(engine) -> list[tuple[str, torch.nn.Parameter]]:
    return [(name, p) for name, p in engine.module.named_parameters() if p.requires_grad]


def inner_optimizer(engine) -> torch.optim.Optimizer:
    """The torch optimizer stepping the fp32 partitions (under DeepSpeed's ZeRO wrapper)."""
    return getattr(engine.optimizer, "optimizer", engine.optimizer)


def optimizer_step(engine) -> int:
    steps = {int(state["step"]) for state in inner_optimizer(engine).state.values() if "step" in state}
    if len(steps) > 1:
        raise RuntimeError(f"the optimizer's partitions disagree on their step count: {sorted(steps)}")
    return steps.pop() if steps else 0


def consolidated_tensors(engine) -> dict[str, torch.Tensor]:
    """The module (fp32 masters for trainable parameters) and Adam's moments, each full size, on CPU."""
    from deepspeed.utils import safe_get_full_optimizer_state


    tensors = {f"module/{name}": value for name, value in full_fp32_state_dict(engine.module).items()}
    for name, param in trainable(engine):
        for key in MOMENTS:
            full = safe_get_full_optimizer_state(param, key)
            if full is None:
                raise RuntimeError(f"no {key} for {name}: the consolidated state needs ZeRO stage 1-3 and AdamW")
            tensors[f"{key}/{name}"] = full.float().cpu().contiguous()
    return tensors


def save_consolidated(engine, folder: Path) -> None:
    from safetensors.torch import save_file

    tensors = consolidated_tensors(engine)
    meta = {"optimizer_step": optimizer_step(engine),
            "scheduler": engine.lr_scheduler.state_dict() if engine.lr_scheduler is not None else None,
            "global_steps": engine.global_steps, "global_samples": engine.global_samples,
            "skipped_steps": engine.skipped_steps}
    if dist.get_rank() == 0:
        tmp = folder / (TENSORS + ".tmp")
        save_file(tensors, str(tmp))
        tmp.replace(folder / TENSORS)
        write_text_atomic(folder / META, json.dumps(meta, indent=1))


def read_consolidated(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    return load_file(str(folder / TENSORS)), json.loads((folder / META).read_text())


def load_consolidated(engine, folder: Path) -> None:
    """Put the saved state into `engine`, partitioned for this world size."""
    from deepspeed import zero
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    tensors, meta = read_consolidated(folder)
    module = {name.removeprefix("module/"): t for name, t in tensors.items() if name.startswith("module/")}
    expected = set(engine.module.state_dict().keys())
    if expected - module.keys() or module.keys() - expected:
        raise RuntimeError(f"{folder / TENSORS} does not match the model: missing {sorted(expected - module.keys())[:5]}, "
                           f"unexpected {sorted(module.keys() - expected)[:5]}")
    with torch.no_grad():
        for name, param in engine.module.named_parameters():
            # ZeRO-3 holds a partition only: gather, let rank 0 write the whole, scatter it back
            gathered = zero.GatheredParameters([param], modifier_rank=0) if hasattr(param, "ds_id") else nullcontext()
            with gathered:
                param.data.copy_(module[name].to(param.dtype))
        for name, buffer in engine.module.named_buffers():
            if name in module:  # non-persistent buffers (position ids) are not state
                buffer.copy_(module[name].to(buffer.dtype))
    create_adam_state(engine, meta["optimizer_step"])
    for name, param in trainable(engine):
        safe_set_full_fp32_param(param, module[name].to(torch.float32))
        for key in MOMENTS:
            safe_set_full_optimizer_state(param, tensors[f"{key}/{name}"], key)
    if engine.lr_scheduler is not None and meta["scheduler"] is not None:
        engine.lr_scheduler.load_state_dict(meta["scheduler"])
    engine.global_steps, engine.global_samples = meta["global_steps"], meta["global_samples"]
    engine.skipped_steps = meta["skipped_steps"]


def create_adam_state(engine, step: int) -> None:
    """Adam's state for every fp32 partition, as torch's AdamW creates it at its first step (it is
    lazy: a fresh engine has none to write into), with the saved step count."""
    inner = inner_optimizer(engine)
    # ZeRO-3 hands its flat fp32 partitions to the optimizer only while it steps them
    flats = getattr(engine.optimizer, "fp32_partitioned_groups_flat", None) or \
        [flat for group in inner.param_groups for flat in group["params"]]
    for flat in flats:
        inner.state[flat] = {"step": torch.tensor(float(step), dtype=torch.float32),
                             **{key: torch.zeros_like(flat, memory_format=torch.preserve_format) for key in MOMENTS}}
    for group in inner.param_groups:
        if "step" in group:  # optimizers that count steps per group
            group["step"] = step
    link = getattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:  # ZeRO 1/2: point each parameter's fragment at the new state tensors
        engine.optimizer._hp_optimizer_states_linked = False
        link()
