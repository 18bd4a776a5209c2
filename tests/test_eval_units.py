"""Evaluation pieces that need no model: probe subsets, prompts, mask geometry, results.jsonl."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from cmgl_dist.config import DataConfig
from cmgl_dist.data import images
from cmgl_dist.evaluate.localisation import attention_heatmap, mask_to_view, score_map
from cmgl_dist.evaluate.probe import fit_predict, stratified_subset
from cmgl_dist.evaluate.prompts import all_prompts, class_prompts
from cmgl_dist.evaluate.results import append_record, completed_ids, read_records, repair
from cmgl_dist.shards.schema import PATHOLOGIES


def _rare_labels(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 5)) < [0.1, 0.1, 0.01, 0.05, 0.008]


def test_small_subset_holds_a_positive_of_every_class():
    labels = _rare_labels()
    subset = stratified_subset(labels, 0.01, seed=3)
    assert subset.size == 10 and np.unique(subset).size == 10
    assert labels[subset].any(axis=0).all()
    np.testing.assert_array_equal(subset, stratified_subset(labels, 0.01, seed=3))
    assert not np.array_equal(subset, stratified_subset(labels, 0.01, seed=4))
    np.testing.assert_array_equal(stratified_subset(labels, 1.0, seed=0), np.arange(1000))


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_invalid_fraction_is_refused(fraction):
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        stratified_subset(_rare_labels(), fraction, seed=0)


def test_probe_separates_a_linear_signal_and_flags_unfittable_classes():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8))
    y = np.stack([x[:, 0] > 0.5, x[:, 1] < -1.0, np.zeros(400, bool)], axis=1)
    scores, unfittable = fit_predict(x[:300], y[:300], x[300:], seed=0)
    assert roc_auc_score(y[300:, 0], scores[:, 0]) > 0.95
    assert roc_auc_score(y[300:, 1], scores[:, 1]) > 0.95
    assert unfittable == [2] and np.all(scores[:, 2] == 0.5)


def test_prompts_combine_severity_subtype_location():
    prompts = class_prompts(n=12, seed=0)
    assert list(prompts) == list(PATHOLOGIES)
    for pathology, texts in prompts.items():
        assert len(texts) == len(set(texts)) == 12
        assert set(texts) <= set(all_prompts(pathology))
    assert "small pleural effusion on the left" in all_prompts("pleural_effusion")
    assert class_prompts(n=12, seed=0) == prompts and class_prompts(n=12, seed=1) != prompts


def test_mask_follows_the_eval_image_transform():
    # a non-square stored image: the mask must land where the eval transform puts the pixels
    stored = np.zeros((60, 90), np.uint8)
    stored[10:30, 20:50] = 255
    mask = mask_to_view(stored > 0, DataConfig(image_size=48, crop_size=40))
    view = images.eval_view(images.square_resize(Image.fromarray(stored), 48), 40)[0]
    assert mask.shape == (40, 40)
    assert torch.equal(mask, view > 0.5)
    assert mask.sum() > 50


def test_heatmap_mass_and_pointing_game():
    attention = torch.zeros(16)
    attention[5] = 1.0  # row 1, column 1 of a 4x4 grid
    heat = attention_heatmap(attention, 32)
    assert heat.sum().item() == pytest.approx(1.0)
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[8:16, 8:16] = True
    mass, hit = score_map(heat, inside)
    assert hit and mass > 0.5
    mass, hit = score_map(heat, ~inside)
    assert not hit and mass < 0.5
    with pytest.raises(ValueError, match="square grid"):
        attention_heatmap(torch.ones(12), 32)


def test_results_log_drops_a_partial_last_line(tmp_path):
    path = tmp_path / "results.jsonl"
    append_record(path, {"job_id": "a", "status": "ok"})
    append_record(path, {"job_id": "b", "status": "failed"})
    with open(path, "ab") as f:  # a kill in the middle of a write
        f.write(b'{"job_id": "c", "status": "o')
    assert [r["job_id"] for r in read_records(path)] == ["a", "b"]
    repair(path)
    append_record(path, {"job_id": "c", "status": "ok"})
    lines = path.read_text().splitlines()
    assert [json.loads(line)["job_id"] for line in lines] == ["a", "b", "c"]
    assert completed_ids(read_records(path)) == {"a", "c"}


def test_localisation_scores_the_words_that_name_the_finding():
    from cmgl_dist.config import load_config
    from cmgl_dist.data import tokenize_texts
    from cmgl_dist.evaluate.localisation import finding_word_rows
    from cmgl_dist.model import build_model

    cfg = load_config("debug")
    model = build_model(cfg.model).eval()
    prompts = ["small pleural effusion on the left", "pleural fluid", "no finding here"]
    words, rows = finding_word_rows(model, prompts, "pleural_effusion", cfg.data)
    assert rows == [[2], [1]], "the third prompt names no effusion and is dropped"
    names = tokenize_texts(model.tokenizer, prompts[:2], cfg.data.max_length)["words"]
    assert [len(w) for w in words] == [len(n) for n in names]
    with pytest.raises(ValueError, match="no prompt for edema"):
        finding_word_rows(model, ["clear lungs"], "edema", cfg.data)


def test_mean_of_every_words_attention_is_near_uniform():
    """Why localisation scores only the finding words: GLoRIA's softmax over words shares each
    region among the words, so the average of all the words' maps is flat whatever the features."""
    from cmgl_dist.evaluate.similarity import pair_attention_map

    g = torch.Generator().manual_seed(0)
    words, regions = torch.randn(12, 16, generator=g), torch.randn(100, 16, generator=g)
    attention = pair_attention_map(words, regions, gamma1=4.0)
    assert attention.max(dim=1).values.mean() > 5 / 100  # single words are peaked
    assert attention.mean(dim=0).max() < 2.5 / 100  # their mean is not


