"""GLoRIA's data pipeline and optimizer, each setting against a transcription of GLoRIA's code
(tests/gloria_oracle.py): text cleaning and sentence sampling, INTER_AREA resize and padding, 'half'
normalisation, random-crop-only augmentation, the 299 upsampling, Adam with coupled L2; and the
gloria config naming them all."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

import gloria_oracle as gloria
from cmgl_dist.config import DataConfig, load_config
from cmgl_dist.data import images
from cmgl_dist.data.samples import Record, choose_text
from cmgl_dist.data.text_cleaning import gloria_sentences

REPORTS = [
    "Heart size normal. No pleural effusion or pneumothorax. 1. Mild cardiomegaly. 2. Clear lungs.",
    "The lungs are clear.\nNo acute disease. Stable.",
    "Café-au-lait: no acute cardiopulmonary abnormality... T11-T12 degenerative changes, 2.5 cm.",
    "Normal. Normal.",
    "Bibasilar opacities. Small left effusion. Likely atelectasis; consolidation not excluded.",
]


@pytest.mark.parametrize("captions_per_image", [5, 97])
def test_text_cleaning_is_create_path_2_sent_mapping(captions_per_image, iurr_reports):
    texts = REPORTS + iurr_reports
    for text in texts:
        assert gloria_sentences(text, captions_per_image) == gloria.create_path_2_sent_mapping_one(text, captions_per_image)
    # the quirk the docs describe: exactly captions_per_image words so far stops the report
    assert gloria_sentences("No pleural effusion seen. Heart is normal.", 5) == ["no pleural effusion seen",
                                                                                "heart is normal"]
    assert gloria_sentences("No acute disease. Lungs clear. Heart is normal.", 5) == ["no acute disease", "lungs clear"]


@pytest.fixture(scope="module")
def iurr_reports(reports_tgz) -> list[str]:
    from cmgl_dist.shards.reports import read_reports

    reports, _ = read_reports(reports_tgz)
    return [" ".join(p for p in (r.findings, r.impression) if p) for r in reports[:400]]


def _record(text: str) -> Record:
    return Record(key="k", frontal=b"", report={"findings": text, "impression": ""}, labels=(0.0,) * 6, pass_index=0)


def test_sentence_sampling_draws_gloria_sentences_and_report_joins_them():
    text = REPORTS[0]
    sentences = gloria.create_path_2_sent_mapping_one(text, 97)
    full = choose_text(_record(text), "report", 0, 0, text_cleaning="gloria", captions_per_image=97)
    assert full == " ".join(sentences)  # full_report: true
    drawn = {choose_text(_record(text), "sentence", 0, epoch, text_cleaning="gloria", captions_per_image=97)
             for epoch in range(60)}
    assert drawn == set(sentences)  # full_report: false: one of them, every one reachable


@pytest.mark.parametrize("shape", [(37, 23), (23, 37), (30, 30), (64, 48), (100, 17)])
def test_area_resize_and_padding_are_resize_img(shape):
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    for scale in (16, 13, 10):
        ours = np.asarray(images.square_resize(Image.fromarray(pixels), scale, "area"))
        np.testing.assert_array_equal(ours, gloria.resize_img(pixels, scale))


def test_area_resize_of_an_integer_factor_is_the_block_mean():
    pixels = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    np.testing.assert_array_equal(images.area_resize(pixels, 2, 2), [[25, 45], [105, 125]])


def test_half_normalisation_and_random_crop_alone_are_gloria_train_transform():
    square = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8))
    origins = set()
    for seed in range(40):
        view = images.train_view(square, 32, random.Random(seed), augment=True, augmentation="random_crop")
        draw = random.Random(seed)
        left, top = draw.randint(0, 8), draw.randint(0, 8)
        origins.add((left, top))
        wanted = gloria.train_transform(32, top, left)(square.convert("RGB"))
        torch.testing.assert_close(images.normalise_to_rgb(view, "half"), wanted, rtol=0, atol=1e-6)
    assert len(origins) > 20  # the origin is drawn, not fixed


def test_image_upsample_is_resnet_forward_and_gives_19_by_19_regions():
    from cmgl_dist.config import ModelConfig
    from cmgl_dist.model.cmgl_model import build_model

    model = build_model(ModelConfig(image_encoder="resnet50", image_pretrained=False, text_encoder="tiny",
                                    embed_dim=16, image_upsample=299)).eval()
    seen = []
    model.image_backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        _, regions = model.encode_image(x)
    torch.testing.assert_close(seen[0], gloria.resnet_input(x), rtol=0, atol=0)
    assert regions.shape[1] == 19 * 19


def test_gloria_config_optimizer_is_adam_with_coupled_l2():
    """The JSON DeepSpeed gets, DeepSpeed's own choice of class for it, and three steps of that
    optimizer against GLoRIA's torch.optim.Adam written out in float64."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    from cmgl_dist.engine.deepspeed_config import deepspeed_config

    cfg = load_config("gloria_r50_bert", ["optimizer.lr=0.01"])
    section = deepspeed_config(cfg, world_size=1, cuda=False)["optimizer"]
    assert section["type"] == "Adam"
    params = dict(section["params"])
    adam_w_mode = params.pop("adam_w_mode")  # as DeepSpeedEngine._configure_basic_optimizer pops it
    engine = DeepSpeedEngine.__new__(DeepSpeedEngine)  # get_optimizer_configuration reads no engine state with torch_adam
    optimizer_class, extra = DeepSpeedEngine.get_optimizer_configuration(engine, params, adam_w_mode)
    assert optimizer_class is torch.optim.Adam
    torch.manual_seed(0)
    weights = [torch.randn(4, 3, dtype=torch.float64, requires_grad=True), torch.randn(4, dtype=torch.float64,
                                                                                        requires_grad=True)]
    start = [w.detach().clone() for w in weights]
    optimizer = optimizer_class(weights, **params, **extra)
    grads = [[torch.randn_like(w) for w in weights] for _ in range(3)]
    for step in grads:
        for w, g in zip(weights, step):
            w.grad = g.clone()
        optimizer.step()
    for ours, theirs in zip(weights, gloria.adam_steps(start, grads, lr=0.01)):
        torch.testing.assert_close(ours.detach(), theirs, rtol=0, atol=1e-12)


