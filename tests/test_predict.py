"""`cmgl predict` and the Python API on a tiny export: the scores of `cmgl evaluate` on a pack, from
the pack's source image files; unreadable files listed; images as paths, PIL images or tensors."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from helpers import read_pack

import cmgl_dist
from cmgl_dist.config import load_config
from cmgl_dist.engine.export import export_model
from cmgl_dist.evaluate.run import main as evaluate_main
from cmgl_dist.evaluate.zero_shot import standardise_columns
from cmgl_dist.model import build_model
from cmgl_dist.predict import main as predict_main
from cmgl_dist.shards.pack import pack
from cmgl_dist.shards.reports import read_reports
from cmgl_dist.shards.schema import PATHOLOGIES

PACK_SIZE = 96
MODES = ("L", "I;16", "RGB", "RGBA", "JPEG")


def _write_image(path_stem, index: int) -> None:
    """A smooth random image in one of the modes the packer takes, of a varying size."""
    rng = np.random.default_rng(index)
    height, width = 70 + 13 * (index % 5), 90 + 7 * (index % 3)
    y, x = np.mgrid[:height, :width]
    base = (np.sin(x / (5 + index % 4)) + np.cos(y / (3 + index % 6)) + rng.normal(0, 0.3, (height, width)))
    unit = (base - base.min()) / np.ptp(base)
    mode = MODES[index % len(MODES)]
    if mode == "I;16":
        Image.fromarray((unit * 65535).astype(np.uint16)).save(f"{path_stem}.png")
    elif mode == "JPEG":
        Image.fromarray((unit * 255).astype(np.uint8)).save(f"{path_stem}.jpg", quality=95)
    else:
        Image.fromarray((unit * 255).astype(np.uint8)).convert(mode).save(f"{path_stem}.png")


@pytest.fixture(scope="module")
def image_pack(tmp_path_factory, reports_tgz, metadata_csv):
    """(pack folder, source image folder): 24 reports whose images are files of assorted modes."""
    root = tmp_path_factory.mktemp("predict")
    sources = root / "images"
    sources.mkdir()
    reports = [r for r in read_reports(reports_tgz)[0] if r.has_text and r.image_ids][:24]
    for index, image_id in enumerate(i for r in reports for i in r.image_ids):
        _write_image(sources / image_id, index)
    pack(reports=reports_tgz, images=str(sources), metadata=metadata_csv, out=root / "pack", image_size=PACK_SIZE,
         samples_per_shard=8, workers=1)
    return root / "pack", sources


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    cfg = load_config("debug", ["eval.bootstrap=0"])
    torch.manual_seed(0)
    return export_model(build_model(cfg.model).state_dict(), cfg, tmp_path_factory.mktemp("run") / "export")


def _read_scores(path) -> dict[str, list[float]]:
    with open(path) as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == list(PATHOLOGIES)
    return {row[0]: [float(v) for v in row[1:]] for row in rows[1:]}


def test_predict_on_source_images_gives_evaluates_zero_shot_scores(image_pack, tiny_export, tmp_path):
    shards, sources = image_pack
    assert evaluate_main(["--exports", str(tiny_export), "--shards", str(shards), "--out", str(tmp_path / "eval"),
                          "--split", "all", "--tasks", "zero_shot"]) == 0
    (record,) = [json.loads(line) for line in (tmp_path / "eval" / "results.jsonl").read_text().splitlines()]
    saved = np.load(tmp_path / "eval" / record["scores_file"])
    frontal = {key: sample["meta.json"]["frontal_image"] for key, sample in read_pack(shards).items()}
    files = {key: next(sources.glob(f"{image_id}.*")) for key, image_id in frontal.items()}

    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "predict"
    argv = ["--export", str(tiny_export), "--images", *map(str, files.values()), str(tmp_path / "broken.png"),
            str(tmp_path / "absent.png"), "--out", str(out), "--pack-size", str(PACK_SIZE), "--batch-size", "5"]
    assert predict_main(argv) == 0
    scores = _read_scores(out / "scores.csv")
    raw = np.array([scores[str(files[key])] for key in saved["keys"]])
    np.testing.assert_allclose(standardise_columns(raw), saved["scores"], rtol=0, atol=1e-5)
    with open(out / "unreadable.csv") as f:
        unreadable = list(csv.DictReader(f))
    assert [row["image"] for row in unreadable] == [str(tmp_path / "absent.png"), str(tmp_path / "broken.png")]
    assert "unreadable image" in unreadable[1]["reason"]


def test_predict_takes_a_folder_and_draws_the_words(image_pack, tiny_export, tmp_path):
    _, sources = image_pack
    folder = tmp_path / "few"
    folder.mkdir()
    for path in sorted(sources.iterdir())[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "out"
    assert predict_main(["--export", str(tiny_export), "--images", str(folder), "--out", str(out),
                         "--classes", "cardiomegaly", "hilar enlargement", "--words", "pleural", "effusion"]) == 0
    with open(out / "scores.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image", "cardiomegaly", "hilar enlargement"] and len(rows) == 4
    overlays = sorted((out / "overlays").glob("*.png"))
    assert len(overlays) == 3 and Image.open(overlays[0]).size[0] > 100


def test_api_takes_paths_pil_images_and_tensors_alike(image_pack, tiny_export):
    _, sources = image_pack
    model = cmgl_dist.load(tiny_export, device="cpu")
    path = sorted(sources.glob("*.png"))[0]
    grey = Image.open(path).convert("L")
    tensor = torch.from_numpy(np.array(grey))
    scores, names = model.zero_shot([path, grey, tensor, tensor.float() / 255])
    assert names == list(PATHOLOGIES) and scores.shape == (4, 5)
    np.testing.assert_allclose(scores, np.repeat(scores[:1], 4, axis=0), rtol=0, atol=1e-6)
    one, _ = model.zero_shot(path, ["cardiomegaly", "a small nodule"])
    assert one.shape == (1, 2)
    np.testing.assert_allclose(one[0, 0], scores[0, 1], rtol=1e-6)
    words, maps = model.attention(path, "small left pleural effusion")
    assert words == ["small", "left", "pleural", "effusion"]
    assert maps.shape == (4, grey.size[1], grey.size[0])
    torch.testing.assert_close(maps.sum(dim=(1, 2)), torch.ones(4))
    with pytest.raises(TypeError, match="path, a PIL image or a tensor"):
        model.transform(3)
