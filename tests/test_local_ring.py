"""The ring local loss == the all-gather one == one process on the concatenated batch, in float64.

2 and 4 gloo ranks (spawned once per world size), each with its own word count, with and without
`loss.local_negatives` (a cap whose last block is partial), for the local backends that run on
the CPU. Each rank's inputs are leaves and it holds a copy of a shared projection (standing in
for model parameters); DDP / DeepSpeed average the projection's gradients over ranks, and each
rank's own inputs receive the sum over ranks' losses, so both are compared after / N.
"""
import importlib.util
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from gloria_oracle import absent_local_similarities
from helpers import free_port, random_model_outputs

from cmgl_dist.bench.scaling_model import Workload, exchange_bytes
from cmgl_dist.config import LossConfig
from cmgl_dist.losses import CMGLLoss, comm, global_logits, local_similarity_reference

PER_RANK, DIM, N_REGIONS = 3, 6, 5
WORDS_PER_RANK = (4, 7, 3, 5)
CFG = LossConfig(gamma1=4.0, gamma2=5.0, gamma3=10.0, global_temperature=0.1, local_weight=0.7,
                 global_weight=1.3, local_backend="reference")
INPUTS = ("img_global", "regions", "sentence", "words")
CAPS = {2: (None, 4), 4: (None, 4, 8)}  # 4 and 8: the last block in part; 8 of 12 leaves a rank out
BACKENDS = {2: ("reference", "compiled"), 4: ("reference",)}
TRITON = importlib.util.find_spec("triton") is not None  # float32 only: run under TRITON_INTERPRET=1, below


def _rank_batch(rank):
    return random_model_outputs(PER_RANK, WORDS_PER_RANK[rank], N_REGIONS, DIM, seed=300 + rank)


def _denied_batch(rank):
    """`_rank_batch` with denied words (loss.denied_words=absent): text 0 has none, text 1 only
    denied ones, the rest at random; the words' roles cross the wire with them."""
    batch = _rank_batch(rank)
    g = torch.Generator().manual_seed(500 + rank)
    denied = (torch.rand(batch["word_mask"].shape, generator=g) < 0.5) & batch["word_mask"]
    denied[0], denied[1] = False, batch["word_mask"][1]
    return {**batch, "word_denied": denied}


def _projection():
    g = torch.Generator().manual_seed(7)
    return torch.eye(DIM, dtype=torch.float64) + 0.1 * torch.randn(DIM, DIM, generator=g, dtype=torch.float64)


def _run(batch, cfg):
    """Loss and the gradients of the inputs and the projection."""
    leaves = {key: value.clone().requires_grad_() if key in INPUTS else value for key, value in batch.items()}
    projection = _projection().to(batch["words"].dtype).requires_grad_()
    out = {key: value @ projection if key in INPUTS else value for key, value in leaves.items()}
    losses = CMGLLoss(cfg)(out)
    losses["loss"].backward()
    return {"losses": {k: v.detach() for k, v in losses.items()},
            "grads": {key: leaves[key].grad for key in INPUTS}, "projection": projection.grad}