def test_gloria_config_names_gloria_pipeline():
    cfg = load_config("gloria_r50_bert")
    assert (cfg.data.text_cleaning, cfg.data.text_mode, cfg.data.captions_per_image) == ("gloria", "sentence", 5)
    assert (cfg.data.resize, cfg.data.normalisation, cfg.data.augmentation) == ("area", "half", "random_crop")
    assert cfg.model.image_upsample == 299
    assert (cfg.optimizer.name, cfg.optimizer.betas, cfg.optimizer.weight_decay) == ("adam", (0.5, 0.999), 1e-6)
    assert cfg.loss.denied_words == "keep"
    assert (cfg.eval.probe_model, cfg.eval.probe_features) == ("linear", "backbone")
    default = DataConfig()
    assert (default.text_cleaning, default.resize, default.normalisation, default.augmentation) == (
        "none", "bilinear", "imagenet", "affine")


def test_gloria_prompts_are_generate_chexpert_class_prompts():
    from cmgl_dist.evaluate.prompts import class_prompts

    theirs = gloria.generate_chexpert_class_prompts(n=None)
    names = {"Atelectasis": "atelectasis", "Cardiomegaly": "cardiomegaly", "Consolidation": "consolidation",
             "Edema": "edema", "Pleural Effusion": "pleural_effusion"}
    ours = class_prompts(None, vocabulary="gloria")
    assert {names[k]: v for k, v in theirs.items()} == ours
    five = class_prompts(5, seed=3, vocabulary="gloria")
    assert all(len(v) == 5 and set(v) <= set(ours[k]) for k, v in five.items())
    assert load_config("gloria_r50_bert").eval.prompts == "gloria"
    assert load_config("gloria_r50_bert").eval.n_prompts == 5


@pytest.mark.parametrize("flip_val, stops_early", [(False, False), (True, True)])
def test_linear_probe_is_gloria_linear_head(flip_val, stops_early):
    from cmgl_dist.evaluate.linear_probe import fit_predict_linear

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 6))
    y = (x[:, :3] + 0.5 * rng.standard_normal((300, 3)) > 0).astype(float)
    val_y = 1 - y[128:200] if flip_val else y[128:200]  # flipped: fitting train raises the val loss
    parts = (x[:128], y[:128], x[128:200], val_y, x[200:])
    ours, epochs = fit_predict_linear(*parts, seed=4, dtype=torch.float64)
    theirs, their_epochs = gloria.linear_head_probe(*(torch.tensor(p) for p in parts),
                                                    torch.Generator().manual_seed(4))
    assert epochs == their_epochs and (epochs < 50) == stops_early
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=0, atol=1e-12)
