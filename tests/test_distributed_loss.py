"""Two gloo ranks with gathered negatives == one process on the concatenated batch.

Each rank holds half of a global batch (with different word counts) and a copy of a shared
projection (standing in for model parameters). After backward, the projection's gradients are
averaged over ranks as DDP / DeepSpeed do; each rank's own inputs are leaves whose gradient the
gather's backward has already summed over ranks, so it is divided by the world size.
"""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import free_port, random_model_outputs

from cmgl_dist.config import LossConfig
from cmgl_dist.losses import CMGLLoss, global_contrastive_loss, local_contrastive_loss, local_similarity_reference

WORLD_SIZE, PER_RANK, DIM, N_REGIONS = 2, 3, 6, 5
WORDS_PER_RANK = (4, 7)
CFG = LossConfig(gamma1=4.0, gamma2=5.0, gamma3=10.0, global_temperature=0.1, local_weight=0.7,
                 global_weight=1.3, local_backend="reference", gather_negatives=True)
INPUTS = ("img_global", "regions", "sentence", "words")


def _rank_batch(rank):
    return random_model_outputs(PER_RANK, WORDS_PER_RANK[rank], N_REGIONS, DIM, seed=100 + rank)


def _projection():
    return (torch.eye(DIM, dtype=torch.float64)
            + 0.1 * torch.randn(DIM, DIM, generator=torch.Generator().manual_seed(7), dtype=torch.float64))


def _projected(batch, projection):
    return {key: value @ projection if key in INPUTS else value for key, value in batch.items()}


def _rank_main(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        batch = {key: value.requires_grad_() if key in INPUTS else value for key, value in _rank_batch(rank).items()}
        projection = _projection().requires_grad_()
        losses = CMGLLoss(CFG)(_projected(batch, projection))
        losses["loss"].backward()

        local_only = CMGLLoss(CFG.model_copy(update={"gather_negatives": False}))(_rank_batch(rank))
        short = _rank_batch(rank)
        if rank == 1:
            short = {key: value[1:] for key, value in short.items()}
        try:
            CMGLLoss(CFG)(short)
            unequal_batch_error = ""
        except ValueError as err:
            unequal_batch_error = str(err)

        torch.save({
            "losses": {key: value.detach() for key, value in losses.items()},
            "local_only_loss": local_only["loss"].detach(),
            "unequal_batch_error": unequal_batch_error,
            "input_grads": {key: batch[key].grad for key in INPUTS},
            "projection_grad": projection.grad,
        }, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _single_process():
    """Loss and gradients of one process on the concatenated batch, without CMGLLoss."""
    batches = [_rank_batch(rank) for rank in range(WORLD_SIZE)]
    n_words = max(WORDS_PER_RANK)
    for batch in batches:
        pad = n_words - batch["words"].shape[1]
        batch["words"] = F.pad(batch["words"], (0, 0, 0, pad))
        batch["word_mask"] = F.pad(batch["word_mask"], (0, pad), value=False)
    full = {key: torch.cat([b[key] for b in batches]) for key in batches[0]}
    for key in INPUTS:
        full[key].requires_grad_()
    projection = _projection().requires_grad_()
    out = _projected(full, projection)
    loss_global = global_contrastive_loss(out["img_global"], out["sentence"], CFG.global_temperature)
    similarity = local_similarity_reference(out["words"], out["word_mask"], out["regions"], CFG.gamma1, CFG.gamma2)
    loss_local = local_contrastive_loss(similarity, CFG.gamma3)
    loss = CFG.global_weight * loss_global + CFG.local_weight * loss_local
    loss.backward()
    losses = {"loss": loss, "loss_global": loss_global, "loss_local": loss_local}
    return losses, {key: full[key].grad for key in INPUTS}, projection.grad



def test_two_ranks_equal_one_process_on_the_global_batch(tmp_path):
    mp.spawn(_rank_main, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]
    losses, input_grads, projection_grad = _single_process()

    for key, expected in losses.items():
        mean_over_ranks = sum(r["losses"][key] for r in ranks) / WORLD_SIZE
        torch.testing.assert_close(mean_over_ranks, expected.detach(), rtol=1e-12, atol=0)
    assert not torch.allclose(ranks[0]["losses"]["loss"], ranks[1]["losses"]["loss"])

    for rank, result in enumerate(ranks):
        with_local_negatives = CMGLLoss(CFG)(_rank_batch(rank))["loss"]  # no process group here
        torch.testing.assert_close(result["local_only_loss"], with_local_negatives, rtol=1e-12, atol=0)
        assert "same batch size" in result["unequal_batch_error"]

    averaged = sum(r["projection_grad"] for r in ranks) / WORLD_SIZE
    torch.testing.assert_close(averaged, projection_grad, rtol=1e-10, atol=1e-14)
    for key in INPUTS:
        for rank, result in enumerate(ranks):
            rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
            expected = input_grads[key][rows]
            got = result["input_grads"][key] / WORLD_SIZE
            if key == "words":
                expected = expected[:, :WORDS_PER_RANK[rank]]
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-14)
