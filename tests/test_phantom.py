"""The phantom generator: findings show inside their masks and only there, placed by MeSH words."""
import numpy as np
import pytest

from cmgl_dist.shards.phantom import (INCIDENTAL_HEADINGS, Finding, draw_anatomy, patient_rng, phantom_for_report,
                                      plan_findings, plan_incidentals, render, reshape_anatomy)
from cmgl_dist.shards.reports import labels_from_mesh
from cmgl_dist.shards.schema import PATHOLOGIES

SIZE = 128
NORMAL = dict.fromkeys(PATHOLOGIES, 0) | {"normal": 1}
NO_LABEL = dict.fromkeys(PATHOLOGIES, 0) | {"normal": 0}  # none of the five, not normal either


def _dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(pixels):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


@pytest.mark.parametrize("pathology", PATHOLOGIES)
@pytest.mark.parametrize("uid", ["CXR1", "CXR77", "CXR2500"])
def test_each_finding_changes_the_image_inside_its_mask_only(pathology, uid):
    anatomy = draw_anatomy(patient_rng(0, uid, "anatomy"))
    sides = {"edema": ("right", "left"), "cardiomegaly": ()}.get(pathology, ("left",))
    finding = Finding(pathology, sides, "lower", 1.0)
    without, masks_without = render(anatomy, [], SIZE, (0, uid))
    with_it, masks = render(anatomy, [finding], SIZE, (0, uid))
    assert masks_without == {} and set(masks) == {pathology}
    mask = masks[pathology]
    diff = np.abs(with_it.astype(np.int16) - without.astype(np.int16))
    assert mask.sum() > 20
    assert diff[mask].mean() > 15, "the finding must be visible inside its mask"
    near = _dilate(mask, 3)
    assert diff[~near].sum() <= 0.05 * diff.sum(), "the finding must not change the image far from its mask"


def test_side_follows_the_mesh_words():
    """Patient's left is the image's right (PA display)."""
    centres = {}
    for side in ("left", "right"):
        labels = dict(NORMAL, normal=0, consolidation=1)
        _, masks, findings = phantom_for_report("CXR5", labels, [f"Consolidation/lung/upper lobe/{side}"], SIZE, 0)
        assert findings == [Finding("consolidation", (side,), "upper", 1.0)]
        ys, xs = np.nonzero(masks["consolidation"])
        centres[side] = (xs.mean(), ys.mean())
    assert centres["left"][0] > SIZE / 2 > centres["right"][0]
    assert centres["left"][1] < SIZE / 2 and centres["right"][1] < SIZE / 2  # upper lobe


def test_plan_reads_bilateral_zone_and_severity():
    mesh = ["Pulmonary Atelectasis/base/bilateral/mild", "Cardiomegaly/severe", "Pleural Effusion/right/large"]
    findings = plan_findings(labels_from_mesh(mesh), mesh, patient_rng(0, "CXR9", "placement"))
    assert findings == [Finding("atelectasis", ("right", "left"), "lower", 0.8), Finding("cardiomegaly", (), "", 1.5),
                        Finding("pleural_effusion", ("right",), "lower", 1.5)]


def test_cardiomegaly_widens_the_heart():
    anatomy = draw_anatomy(patient_rng(0, "CXR3", "anatomy"))
    _, masks = render(anatomy, [Finding("cardiomegaly", (), "", 1.0)], SIZE, (0, "CXR3"))
    columns = np.nonzero(masks["cardiomegaly"].any(axis=0))[0]
    thorax_pixels = anatomy.thorax_half_width / anatomy.scale * SIZE  # thorax width in pixels
    assert anatomy.heart_ratio < 0.5
    assert (columns[-1] - columns[0]) / thorax_pixels > 0.55


def test_normal_report_gets_no_mask_and_anatomy_varies():
    images = []
    for uid in ("CXR1", "CXR2"):
        image, masks, findings = phantom_for_report(uid, NORMAL, ["normal"], SIZE, 0)
        assert masks == {} and findings == []
        assert image.dtype == np.uint8 and image.shape == (SIZE, SIZE)
        images.append(image.astype(np.int16))
    assert np.abs(images[0] - images[1]).mean() > 5


