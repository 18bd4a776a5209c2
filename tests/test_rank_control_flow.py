"""Multi-rank control flow proven on CPU ranks, with the choices that differ on a GPU forced on.

PyTorch's collective checker (TORCH_DISTRIBUTED_DEBUG=DETAIL wraps every process group: before
each collective the ranks compare its op and shapes, and a mismatch fails on every rank instead
of hanging) runs real training steps on 3 gloo ranks across the configuration space: ring and
gather, no cap, a cap that is a multiple of the micro batch and one that is not, `auto` with two
candidates (`loss.auto_candidates`, as CUDA has several), ZeRO 1, 2 and 3, gradient
accumulation, a non-finite micro batch on one rank and ragged word counts. Each case finishes
with the same steps on every rank; a rank whose batch is short stops the job with one clear
error. Every spawn is bounded by the test's timeout.

The word counts 4, 5 and 20 put the ranks' texts in different word buckets (16, 16, 32): in the
ring, ranks score other ranks' blocks at the same moment, so a backend chosen lazily per bucket
(a broadcast entered by the ranks that lack that bucket's choice) deadlocked there. The choice is
now one table for every bucket, agreed before the first exchange (`backend_choice.agree_backends`).
"""
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port, random_model_outputs

from cmgl_dist.config import LossConfig, load_config
from cmgl_dist.losses import CMGLLoss, backend_choice

WORLD_SIZE = 3
WORDS = (4, 5, 20)
MAX_WORDS = 32  # two word buckets: 16 and 32
AUTO = {"local_backend": "auto", "auto_candidates": ["compiled", "reference"]}


def _init(rank: int, port: int, detail: bool) -> None:
    torch.set_num_threads(1)
    if detail:
        os.environ["TORCH_DISTRIBUTED_DEBUG"] = "DETAIL"
        dist.set_debug_level_from_env()
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE),
                      LOCAL_WORLD_SIZE=str(WORLD_SIZE), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def _loss_rank(rank, port, out, detail):
    """auto with two candidates, ring then gather, forward and backward; then the reference alone."""
    _init(rank, port, detail)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        backend_choice.use_record(out / backend_choice.RECORD_FILE)
        batch = random_model_outputs(2, WORDS[rank], 5, 8, seed=rank, dtype=torch.float32)
        results = {}
        for backend in ("auto", "reference"):
            for exchange in ("ring", "gather"):
                cfg = LossConfig(local_exchange=exchange, **(AUTO if backend == "auto" else {"local_backend": backend}))
                leaves = {k: v.clone().requires_grad_() if v.is_floating_point() else v for k, v in batch.items()}
                loss = CMGLLoss(cfg, max_words=MAX_WORDS)(leaves)["loss"]
                loss.backward()
                results[backend, exchange] = (loss.detach(), leaves["words"].grad)
        results["tables"] = {str(k): v for k, v in backend_choice._tables.items()}
        torch.save(results, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("detail", [False, True], ids=["plain", "DETAIL"])
def test_auto_with_two_candidates_finishes_on_every_rank_with_ragged_words(tmp_path, detail):
    mp.spawn(_loss_rank, args=(free_port(), tmp_path, detail), nprocs=WORLD_SIZE, join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]
    assert all(r["tables"] == results[0]["tables"] for r in results), "every rank runs the same table"
    for table in results[0]["tables"].values():
        assert sorted(table) == [16, 32] and set(table.values()) <= {"compiled", "reference"}
    for r in results:
        for exchange in ("ring", "gather"):
            (loss, grad), (ref_loss, ref_grad) = r["auto", exchange], r["reference", exchange]
            torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)
    record = json.loads((tmp_path / backend_choice.RECORD_FILE).read_text())["choices"]
    assert {" W=16 " in key for key in record} == {True, False}, "both buckets timed and recorded by rank 0"


# --- training steps: DeepSpeed engines, the NaN guard, accumulation -------------------------------------------