def test_patient_folds_keep_patients_together_and_spread_rare_positives():
    from cmgl_dist.evaluate.probe import cross_validated_scores, patient_folds

    rng = np.random.default_rng(0)
    patients = [f"p{i // 3}" for i in range(300)]  # 100 patients, 3 images each
    labels = np.zeros((300, 5), bool)
    labels[:, 0] = rng.random(300) < 0.4
    labels[rng.choice(300, 15, replace=False), 4] = True  # a rare class
    fold_of = patient_folds(labels, patients, 5, seed=1)
    assert sorted(set(fold_of)) == [0, 1, 2, 3, 4]
    assert all(len({fold_of[i] for i in range(300) if patients[i] == p}) == 1 for p in set(patients))
    assert all(labels[fold_of == f, 4].any() for f in range(5))
    assert (fold_of == patient_folds(labels, patients, 5, seed=1)).all()
    x = labels[:, :1] * 2.0 + rng.normal(size=(300, 4))  # class 0 is linearly visible
    scores, unfittable = cross_validated_scores(x, labels, fold_of, seed=0)
    assert scores.shape == (300, 5) and unfittable == [[1, 2, 3]] * 5  # no positives: 0.5 everywhere
    from cmgl_dist.evaluate.metrics import auc

    assert auc(labels[:, 0], scores[:, 0]) > 0.8
    with pytest.raises(ValueError, match="at least 5 patients"):
        patient_folds(labels[:9], patients[:9], 5, seed=0)


def _one_hot(index: int, dim: int = 4, scale: float = 1.0) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(index), dim).float() * scale


def test_paired_report_words_point_at_their_lesion_and_reports_without_them_are_counted():
    from functools import partial

    from cmgl_dist.evaluate.features import SplitFeatures
    from cmgl_dist.evaluate.localisation import score_lesions
    from cmgl_dist.evaluate.similarity import pair_attention_map

    # 4x4 regions; region 5 (row 1, column 1) holds what the word "effusions" says, the rest not
    regions = torch.stack([_one_hot(1)] * 16)
    regions[5] = _one_hot(0, scale=4.0)
    words = torch.stack([_one_hot(2), _one_hot(0, scale=4.0), _one_hot(3)])  # small, effusions, left
    feats = SplitFeatures(keys=["a", "b"], labels=torch.zeros(2, 6), image_global=torch.zeros(2, 4),
                          regions=torch.stack([regions, regions]), words=torch.stack([words, words]),
                          word_mask=torch.tensor([[True, True, True], [True, True, False]]),
                          word_strings=[["small", "Effusions", "left"], ["heart", "normal"]])
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[8:16, 8:16] = True
    prompt = ([torch.stack([_one_hot(2), _one_hot(3)])], [[0]])  # a prompt word blind to region 5
    lesions = [("pleural_effusion", 0, mask), ("pleural_effusion", 1, mask)]
    out = score_lesions(lesions, feats, {"pleural_effusion": prompt}, partial(pair_attention_map, gamma1=8.0))
    paired = out["localisation"]
    assert set(paired) == {"pleural_effusion", "all"}
    for entry in paired.values():
        assert (entry["n"], entry["pointing"], entry["unscored"]) == (1, 1.0, 1)
        assert entry["mass"] > 2 * entry["mask_share"] and entry["mask_share"] == pytest.approx(64 / 1024)
    prompts = out["localisation_prompts"]["pleural_effusion"]
    assert prompts["n"] == 2 and "unscored" not in prompts and prompts["pointing"] == 0.0


