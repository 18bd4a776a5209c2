"""What a run writes and what it trusts: lock files never followed, `cmgl predict`'s --out locked
and never read back, spreadsheet-safe CSVs, exports checked file by file before use (a missing
tokenizer, damaged or non-finite weights, a planted pickle), credentials never recorded, and the
Python API's input contract."""
from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

import cmgl_dist
from cmgl_dist.config import load_config, save_config
from cmgl_dist.engine.export import ExportError, export_model, load_exported
from cmgl_dist.locks import LOCK_FILE, FolderBusy, folder_lock
from cmgl_dist.model import build_model
from cmgl_dist.predict import main as predict_main
from cmgl_dist.shards.images import open_grey
from cmgl_dist.shards.pack import main as pack_main

SECRET_URL = "http://reader:s3cret@127.0.0.1:9/pack"


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    cfg = load_config("debug", ["eval.bootstrap=0", f"data.shards={SECRET_URL}"])
    torch.manual_seed(0)
    return export_model(build_model(cfg.model).state_dict(), cfg, tmp_path_factory.mktemp("run") / "export")


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("=1+2", "@SUM(1)", "plain"):
        Image.fromarray(rng.integers(0, 256, (64, 48), dtype=np.uint8)).save(folder / f"{name}.png")
    Image.fromarray(rng.integers(0, 256, (64, 48), dtype=np.uint8)).save(folder / "w.webp", lossless=True)
    return folder


def _copy(export, tmp_path):
    return shutil.copytree(export, tmp_path / "export")


# --- locks


@pytest.mark.parametrize("kind", ["symlink", "folder", "fifo"])
def test_a_lock_that_is_not_a_regular_file_is_refused_and_never_followed(tmp_path, kind):
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("precious\n")
    lock = out / LOCK_FILE
    {"symlink": lambda: lock.symlink_to(victim), "folder": lock.mkdir, "fifo": lambda: os.mkfifo(lock)}[kind]()
    with pytest.raises(FolderBusy, match=f"{LOCK_FILE} is a .*not a lock file"):
        with folder_lock(out, "cmgl test"):
            pass
    assert victim.read_text() == "precious\n" and (lock.is_symlink() or lock.exists())


def test_pack_into_a_folder_with_a_planted_lock_link_exits_2_in_one_line(tmp_path, reports_tgz, caplog):
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("precious\n")
    (out / LOCK_FILE).symlink_to(victim)
    assert pack_main(["--reports", str(reports_tgz), "--images", "phantom", "--out", str(out), "--limit", "4",
                      "--image-size", "32", "--workers", "1"]) == 2
    assert "symbolic link" in caplog.text and victim.read_text() == "precious\n"


def test_pack_quality_with_png_is_an_argument_error(tmp_path, reports_tgz):
    with pytest.raises(SystemExit) as exited:
        pack_main(["--reports", str(reports_tgz), "--images", "phantom", "--out", str(tmp_path / "o"),
                   "--quality", "80"])
    assert exited.value.code == 2


# --- cmgl predict: --out


def test_predict_holds_its_out_and_never_scores_its_own_output(export, images, monkeypatch, caplog):
    monkeypatch.chdir(images)  # relative names: the cells begin with the files' own names
    argv = ["--export", str(export), "--images", ".", "--out", "predictions", "--words", "effusion"]  # out inside
    assert predict_main(argv) == 0
    assert len(list((images / "predictions" / "overlays").glob("*.png"))) == 4
    assert predict_main(argv) == 0  # the second run does not read the first run's overlays
    with open(images / "predictions" / "scores.csv") as f:
        rows = list(csv.reader(f))
    # .webp found in a folder as when named; names a spreadsheet would run as formulas are quoted
    assert sorted(row[0] for row in rows[1:]) == ["'=1+2.png", "'@SUM(1).png", "plain.png", "w.webp"]
    assert all(float(v) == float(v) for row in rows[1:] for v in row[1:])  # numbers stay numbers
    with folder_lock(images / "predictions", "another run"):
        assert predict_main(argv) == 2
    assert "in use by" in caplog.text


def test_predict_out_that_is_a_file_and_bad_arguments_are_one_line(export, images, tmp_path, capsys):
    base = ["--export", str(export), "--images", str(images / "plain.png")]
    (tmp_path / "file").write_text("x")
    for extra in (["--out", str(tmp_path / "file")], ["--out", str(tmp_path / "o"), "--classes", ""],
                  ["--out", str(tmp_path / "o"), "--classes", "!!!"], ["--out", str(tmp_path / "o"), "--words", ""],
                  ["--out", str(tmp_path / "o"), "--pack-size", "30000"]):
        assert predict_main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (extra, err)


