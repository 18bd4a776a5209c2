"""Evaluation pieces that need no model: probe subsets, prompts, mask geometry, results.jsonl."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

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
    mask = mask_to_view(stored > 0, image_size=48, crop_size=40)
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
