"""`loss.local_negatives` on two gloo ranks: a cap >= every gathered text gives the uncapped loss
and gradients; a cap of one micro batch gives each rank's loss on its own batch alone (the mean
over ranks); in between, the loss lies strictly between and gradients flow, finite."""
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import random_model_outputs

from cmgl_dist.config import ConfigError, LossConfig, load_config
from cmgl_dist.losses import CMGLLoss

WORLD_SIZE, PER_RANK, DIM, N_REGIONS, WORDS = 2, 3, 6, 5, 4
CFG = LossConfig(local_weight=1.0, global_weight=0.0, local_backend="reference")
INPUTS = ("regions", "words")


def _local(batch, **update):
    batch = {k: v.clone().requires_grad_() if k in INPUTS else v for k, v in batch.items()}
    loss = CMGLLoss(CFG.model_copy(update=update))(batch)["loss_local"]
    loss.backward()
    return loss.detach(), [batch[k].grad for k in INPUTS]


def _rank_main(rank, port, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        batch = random_model_outputs(PER_RANK, WORDS, N_REGIONS, DIM, seed=200 + rank)
        results = {cap: _local(batch, local_negatives=cap) for cap in (None, 6, 50, 3, 4)}
        results["alone"] = _local(batch, gather_negatives=False)
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("negatives")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_main, args=(port, str(out)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD_SIZE)]


@pytest.mark.parametrize("cap", [6, 50])
def test_a_cap_covering_every_text_is_the_full_loss(ranks, cap):
    for rank in ranks:
        full_loss, full_grads = rank[None]
        loss, grads = rank[cap]
        torch.testing.assert_close(loss, full_loss)
        for got, want in zip(grads, full_grads):
            torch.testing.assert_close(got, want)


def test_a_cap_of_one_micro_batch_is_each_rank_alone(ranks):
    for rank in ranks:
        torch.testing.assert_close(rank[3][0], rank["alone"][0])
        for got, want in zip(rank[3][1], rank["alone"][1]):
            torch.testing.assert_close(got, want)


def test_a_partial_cap_scores_some_negatives_and_gradients_flow(ranks):
    for rank in ranks:
        loss, grads = rank[4]
        assert rank["alone"][0] < loss < rank[None][0]  # more negatives, higher loss at random features
        assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_a_cap_below_the_micro_batch_is_refused():
    with pytest.raises(ConfigError, match="loss.local_negatives"):
        load_config("debug", ["loss.local_negatives=4"])