def test_report_finding_words_include_iu_rr_plurals_and_collapse():
    from cmgl_dist.evaluate.prompts import finding_word_positions

    words = "Small bilateral pleural effusions and infiltrates ; partial collapse".split()
    assert finding_word_positions(words, "pleural_effusion") == [3]
    assert finding_word_positions(words, "consolidation") == [5]
    assert finding_word_positions(words, "atelectasis") == [8]
    assert finding_word_positions(words, "edema") == []


def _text_features(strings) -> "SplitFeatures":
    from cmgl_dist.evaluate.features import SplitFeatures

    return SplitFeatures(keys=["a", "b"], labels=torch.zeros(2, 6), image_global=torch.randn(2, 4),
                         regions=torch.randn(2, 16, 4), sentence=torch.randn(2, 4), words=torch.randn(2, 3, 4),
                         word_mask=torch.tensor([[True, True, True], [True, False, False]]), word_strings=strings)


def test_feature_cache_keeps_the_word_strings_and_refuses_a_file_without_them(tmp_path):
    from safetensors.torch import save_file

    from cmgl_dist.evaluate.features import load_features, save_features

    feats = _text_features([["mild", "cardiomégaly", "[SEP]"], ['"quoted"']])
    save_features(feats, tmp_path / "f.safetensors")
    loaded = load_features(tmp_path / "f.safetensors")
    assert loaded.word_strings == feats.word_strings and loaded.keys == ["a", "b"]
    words, strings = loaded.text_words(0)
    assert torch.equal(words, feats.words[0]) and strings == ["mild", "cardiomégaly", "[SEP]"]
    # a with_text file of the format before word strings
    save_file(feats.tensors(), str(tmp_path / "old.safetensors"), metadata={"keys": json.dumps(feats.keys)})
    with pytest.raises(ValueError, match="without their word strings.*delete it"):
        load_features(tmp_path / "old.safetensors")
    image_only = _text_features(None)
    image_only.regions = image_only.sentence = image_only.words = image_only.word_mask = None
    save_features(image_only, tmp_path / "img.safetensors")
    assert load_features(tmp_path / "img.safetensors").word_strings is None


@pytest.mark.parametrize("special_words", ["none", "cls_sep"])
def test_encoded_word_strings_follow_the_word_mask_columns(special_words):
    from cmgl_dist.config import load_config
    from cmgl_dist.data import tokenize_texts
    from cmgl_dist.evaluate.features import encode_split
    from cmgl_dist.model import build_model

    cfg = load_config("debug")
    model = build_model(cfg.model).eval()
    texts = ["Small left pleural effusions.", "Heart size normal; no focal consolidation or effusion."]
    batch = {"images": torch.zeros(2, 3, 64, 64), "labels": torch.zeros(2, 6), "keys": ["a", "b"],
             **tokenize_texts(model.tokenizer, texts, cfg.data.max_length, special_words)}
    feats = encode_split(model, [batch], with_text=True, device=torch.device("cpu"))
    assert feats.word_strings == batch["words"]
    assert [len(s) for s in feats.word_strings] == feats.word_mask.sum(1).tolist()
    _, first = feats.text_words(0)
    assert first[:2] == (["[CLS]", "Small"] if special_words == "cls_sep" else ["Small", "left"])
    batch["words"] = [w[:-1] for w in batch["words"]]
    with pytest.raises(ValueError, match="word strings do not match word_mask"):
        encode_split(model, [batch], with_text=True, device=torch.device("cpu"))


def test_the_feature_format_is_part_of_the_feature_file_name(tmp_path, monkeypatch):
    from cmgl_dist.config import EvalConfig
    from cmgl_dist.evaluate import context
    from cmgl_dist.evaluate.context import EvalContext, EvalInputs

    export = tmp_path / "export"
    export.mkdir()
    (export / "model.safetensors").write_bytes(b"weights")
    (export / "config.yaml").write_text("name: x\n")
    ctx = EvalContext(str(export), EvalInputs(str(tmp_path / "test-000000.tar"), str(tmp_path / "out"), EvalConfig()))
    path = ctx._feature_path("test", with_text=True)
    assert path == ctx._feature_path("test", with_text=True) and path.name.endswith("-text.safetensors")
    monkeypatch.setattr(context, "FEATURES_FORMAT", context.FEATURES_FORMAT - 1)
    assert ctx._feature_path("test", with_text=True) != path