def _rank_main(rank, world, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        batch, results = _rank_batch(rank), {}
        for backend in BACKENDS[world]:
            for cap in CAPS[world]:
                for exchange in ("gather", "ring"):
                    cfg = CFG.model_copy(update={"local_backend": backend, "local_negatives": cap,
                                                 "local_exchange": exchange})
                    results[backend, cap, exchange] = _run(batch, cfg)
        if world == 2 and TRITON:  # the kernel takes fp32 (and 16-bit) inputs only
            single = {k: v.float() if v.is_floating_point() else v for k, v in batch.items()}
            for exchange in ("gather", "ring"):
                cfg = CFG.model_copy(update={"local_backend": "triton", "local_negatives": 4, "local_exchange": exchange})
                results["triton", 4, exchange] = _run(single, cfg)
        for cap in CAPS[world]:
            for exchange in ("gather", "ring"):
                cfg = CFG.model_copy(update={"denied_words": "absent", "local_negatives": cap, "local_exchange": exchange})
                results["absent", cap, exchange] = _run(_denied_batch(rank), cfg)
        uniform = random_model_outputs(PER_RANK, 4, N_REGIONS, DIM, seed=400 + rank)
        for cap in CAPS[world]:
            for exchange in ("gather", "ring"):
                comm.take_counts()
                _run(uniform, CFG.model_copy(update={"local_negatives": cap, "local_exchange": exchange}))
                results["bytes", cap, exchange] = comm.take_counts()
        half = {k: v.to(torch.bfloat16) if k in ("words", "regions") else v.float() if v.is_floating_point() else v
                for k, v in uniform.items()}  # words arrive in bf16 and cross the wire so
        for exchange in ("gather", "ring"):
            leaves = {k: v.requires_grad_() if v.is_floating_point() else v
                      for k, v in ((k, v.clone()) for k, v in half.items())}
            comm.take_counts()
            CMGLLoss(CFG.model_copy(update={"local_exchange": exchange}))(leaves)["loss"].backward()
            results["bf16 bytes", exchange] = comm.take_counts()
            results["bf16 grad", exchange] = leaves["words"].grad
        if world == 2:
            results["order"] = _backward_order(batch)
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _backward_order(batch):
    """The ring's events in order, forward and backward, uncapped: each exchange (its message tags)
    and each scoring of a block (with gradients: the backward's recompute)."""
    from cmgl_dist.losses import cmgl_loss

    events, exchange, score = [], comm.exchange, cmgl_loss.local_similarity

    def recorded_exchange(sends, recvs):
        events.append(("exchange", tuple(sorted({tag for *_, tag in sends + recvs}))))
        return exchange(sends, recvs)

    def recorded_score(*args, **kwargs):
        events.append(("score", torch.is_grad_enabled()))
        return score(*args, **kwargs)

    comm.exchange, cmgl_loss.local_similarity = recorded_exchange, recorded_score
    try:
        _run(batch, CFG.model_copy(update={"local_exchange": "ring"}))
    finally:
        comm.exchange, cmgl_loss.local_similarity = exchange, score
    return events


def _single_process(world, cap, denied=False):
    """Loss and gradients of one process on the concatenated batch, without CMGLLoss: the full
    S once, each image scored against its rank's window of texts (all of them without a cap).
    With `denied`, S is the float64 GLoRIA loop's over each text's affirmed words plus its denied
    words' with -gamma2 (loss.denied_words=absent)."""
    batches = [(_denied_batch if denied else _rank_batch)(rank) for rank in range(world)]
    n_words = max(WORDS_PER_RANK[:world])
    for batch in batches:
        pad = n_words - batch["words"].shape[1]
        batch["words"] = F.pad(batch["words"], (0, 0, 0, pad))
        for key in ("word_mask", "word_denied")[:1 + denied]:
            batch[key] = F.pad(batch[key], (0, pad), value=False)
    full = {key: torch.cat([b[key] for b in batches]) for key in batches[0]}
    return _run_single(full, cap, world, denied)


def _run_single(full, cap, world, denied=False):
    leaves = {key: value.clone().requires_grad_() if key in INPUTS else value for key, value in full.items()}
    projection = _projection().requires_grad_()
    out = {key: value @ projection if key in INPUTS else value for key, value in leaves.items()}
    total = world * PER_RANK
    labels = torch.arange(total)
    logits = global_logits(out["img_global"], out["sentence"], CFG.global_temperature)
    loss_global = F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)
    S = (absent_local_similarities(out["words"], full["word_mask"], full["word_denied"], out["regions"],
                                   CFG.gamma1, CFG.gamma2) if denied else
         local_similarity_reference(out["words"], out["word_mask"], out["regions"], CFG.gamma1, CFG.gamma2))
    image_rows = CFG.gamma3 * S.T  # [images, texts]
    if cap is not None:
        shift = (torch.arange(total)[None, :] - (labels // PER_RANK * PER_RANK)[:, None]) % total
        image_rows = image_rows.masked_fill(shift >= cap, float("-inf"))
    loss_local = F.cross_entropy(image_rows, labels) + F.cross_entropy(image_rows.T, labels)
    loss = CFG.global_weight * loss_global + CFG.local_weight * loss_local
    loss.backward()
    return {"losses": {"loss": loss.detach(), "loss_global": loss_global.detach(), "loss_local": loss_local.detach()},
            "grads": {key: leaves[key].grad for key in INPUTS}, "projection": projection.grad}



@pytest.fixture(scope="module", params=[2, 4])
def ranks(request, tmp_path_factory):
    world = request.param
    out = tmp_path_factory.mktemp(f"ring{world}")
    interpret = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"  # inherited by the spawned ranks: the Triton kernel on the CPU
    try:
        mp.spawn(_rank_main, args=(world, free_port(), str(out)), nprocs=world, join=True)
    finally:
        if interpret is None:
            os.environ.pop("TRITON_INTERPRET")
        else:
            os.environ["TRITON_INTERPRET"] = interpret
    return world, [torch.load(out / f"rank{rank}.pt") for rank in range(world)]


def _close(got, want):
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_ring_equals_gather_equals_one_process(ranks):
    world, results = ranks
    for backend in BACKENDS[world]:
        for cap in CAPS[world]:
            single = _single_process(world, cap)
            for exchange in ("gather", "ring"):
                got = [r[backend, cap, exchange] for r in results]
                for key, want in single["losses"].items():
                    _close(sum(g["losses"][key] for g in got) / world, want)
                _close(sum(g["projection"] for g in got) / world, single["projection"])
                for rank, g in enumerate(got):
                    rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
                    for key in INPUTS:
                        want = single["grads"][key][rows]
                        if key == "words":
                            want = want[:, :WORDS_PER_RANK[rank]]
                        _close(g["grads"][key] / world, want)


def test_denied_words_scored_as_absence_equal_the_float64_loop_over_ranks(ranks):
    """loss.denied_words=absent: the word roles travel with the words (ring and gather) and the
    loss and gradients equal one process's on the float64 GLoRIA loop, texts without denied words
    and texts of denied words only included."""
    world, results = ranks
    for cap in CAPS[world]:
        single = _single_process(world, cap, denied=True)
        for exchange in ("gather", "ring"):
            got = [r["absent", cap, exchange] for r in results]
            for key, want in single["losses"].items():
                _close(sum(g["losses"][key] for g in got) / world, want)
            _close(sum(g["projection"] for g in got) / world, single["projection"])
            for rank, g in enumerate(got):
                rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
                _close(g["grads"]["words"] / world, single["grads"]["words"][rows, :WORDS_PER_RANK[rank]])
                _close(g["grads"]["regions"] / world, single["grads"]["regions"][rows])
    absent = _single_process(world, None, denied=True)["losses"]["loss_local"]
    assert not torch.allclose(absent, _single_process(world, None)["losses"]["loss_local"])


def test_ring_and_gather_give_each_rank_the_same_loss(ranks):
    world, results = ranks
    for r in results:
        for backend in BACKENDS[world]:
            for cap in CAPS[world]:
                _close(r[backend, cap, "ring"]["losses"]["loss"], r[backend, cap, "gather"]["losses"]["loss"])
    assert not torch.allclose(results[0]["reference", None, "ring"]["losses"]["loss"],
                              results[1]["reference", None, "ring"]["losses"]["loss"])


@pytest.mark.skipif(not TRITON, reason="needs the triton package")
def test_ring_equals_gather_with_the_triton_kernel_in_float32(ranks):
    world, results = ranks
    if world != 2:
        pytest.skip("run on 2 ranks")
    for r in results:
        ring, gather = r["triton", 4, "ring"], r["triton", 4, "gather"]
        torch.testing.assert_close(ring["losses"], gather["losses"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ring["grads"], gather["grads"], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(ring["losses"]["loss"].double(), r["reference", 4, "ring"]["losses"]["loss"],
                                   rtol=1e-4, atol=0)


def test_bytes_sent_are_the_scaling_models_prediction(ranks):
    """float64 everywhere (8 bytes), 4 word slots on every rank."""
    world, results = ranks
    for cap in CAPS[world]:
        work = Workload(micro_batch=PER_RANK, embed_dim=DIM, words=4, param_bytes=0, fixed_ms=0, loss_ms=0,
                        local_negatives=cap, word_bytes=8, feature_bytes=8, score_bytes=8)
        for exchange in ("gather", "ring"):
            expected = exchange_bytes(work, world, exchange)
            for r in results:
                assert r["bytes", cap, exchange] == expected, (world, cap, exchange)
    work = Workload(micro_batch=PER_RANK, embed_dim=DIM, words=4, param_bytes=0, fixed_ms=0, loss_ms=0,
                    word_bytes=2, feature_bytes=4, score_bytes=4)
    for r in results:
        for exchange in ("gather", "ring"):
            assert r["bf16 bytes", exchange] == exchange_bytes(work, world, exchange), (world, exchange)
            assert r["bf16 grad", exchange].dtype == torch.bfloat16
        # a few bf16 roundings apart: the ring carries the gradient in float32 and rounds it once, at home;
        # the gather's reduce-scatter sums bf16 parts
        torch.testing.assert_close(r["bf16 grad", "ring"], r["bf16 grad", "gather"], rtol=2e-2, atol=8e-3)
    ring, gather = results[0]["bytes", None, "ring"], results[0]["bytes", None, "gather"]
    assert ring["p2p"] > 0 and gather["p2p"] == 0


def test_a_cap_below_the_batch_is_refused_by_the_loss_itself():
    batch = random_model_outputs(PER_RANK, 4, N_REGIONS, DIM, seed=1)
    with pytest.raises(ValueError, match="local_negatives=2 is below the batch of 3"):
        CMGLLoss(CFG.model_copy(update={"local_negatives": 2}))(batch)


def test_the_backward_posts_each_exchange_before_it_recomputes_the_block(ranks):
    """2 ranks, no cap: the forward scores 2 blocks without gradients; the backward, for each block,
    first posts its exchange (the next block's sums and words, then the travelling gradient), then
    recomputes the block's S, so the transfer overlaps the whole recompute."""
    world, results = ranks
    if world != 2:
        pytest.skip("run on 2 ranks")
    from cmgl_dist.losses.local_ring import GRAD, MASK, SUMS, WORDS

    for r in results:
        backward = r["order"][r["order"].index(("score", True)) - 1:]
        assert backward == [("exchange", (WORDS, MASK, SUMS)), ("score", True), ("exchange", (GRAD,)), ("score", True)]


def test_the_travelling_word_gradient_is_carried_in_float32():
    """511 hops (a 512-rank ring) of bf16 block gradients: summed in float32 and rounded once, the
    result is within bf16 rounding of the float64 sum; rounded to bf16 at every hop, it drifts."""
    from cmgl_dist.losses.local_ring import carry

    g = torch.Generator().manual_seed(0)
    parts = torch.randn(512, 4096, generator=g).to(torch.bfloat16)
    exact = parts.double().sum(dim=0)
    carried, rounded = None, None
    for part in parts:
        carried = carry(carried, part)
        rounded = part if rounded is None else (rounded.float() + part.float()).to(torch.bfloat16)
    assert carried.dtype == torch.float32

    def relative(x):
        return float((x.double() - exact).norm() / exact.norm())

    assert relative(carried.to(torch.bfloat16)) < 3e-3  # one bf16 rounding: ~2e-3
    assert relative(rounded) > 3 * relative(carried.to(torch.bfloat16))
