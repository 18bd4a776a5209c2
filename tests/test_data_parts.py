"""The loader's parts: shard URL resolution, the image recipe, text selection, seeds."""
from __future__ import annotations

import io
import json
import os
import random
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from cmgl_dist.config import DataConfig
from cmgl_dist.data import images, shard_urls
from cmgl_dist.data import seeds
from cmgl_dist.data.samples import Record, SkipCounter, choose_text, parse, report_text, to_example
from cmgl_dist.data.seeds import seed_of
from cmgl_dist.data.streams import stream_sample_counts
from cmgl_dist.shards.schema import LABEL_KEYS, MANIFEST


def png(width: int, height: int, value: int = 200) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (value, value, value)).save(out, format="PNG")
    return out.getvalue()


def test_shard_urls_from_a_manifest_a_brace_pattern_and_a_pipe(tmp_path):
    names = ["train-000001.tar", "val-000000.tar", "train-000000.tar"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    shards = [{"name": n, "split": n.split("-")[0], "samples": 1, "sha256": "-"} for n in names]
    (tmp_path / MANIFEST).write_text(json.dumps({"shards": shards}))
    assert shard_urls(str(tmp_path), "train") == [str(tmp_path / names[0]), str(tmp_path / names[2])]
    assert shard_urls(str(tmp_path / "train-{000000..000001}.tar"), "train") == [
        str(tmp_path / "train-000000.tar"), str(tmp_path / "train-000001.tar")]
    assert shard_urls("pipe:cat /x/a.tar", "train") == ["pipe:cat /x/a.tar"]
    assert shard_urls("https://h/t-{0..1}.tar", "val") == ["https://h/t-0.tar", "https://h/t-1.tar"]
    with pytest.raises(ValueError, match="lists no 'test' shards"):
        shard_urls(str(tmp_path), "test")
    with pytest.raises(FileNotFoundError, match="do not exist"):
        shard_urls(str(tmp_path / "train-{000000..000002}.tar"), "train")
    (tmp_path / "unpacked").mkdir()
    with pytest.raises(FileNotFoundError, match="cmgl pack"):
        shard_urls(str(tmp_path / "unpacked"), "train")


def test_square_resize_keeps_the_aspect_and_centres_the_image():
    square = np.asarray(images.square_resize(images.decode_grey(png(100, 50)), 64))
    assert square.shape == (64, 64) and square.dtype == np.uint8
    rows_with_image = np.flatnonzero((square > 0).any(1))
    assert rows_with_image.tolist() == list(range(16, 48))  # 32 rows, 16 of padding above and below
    assert (square[16:48] == 200).all()


def test_views_crop_to_size_and_augment_deterministically():
    square = images.square_resize(images.decode_grey(png(80, 80, 128)), 64)
    centre = images.eval_view(square, 48)
    assert centre.shape == (1, 48, 48) and torch.allclose(centre, torch.full_like(centre, 128 / 255))
    a = images.train_view(square, 48, random.Random(7), augment=True)
    b = images.train_view(square, 48, random.Random(7), augment=True)
    c = images.train_view(square, 48, random.Random(8), augment=True)
    assert a.shape == (1, 48, 48) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(images.train_view(square, 48, random.Random(7), augment=False), centre)
    rgb = images.normalise_to_rgb(centre)
    assert rgb.shape == (3, 48, 48)
    assert torch.allclose(rgb[:, 0, 0], (128 / 255 - images.IMAGENET_MEAN.flatten()) / images.IMAGENET_STD.flatten())


def test_affine_crop_is_a_plain_crop_at_identity_and_rotates_about_the_centre():
    square = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    crop = np.asarray(square.crop((10, 6, 42, 38)))
    identity = np.asarray(images.affine_crop(square, 32, (10, 6), 0.0, (0.0, 0.0), 1.0))
    assert np.array_equal(identity, crop)
    quarter_turn = np.asarray(images.affine_crop(square, 32, (10, 6), 90.0, (0.0, 0.0), 1.0))
    rotated = [np.rot90(crop, k) for k in (1, -1)]  # whichever way PIL's y-down axes turn it
    assert any(np.abs(quarter_turn[1:-1, 1:-1].astype(int) - r[1:-1, 1:-1]).max() <= 1 for r in rotated)
    shifted = np.asarray(images.affine_crop(square, 32, (10, 6), 0.0, (3.0, 0.0), 1.0))
    assert np.array_equal(shifted[:, 3:], crop[:, :-3])


def record(report: dict, key: str = "CXR7") -> Record:
    return Record(key, png(40, 40), report, (0.0,) * len(LABEL_KEYS), pass_index=0)


def test_text_is_the_report_or_one_seeded_sentence():
    report = {"findings": "Heart is normal. Lungs are clear.", "impression": "No acute disease.", "indication": ""}
    assert report_text(report) == "Heart is normal. Lungs are clear. No acute disease."
    assert report_text({"findings": "", "impression": "Clear."}) == "Clear."
    sentences = {"Heart is normal.", "Lungs are clear.", "No acute disease."}
    picks = [choose_text(record(report), "sentence", seed=0, epoch=e) for e in range(30)]
    assert set(picks) == sentences
    assert picks == [choose_text(record(report), "sentence", seed=0, epoch=e) for e in range(30)]


def test_parse_rejects_what_would_break_a_batch():
    good = {"__key__": "CXR1", "frontal.png": png(8, 8), "report.json": b'{"findings": "Clear.", "impression": ""}',
            "labels.json": json.dumps({k: 0 for k in LABEL_KEYS}).encode()}
    counter = SkipCounter()
    assert parse(good, 0, counter).key == "CXR1"
    bad = [{**good, "report.json": b'{"findings": "", "impression": " "}'},
           {**good, "frontal.png": b"\x89PNG not really"},
           {**good, "labels.json": b"[1, 2]"}]
    assert all(parse(sample, 0, counter) is None for sample in bad)
    assert counter.by_reason == {"malformed": 3} and counter.take() == 3 and counter.take() == 0


def png_with_garbage_pixels(width: int, height: int) -> bytes:
    """Intact PNG chunks (CRCs right, so verify() passes) around pixel data that is not zlib."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"not zlib" * 8) + chunk(b"IEND", b"")


def test_an_image_that_passes_the_cheap_check_but_fails_to_decode_is_counted():
    garbage = png_with_garbage_pixels(40, 40)
    images.verify_image(garbage, "png")
    broken = Record("CXR9", garbage, {"findings": "Clear."}, (0.0,) * 6, 0)
    counter = SkipCounter()
    cfg = DataConfig(image_size=40, crop_size=32)
    assert to_example(broken, cfg, train=True, seed=0, epoch=0, counter=counter) is None
    assert counter.by_reason == {"undecodable_image": 1}
    example = to_example(record({"findings": "Clear."}), cfg, train=True, seed=0, epoch=0, counter=counter)
    assert example["image"].shape == (3, 32, 32) and example["text"] == "Clear."


def test_seeds_do_not_depend_on_the_process():
    """Python's hash() of a str changes per process; the seeds must not (workers, resumed runs)."""
    parts = ("augment", 0, 1, "CXR1", 0)
    # Load seeds.py alone: importing the package would pull in torch and take seconds.
    code = ("import importlib.util as u; s = u.spec_from_file_location('seeds', {!r}); m = u.module_from_spec(s); "
            "s.loader.exec_module(m); print(m.seed_of(*{!r}))").format(seeds.__file__, parts)
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert int(other.stdout) == seed_of(*parts) != seed_of("augment", 0, 1, "CXR2", 0)


def test_evaluation_streams_split_samples_exactly():
    assert stream_sample_counts([5, 3, 4], 2) == [9, 3]  # shard split: shards 0, 2 and shard 1
    assert stream_sample_counts([5, 3], 4) == [2, 2, 2, 2]  # sample split: 8 samples modulo 4
    assert stream_sample_counts(None, 2) is None