def test_finding_precision_leaves_out_samples_with_unknown_labels():
    """An unindexed report labelled all 0 would count as 'other': the precision leaves it out
    (query and candidate) and gives the figure with it beside."""
    from cmgl_dist.evaluate.features import SplitFeatures
    from cmgl_dist.evaluate.metrics import finding_set_precision
    from cmgl_dist.evaluate.report import _finding_precision
    from cmgl_dist.evaluate.retrieval import retrieval_recalls

    torch.manual_seed(0)
    n, d = 24, 8
    labels = torch.zeros(n, 6)
    labels[: n // 2, 5] = 1  # half normal, half neither normal nor any finding
    feats = SplitFeatures(keys=[f"k{i}" for i in range(n)], labels=labels, image_global=torch.randn(n, d),
                          regions=torch.randn(n, 4, d), sentence=torch.randn(n, d), words=torch.randn(n, 3, d),
                          word_mask=torch.ones(n, 3, dtype=torch.bool))
    unknown = frozenset({"k0", "k13", "k20"})
    got = retrieval_recalls(feats, gamma1=4.0, gamma2=5.0, unknown_labels=unknown)["finding_precision"]
    everyone = retrieval_recalls(feats, gamma1=4.0, gamma2=5.0)["finding_precision"]
    assert everyone["left_out"] == 0 and everyone["precision"] == everyone["with_left_out"]["precision"]
    assert got["left_out"] == 3 and got["with_left_out"] == everyone["with_left_out"]
    from cmgl_dist.evaluate.similarity import image_text_similarity

    sim = image_text_similarity(feats.image_global, feats.regions, feats.sentence, feats.words, feats.word_mask,
                                gamma1=4.0, gamma2=5.0).numpy()
    keep = [i for i in range(n) if f"k{i}" not in unknown]
    sets = labels.numpy()[keep] > 0.5
    assert (got["precision"], got["chance"]) == finding_set_precision(sim[keep][:, keep], sets, sets, 10)
    assert "21 test pairs whose finding set is known; 3 unindexed" in _finding_precision(got, n)
    assert _finding_precision(everyone, n).endswith(f"{everyone['precision']:.3f} ({everyone['chance']:.3f}).")


def test_rendering_zero_is_the_packed_image_and_later_renderings_differ(small_shards, minilm_tokenizer):
    from cmgl_dist.config import DataConfig
    from cmgl_dist.data import make_loader, shard_urls
    from cmgl_dist.data.images import eval_image
    from cmgl_dist.evaluate.lesion_renderings import pack_rendering, phantom_reports
    from cmgl_dist.shards.phantom import phantom_for_report

    size, seed = pack_rendering(str(small_shards))
    data = DataConfig(shards=str(small_shards), image_size=size, crop_size=size - 16, workers=0)
    batch = next(iter(make_loader(shard_urls(str(small_shards), "test"), data, minilm_tokenizer, train=False,
                                  batch_size=2, seed=0)))
    reports = phantom_reports(str(small_shards), "test")
    for key, packed in zip(batch["keys"], batch["images"]):
        report = reports[key]
        again = eval_image(Image.fromarray(
            phantom_for_report(report.uid, report.labels, report.mesh_major, size, seed)[0]), data)
        assert torch.equal(again, packed)
        other = eval_image(Image.fromarray(
            phantom_for_report(report.uid, report.labels, report.mesh_major, size, seed + 1)[0]), data)
        assert (other - packed).abs().mean() > 0.05


def test_localisation_bootstrap_resamples_reports_not_masks():
    from cmgl_dist.evaluate.localisation import report_bootstrap

    # 30 masks from one report that always hits and 30 from one that never does: two reports, so
    # a resample holds 0, 1 or 2 copies of the hitting one (means 0, 0.5, 1), never 30 of 60 masks' spread
    hits = np.array([1.0] * 30 + [0.0] * 30)
    (low, high), = report_bootstrap(hits[None], ["a"] * 30 + ["b"] * 30, 2000)
    assert (low, high) == (0.0, 1.0)
    (low, high), = report_bootstrap(hits[None], [str(i) for i in range(60)], 2000)
    assert 0.3 < low < 0.5 < high < 0.7
    assert report_bootstrap(hits[None], ["a"] * 60, 0) == [None]