def test_a_long_image_name_with_words_is_drawn(export, tmp_path):
    folder = tmp_path / "long"
    folder.mkdir()
    Image.fromarray(np.full((64, 64), 100, np.uint8)).save(folder / ("n" * 250 + ".png"))
    assert predict_main(["--export", str(export), "--images", str(folder), "--out", str(tmp_path / "o"),
                         "--words", "effusion"]) == 0
    assert len(list((tmp_path / "o" / "overlays").glob("*.png"))) == 1


# --- exports


def test_an_export_records_its_files_and_its_tokenizer(export):
    record = json.loads((export / "export.json").read_text())
    assert record["tokenizer_vocab_size"] > 1000 and "model.safetensors" in record["files"]
    assert any(name.startswith("text_encoder/") for name in record["files"])


@pytest.mark.parametrize("damage", ["tokenizer_gone", "truncated", "garbage", "nan", "pickle"])
def test_a_damaged_export_is_refused_naming_the_file(export, tmp_path, damage, capsys):
    copy = _copy(export, tmp_path)
    weights = copy / "model.safetensors"
    if damage == "tokenizer_gone":
        for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
            (copy / "text_encoder" / name).unlink(missing_ok=True)
        named = "text_encoder"
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
        named = "model.safetensors"
    elif damage == "garbage":
        weights.write_bytes(b"not safetensors at all")
        named = "model.safetensors"
    elif damage == "nan":
        state = load_file(str(weights))
        first = next(k for k, v in state.items() if v.is_floating_point())
        state[first][0] = float("nan")
        save_file(state, str(weights), metadata={"format": "pt"})
        named = "model.safetensors"
    else:
        (copy / "text_encoder" / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
        named = "pytorch_model.bin"
    with pytest.raises(ExportError, match=named):
        load_exported(copy)
    assert predict_main(["--export", str(copy), "--images", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err


def test_an_export_without_its_record_still_refuses_a_degenerate_tokenizer_and_nan(export, tmp_path):
    copy = _copy(export, tmp_path)
    (copy / "export.json").unlink()
    load_exported(copy)  # an older export loads
    (copy / "text_encoder" / "vocab.txt").unlink(missing_ok=True)
    (copy / "text_encoder" / "tokenizer.json").unlink(missing_ok=True)
    with pytest.raises(ExportError, match="tokenizer"):
        load_exported(copy)


# --- credentials


def test_credentials_in_a_url_are_never_recorded(export, tmp_path):
    assert "s3cret" not in (export / "config.yaml").read_text()
    assert "***@127.0.0.1" in (export / "config.yaml").read_text()
    cfg = load_config("debug", [f"data.shards={SECRET_URL}"])
    save_config(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["data"]["shards"] == "http://***@127.0.0.1:9/pack"
    # checkpoints record the same redacted config (client.json), and a resume compares like with like
    from cmgl_dist.config import recorded
    from cmgl_dist.engine.checkpoint import COMPLETE
    from cmgl_dist.engine.resume import check_resumable_config

    folder = tmp_path / "checkpoints" / "step_00000002"
    folder.mkdir(parents=True)
    (folder / "client.json").write_text(json.dumps({"state": {}, "config": recorded(cfg)}))
    (folder / COMPLETE).write_text("1")  # a one-rank checkpoint
    assert "s3cret" not in (folder / "client.json").read_text()
    check_resumable_config((tmp_path / "checkpoints", "step_00000002"), cfg)  # no field reads as changed


# --- the API's input contract


def test_the_api_takes_sequences_of_paths_and_windows_wide_integer_tensors(export, tmp_path):
    model = cmgl_dist.load(export, device="cpu")
    rng = np.random.default_rng(1)
    twelve_bit = rng.integers(0, 4096, (64, 48)).astype(np.uint16)
    Image.fromarray(twelve_bit).save(tmp_path / "wide.png")
    path = tmp_path / "wide.png"
    from_list, names = model.zero_shot([path, path])
    from_tuple, _ = model.zero_shot((path, path))
    np.testing.assert_allclose(from_tuple, from_list)
    as_int32, _ = model.zero_shot(torch.from_numpy(twelve_bit.astype(np.int32)))
    np.testing.assert_allclose(as_int32[0], from_list[0], atol=1e-6)
    one_class, names = model.zero_shot(path, "cardiomegaly")  # one string is one class
    assert names == ["cardiomegaly"] and one_class.shape == (1, 1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.zero_shot(torch.full((64, 48), 200.0))  # 0..255 floats: refused, not clamped to white
    with pytest.raises(ValueError, match="n_prompts"):
        model.zero_shot(path, n_prompts=-1)
    with pytest.raises(ValueError, match="no letter or digit"):
        model.zero_shot(path, ["!!!"])


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((40, 80), np.uint8)
    pixels[:, :10] = 255  # a bright left edge
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # stored rotated: show it turned 90 degrees clockwise
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    upright = np.asarray(open_grey(tmp_path / "rotated.jpg"))
    assert upright.shape == (80, 40) and upright[:10].mean() > 200 and upright[-10:].mean() < 50