def test_deterministic_per_seed():
    labels = labels_from_mesh(["Pulmonary Edema", "Consolidation/lung/base/right"])
    a = phantom_for_report("CXR10", labels, ["Pulmonary Edema"], SIZE, seed=3)
    b = phantom_for_report("CXR10", labels, ["Pulmonary Edema"], SIZE, seed=3)
    c = phantom_for_report("CXR10", labels, ["Pulmonary Edema"], SIZE, seed=4)
    assert np.array_equal(a[0], b[0]) and a[1].keys() == b[1].keys()
    assert all(np.array_equal(a[1][k], b[1][k]) for k in a[1])
    assert not np.array_equal(a[0], c[0])


def test_upsampled_sizes_keep_masks_aligned():
    labels = labels_from_mesh(["Consolidation/lung/middle lobe/right"])
    small = phantom_for_report("CXR11", labels, ["Consolidation/lung/middle lobe/right"], 256, 0)[1]["consolidation"]
    large = phantom_for_report("CXR11", labels, ["Consolidation/lung/middle lobe/right"], 512, 0)[1]["consolidation"]
    assert large.shape == (512, 512)
    assert abs(large.mean() - small.mean()) < 0.002


def test_incidental_findings_are_drawn_where_their_mesh_words_say_without_masks():
    """A report with none of the five findings still shows what it says: here a right upper granuloma."""
    plain, masks_plain, _ = phantom_for_report("CXR12", NO_LABEL, [], SIZE, 0)
    image, masks, findings = phantom_for_report("CXR12", NO_LABEL, ["Calcified Granuloma/lung/upper lobe/right"], SIZE, 0)
    assert findings == [Finding("granuloma", ("right",), "upper", 1.0)] and masks == masks_plain == {}
    diff = np.abs(image.astype(np.int16) - plain.astype(np.int16)) > 30
    ys, xs = np.nonzero(diff)
    assert 10 < diff.sum() < 0.02 * SIZE * SIZE, "a small, dense dot"
    assert xs.mean() < SIZE / 2 and ys.mean() < SIZE / 2  # patient's right = image left; upper lobe


def test_normal_report_gets_no_incidental_and_every_kind_draws():
    assert plan_incidentals(["normal"], patient_rng(0, "CXR1", "x")) == []
    assert phantom_for_report("CXR1", NORMAL, ["normal", "Calcified Granuloma"], SIZE, 0)[2] == []
    headings = sorted({h if isinstance(h, str) else "/".join(h) for h in INCIDENTAL_HEADINGS})
    kinds = set()
    for heading in headings:
        plain = phantom_for_report("CXR13", NO_LABEL, [], SIZE, 0)[0]
        image, masks, findings = phantom_for_report("CXR13", NO_LABEL, [heading], SIZE, 0)
        assert masks == {} and len(findings) == 1, heading
        assert np.abs(image.astype(np.int16) - plain.astype(np.int16)).mean() > 0.05, f"{heading} draws nothing"
        kinds.add(findings[0].pathology)
    assert kinds == set(INCIDENTAL_HEADINGS.values())


def test_lung_volumes_move_the_diaphragm():
    anatomy = draw_anatomy(patient_rng(0, "CXR14", "anatomy"))
    low = reshape_anatomy(anatomy, [Finding("low_volumes", ("right",), "lower", 1.0)])
    high = reshape_anatomy(anatomy, [Finding("hyperinflated", ("right",), "lower", 1.0)])
    raised = reshape_anatomy(anatomy, [Finding("elevated_diaphragm", ("left",), "lower", 1.0)])
    assert low.base[0] < anatomy.base[0] < high.base[0] and high.dome < anatomy.dome
    assert raised.base[1] < anatomy.base[1] and raised.base[0] == anatomy.base[0]