CASES = {  # name: (config overrides, grad_accum)
    "ring-uncapped-auto-zero1": ({"loss.local_exchange": "ring", "zero.stage": 1, **{f"loss.{k}": v for k, v in
                                                                                      AUTO.items()}}, 2),
    "gather-cap6-auto-zero2": ({"loss.local_exchange": "gather", "loss.local_negatives": 6, "zero.stage": 2,
                                **{f"loss.{k}": v for k, v in AUTO.items()}}, 2),
    "ring-auto-absent-zero1": ({"loss.local_exchange": "ring", "loss.denied_words": "absent", "zero.stage": 1,
                                **{f"loss.{k}": v for k, v in AUTO.items()}}, 2),
    "ring-cap4-zero3": ({"loss.local_exchange": "ring", "loss.local_negatives": 4, "zero.stage": 3,
                         "loss.local_backend": "reference"}, 2),
    "ring-cap6-zero2-noaccum": ({"loss.local_exchange": "ring", "loss.local_negatives": 6, "zero.stage": 2,
                                 "loss.local_backend": "reference"}, 1),
}
MICRO = 3
TEXTS = {4: "Mild cardiomegaly with clear lungs.", 5: "Left basilar atelectasis, no effusion seen.",
         20: "The heart is enlarged. There is a small left pleural effusion with adjacent basilar "
             "atelectasis. No pneumothorax is seen and the osseous structures are intact."}


def _batch(tokenizer, rank, n, nan=False, size=MICRO):
    from cmgl_dist.data.text import tokenize_texts

    texts = [TEXTS[WORDS[rank]]] * size
    images = torch.randn(size, 3, 64, 64, generator=torch.Generator().manual_seed(100 * rank + n))
    if nan:
        images[0] = float("nan")
    return {"images": images, **tokenize_texts(tokenizer, texts, MAX_WORDS),
            "keys": [f"r{rank}-{n}-{i}" for i in range(size)], "texts": texts, "skipped": 0}


def _trainer(cfg, world, run_dir):
    from cmgl_dist.engine.build import build_trainer
    from cmgl_dist.engine.checkpoint import Checkpointer

    return build_trainer(cfg, world, run_dir, Checkpointer(run_dir / "ckpt", 1, world.rank))


def _steps_rank(rank, port, out, cases, short_case):
    """Two optimizer steps per case (rank 1's second micro batch non-finite), results saved; then
    `short_case` again with rank 2's last micro batch one sample short."""
    _init(rank, port, detail=True)
    from cmgl_dist.engine.distributed import init_distributed

    world = init_distributed()
    try:
        results = {}
        for name, short_rank in [*((name, None) for name in cases), (short_case, 2)]:
            if short_rank is not None:
                torch.save(results, out / f"rank{rank}.pt")
            overrides, accum = CASES[name]
            run_dir = out / name / f"rank{rank}" / str(short_rank)
            run_dir.mkdir(parents=True, exist_ok=True)
            cfg = load_config("debug", [f"train.run_dir={run_dir}", f"train.micro_batch={MICRO}",
                                        f"train.grad_accum={accum}", "train.tensorboard=false",
                                        f"data.max_length={MAX_WORDS}", *(f"{k}={json.dumps(v)}" for k, v in
                                                                          overrides.items())])
            built = _trainer(cfg, world, run_dir)
            engine, trainer = built.engine, built.trainer
            batches = iter([(0, n + 1, _batch(built.model.tokenizer, rank, n, nan=(rank == 1 and n == 1),
                                              size=MICRO - (rank == short_rank and n == 2 * accum - 1)))
                            for n in range(2 * accum)])
            state = built.state
            try:
                for _ in range(2):
                    trainer.step(batches, state)
                taken = trainer.guard.take()
                finite = all(torch.isfinite(p).all() for p in engine.module.parameters())
                results[name] = {"step": state.step, "taken": taken, "finite": bool(finite)}
            finally:
                built.close()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_training_steps_across_the_configuration_space_under_the_collective_checker(tmp_path):
    """Every case finishes on every rank; then a short batch on one rank ends the job with one clear
    error (the ranks beside it raise it; the launcher ends the rest), not a hang."""
    with pytest.raises(mp.ProcessRaisedException, match="needs the same batch size"):
        mp.spawn(_steps_rank, args=(free_port(), tmp_path, list(CASES), "ring-cap6-zero2-noaccum"),
                 nprocs=WORLD_SIZE, join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]
    for name in CASES:
        for rank, result in enumerate(results):
            case = result[name]
            assert case["step"] == 2, (name, rank)
            assert case["taken"] == (1, 1), f"{name}: rank {rank} did not drop the non-finite micro batch with the rest"
            assert case["finite"], f"{name}: the non-finite micro batch reached rank {rank}'s weights"
