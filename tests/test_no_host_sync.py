"""A training micro step never waits on the device: two gloo ranks run real micro steps (the debug
model in a DeepSpeed engine, CMGLLoss's ring local loss across ranks with different word counts,
forward and backward, the NaN guard's all-reduce) under a dispatch mode that fails on every op
that reads a device value on the host (on a GPU each waits for the queue to drain). On the CPU
every tensor is already on the host, so the mode flags the ops themselves; only `host_values`
(host tensors by contract) may read. The ranks run with the GPU's branches forced on
(CMGL_DEVICE_PATHS=1: word checks read device masks, channels-last images) and with `auto`
choosing between two backends, as on CUDA; the choice is made once, in a first micro step
outside the mode (as cuDNN's benchmark mode times its first call). The guard still keeps a
non-finite micro batch out of the weights."""
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode
from helpers import free_port

from cmgl_dist.config import load_config
from cmgl_dist.host_reads import host_reads_allowed

aten = torch.ops.aten
WORLD_SIZE = 2
# Ops whose result the host must wait for: a scalar read, data-dependent output shapes.
SYNCING = {aten._local_scalar_dense.default, aten.nonzero.default, aten.is_nonzero.default,
           aten.equal.default, aten.masked_select.default, aten.unique_consecutive.default,
           aten._unique2.default, aten.repeat_interleave.Tensor}
# Tensor methods that copy to the host without a dispatched op on a CPU tensor.
HOST_COPIES = ("tolist", "numpy", "cpu", "item", "__bool__", "__int__", "__float__", "__index__")
TEXTS = (["Mild cardiomegaly.", "Left basilar atelectasis.", "No acute disease."],
         ["No pleural effusion or pneumothorax. Heart size is normal and the lungs are clear.",
          "Stable chest.", "Small right effusion."])


class NoHostSync(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SYNCING and not host_reads_allowed():
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


def _forbid_host_copies(monkeypatch_list, reads):
    for name in HOST_COPIES:
        original = getattr(torch.Tensor, name)

        def guarded(self, *args, _original=original, _name=name, **kwargs):
            if not host_reads_allowed():
                reads.append(f"Tensor.{_name} at " + "".join(traceback.format_stack(limit=4)[:-1]))
            return _original(self, *args, **kwargs)

        monkeypatch_list.append((name, original))
        setattr(torch.Tensor, name, guarded)


def _batch(tokenizer, rank, nan_images=False):
    from cmgl_dist.data.text import tokenize_texts

    texts = TEXTS[rank]
    images = torch.randn(len(texts), 3, 64, 64, generator=torch.Generator().manual_seed(rank))
    if nan_images:
        images[0] = float("nan")
    return {"images": images, **tokenize_texts(tokenizer, texts, 32), "keys": [f"r{rank}-{i}" for i in range(3)],
            "texts": list(texts), "skipped": 0}


def _rank_main(rank, port, run_dir, out):
    import os

    from cmgl_dist.host_reads import DEVICE_PATHS_ENV

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE),
                      LOCAL_WORLD_SIZE=str(WORLD_SIZE), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ[DEVICE_PATHS_ENV] = "1"
    torch.set_num_threads(1)
    from cmgl_dist.engine.build import build_trainer
    from cmgl_dist.engine.checkpoint import Checkpointer
    from cmgl_dist.engine.distributed import init_distributed
    from cmgl_dist.data.device import to_device
    from cmgl_dist.host_reads import check_texts_have_words

    cfg = load_config("debug", [f"train.run_dir={run_dir}", "train.micro_batch=3", "train.grad_accum=3",
                                "train.tensorboard=false", "loss.local_exchange=ring",
                                'loss.auto_candidates=["compiled", "reference"]'])
    world = init_distributed()
    built = build_trainer(cfg, world, run_dir, Checkpointer(run_dir / "ckpt", 1, rank))
    model, engine, trainer, telemetry = built.model, built.engine, built.trainer, built.telemetry
    reads, patched = [], []
    try:
        warm_up = _batch(model.tokenizer, rank)  # agrees the backend table: timing reads, once per run
        trainer.micro_step(to_device(warm_up, world.device), warm_up["skipped"])
        for nan in (False, True):  # one optimizer step: a finite micro batch, then a non-finite one
            batch = _batch(model.tokenizer, rank, nan_images=nan and rank == 1)
            check_texts_have_words(batch["word_mask"], batch["keys"], on_host=True)  # collate side: host data
            mode = NoHostSync()
            _forbid_host_copies(patched, reads)
            try:
                with mode:
                    trainer.micro_step(to_device(batch, world.device), batch["skipped"])
            finally:
                for name, original in patched:
                    setattr(torch.Tensor, name, original)
                patched.clear()
            reads += mode.reads
        engine.step()
        finite = all(torch.isfinite(p).all() for p in model.parameters())
        torch.save({"reads": reads, "taken": trainer.guard.take(), "finite": finite}, out / f"rank{rank}.pt")
    finally:
        telemetry.close()
        dist.destroy_process_group()



def test_micro_steps_read_nothing_on_the_host(tmp_path):
    mp.spawn(_rank_main, args=(free_port(), tmp_path / "run", tmp_path), nprocs=WORLD_SIZE, join=True)
    for rank in range(WORLD_SIZE):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result["reads"] == [], f"rank {rank} read device values in a micro step: {result['reads']}"
        assert result["taken"] == (1, 1), "the non-finite micro batch was dropped on every rank, and counted"
        assert result["finite"], "nothing of the non-finite micro batch reached the weights"


def test_the_text_cache_keys_rows_from_the_host_batch():
    """A locked text encoder's cache (the main job's) keys rows by token ids: read from the host
    copy that `to_device` keeps, not from the device."""
    from cmgl_dist.config import ModelConfig
    from cmgl_dist.data.device import to_device
    from cmgl_dist.model import build_model

    model = build_model(ModelConfig(image_encoder="tiny_cnn", image_pretrained=False, text_encoder="tiny",
                                    embed_dim=16, freeze_text_layers=4, text_cache_mb=16))
    batch = to_device(_batch(model.tokenizer, 0), torch.device("cpu"))
    reads, patched = [], []
    for _ in range(2):  # misses, then hits
        mode = NoHostSync()
        _forbid_host_copies(patched, reads)
        try:
            with mode:
                model.encode_text(batch)
        finally:
            for name, original in patched:
                setattr(torch.Tensor, name, original)
            patched.clear()
        reads += mode.reads
    assert reads == [] and model.text_backbone.cache.hits == 3
