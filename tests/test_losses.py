"""Global/local contrastive losses against GLoRIA's formulas, CMGLLoss in one process, dispatch."""
import os

import pytest
import torch
from gloria_oracle import global_loss as gloria_global_loss
from gloria_oracle import local_loss_tail as gloria_local_loss_tail
from helpers import random_model_outputs

from cmgl_dist.config import LossConfig
from cmgl_dist.losses import (CMGLLoss, global_contrastive_loss, local_contrastive_loss, local_similarity,
                              local_similarity_reference, resolve_backend)


_outputs = random_model_outputs


def test_global_loss_is_gloria_global_loss():
    out = _outputs()
    ours = global_contrastive_loss(out["img_global"], out["sentence"], temperature=0.1)
    torch.testing.assert_close(ours, gloria_global_loss(out["img_global"], out["sentence"], temp3=10.0),
                               rtol=1e-12, atol=0)


def test_local_loss_is_gloria_local_loss_tail():
    similarity = torch.randn(6, 6, dtype=torch.float64)
    torch.testing.assert_close(local_contrastive_loss(similarity, gamma3=10.0), gloria_local_loss_tail(similarity),
                               rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="square"):
        local_contrastive_loss(similarity[:, :5])


def test_cmgl_loss_single_process_weights_both_terms():
    cfg = LossConfig(gamma1=3.0, gamma2=6.0, gamma3=8.0, global_temperature=0.2, local_weight=0.5,
                     global_weight=2.0, local_backend="reference")
    out = _outputs()
    result = CMGLLoss(cfg)(out)

    expected_global = global_contrastive_loss(out["img_global"], out["sentence"], 0.2)
    expected_local = local_contrastive_loss(
        local_similarity_reference(out["words"], out["word_mask"], out["regions"], 3.0, 6.0), 8.0)
    torch.testing.assert_close(result["loss_global"], expected_global, rtol=1e-12, atol=0)
    torch.testing.assert_close(result["loss_local"], expected_local, rtol=1e-12, atol=0)
    torch.testing.assert_close(result["loss"], 2.0 * expected_global + 0.5 * expected_local, rtol=1e-12, atol=0)


def test_cmgl_loss_rejects_mismatched_batches():
    out = _outputs()
    out["sentence"] = out["sentence"][:-1]
    with pytest.raises(ValueError, match="batch sizes differ"):
        CMGLLoss(LossConfig(local_backend="reference"))(out)


def test_backend_resolution(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu) == "reference"
    assert resolve_backend("reference", torch.device("cuda")) == "reference"
    with pytest.raises(ValueError, match="not one of"):
        resolve_backend("cuda", cpu)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        resolve_backend("triton", cpu)


def test_reference_backend_dispatch():
    out = _outputs()
    torch.testing.assert_close(
        local_similarity(out["words"], out["word_mask"], out["regions"], backend="reference"),
        local_similarity_reference(out["words"], out["word_mask"], out["regions"]), rtol=0, atol=0)


def test_triton_backend_through_cmgl_loss_matches_reference():
    """The kernel seam end to end: CUDA when present, else Triton's interpreter on CPU."""
    pytest.importorskip("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1, and it is set to something else")
    results = {}
    for backend in ("triton", "reference"):
        out = {key: value.float().to(device) if value.is_floating_point() else value.to(device)
               for key, value in _outputs(batch=3, n_words=5, n_regions=7, dim=16).items()}
        leaves = [out[key].requires_grad_() for key in ("regions", "words")]
        loss = CMGLLoss(LossConfig(local_backend=backend))(out)["loss_local"]
        results[backend] = (loss, *torch.autograd.grad(loss, leaves))
    for got, want in zip(results["triton"], results["reference"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
