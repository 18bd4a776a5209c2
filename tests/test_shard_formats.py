"""`cmgl pack --format png|jpeg|webp`: recorded, checked by verify, decoded by the loader (JPEG in
the DCT domain when at most half the stored size is needed), byte-identical across workers."""
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmgl_dist.config import DataConfig
from cmgl_dist.data import images as loader_images
from cmgl_dist.data.samples import SkipCounter, parse, to_example
from cmgl_dist.shards.bounds import OutOfBounds
from cmgl_dist.shards.images import DEFAULT_QUALITY, open_grey
from cmgl_dist.shards.outdir import CLAIM, OutRefused
from cmgl_dist.shards.pack import pack
from cmgl_dist.shards.schema import MANIFEST
from cmgl_dist.shards.verify import verify

ARGS = dict(image_size=64, samples_per_shard=8, seed=3, limit=24)


def _pack(tmp, reports, metadata, **kw):
    return pack(reports=reports, images="phantom", metadata=metadata, out=tmp, **{**ARGS, "workers": 1, **kw})


def _members(folder: Path, manifest: dict) -> dict[str, dict[str, bytes]]:
    out = {}
    for shard in manifest["shards"]:
        with tarfile.open(folder / shard["name"]) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                out.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return out


@pytest.mark.parametrize("fmt,suffix,pil", [("jpeg", "jpg", "JPEG"), ("webp", "webp", "WEBP")])
def test_a_lossy_pack_records_its_format_verifies_and_decodes_near_the_png_pixels(
        tmp_path, reports_tgz, metadata_csv, fmt, suffix, pil):
    png = _pack(tmp_path / "png", reports_tgz, metadata_csv)
    lossy = _pack(tmp_path / fmt, reports_tgz, metadata_csv, image_format=fmt)
    assert png["arguments"]["image_format"] == "png" and png["arguments"]["quality"] is None
    assert lossy["arguments"]["image_format"] == fmt and lossy["arguments"]["quality"] == DEFAULT_QUALITY
    assert lossy["inputs"]["arguments"]["image_format"] == fmt  # the pack's provenance
    assert verify(tmp_path / fmt) == []
    png_samples, lossy_samples = _members(tmp_path / "png", png), _members(tmp_path / fmt, lossy)
    assert png_samples.keys() == lossy_samples.keys()
    for key, members in lossy_samples.items():
        assert f"frontal.{suffix}" in members and "frontal.png" not in members
        assert Image.open(io.BytesIO(members[f"frontal.{suffix}"])).format == pil
        a = np.asarray(open_grey(png_samples[key]["frontal.png"]), dtype=float)
        b = np.asarray(open_grey(members[f"frontal.{suffix}"]), dtype=float)
        assert a.shape == b.shape and 0 < np.abs(a - b).mean() < 4.0  # lossy, but close at quality 90
    # the loader takes either member
    cfg = DataConfig(image_size=64, crop_size=48)
    counter = SkipCounter()
    key = sorted(lossy_samples)[0]
    record = parse({"__key__": key, **lossy_samples[key]}, 0, counter)
    example = to_example(record, cfg, train=True, seed=0, epoch=0, counter=counter)
    assert example["image"].shape == (3, 48, 48) and not counter.by_reason


def test_verify_checks_the_format_the_manifest_records(tmp_path, reports_tgz, metadata_csv):
    _pack(tmp_path, reports_tgz, metadata_csv, image_format="jpeg")
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["arguments"]["image_format"] = "png"
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    problems = verify(tmp_path)
    assert problems and all("missing frontal.png" in p or "unexpected member frontal.jpg" in p for p in problems)
    manifest["arguments"]["image_format"] = "gif"
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    assert any("arguments.image_format 'gif'" in p for p in verify(tmp_path))


def test_a_jpeg_pack_is_byte_identical_serial_or_parallel(tmp_path, reports_tgz, metadata_csv):
    one = _pack(tmp_path / "one", reports_tgz, metadata_csv, image_format="jpeg", quality=75)
    two = _pack(tmp_path / "two", reports_tgz, metadata_csv, image_format="jpeg", quality=75, workers=2)
    assert one["shards"] == two["shards"] and one["arguments"]["quality"] == 75


def test_another_format_is_another_pack(tmp_path, reports_tgz, metadata_csv):
    _pack(tmp_path, reports_tgz, metadata_csv)
    with pytest.raises(OutRefused, match="image_format: png -> jpeg"):
        _pack(tmp_path, reports_tgz, metadata_csv, image_format="jpeg")
    replaced = _pack(tmp_path, reports_tgz, metadata_csv, image_format="jpeg", replace=True)
    assert replaced["arguments"]["image_format"] == "jpeg" and verify(tmp_path) == []
    names = [name for t in tmp_path.glob("*.tar") for name in tarfile.open(t).getnames()]
    assert names and all(name.endswith(".frontal.jpg") for name in names if ".frontal." in name)


def test_quality_is_for_lossy_formats_only(tmp_path, reports_tgz, metadata_csv):
    with pytest.raises(OutOfBounds, match="--quality is for --format jpeg or webp"):
        _pack(tmp_path, reports_tgz, metadata_csv, quality=80)
    with pytest.raises(OutOfBounds, match="--quality 0: must be between 1 and 100"):
        _pack(tmp_path, reports_tgz, metadata_csv, image_format="webp", quality=0)
    cmgl = str(Path(sys.executable).with_name("cmgl"))
    done = subprocess.run([cmgl, "pack", "--images", "phantom", "--reports", str(reports_tgz), "--out",
                           str(tmp_path / "cli"), "--quality", "80"], capture_output=True, text=True)
    assert done.returncode == 2 and "--quality is for --format jpeg or webp" in done.stderr
    assert "Traceback" not in done.stderr


def _jpeg(size: tuple[int, int]) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, size=size[::-1], dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def test_jpeg_decodes_at_a_reduced_scale_when_at_most_half_is_needed():
    square, wide = _jpeg((512, 512)), _jpeg((512, 400))
    assert open_grey(square).size == (512, 512)
    assert open_grey(square, draft_size=256).size == (256, 256)  # DCT-domain 1/2
    assert open_grey(square, draft_size=100).size == (128, 128)  # 1/4: the smallest still >= 100
    assert open_grey(square, draft_size=257).size == (512, 512)  # more than half: full decode
    assert open_grey(wide, draft_size=256).size == (256, 200)  # longest side decides, not a square box
    # the loader asks for data.image_size; the square it builds is that size either way
    assert loader_images.decode_grey(square, 256).size == (256, 256)
    assert loader_images.square_resize(loader_images.decode_grey(wide, 256), 256).size == (256, 256)


def test_a_member_whose_bytes_are_another_format_is_a_malformed_sample():
    counter = SkipCounter()
    labels = json.dumps({k: 0 for k in ("atelectasis", "cardiomegaly", "edema", "pleural_effusion",
                                        "consolidation", "normal")}).encode()
    sample = {"__key__": "CXR1", "frontal.png": _jpeg((64, 64)), "labels.json": labels,
              "report.json": b'{"findings": "Clear."}'}
    assert parse(sample, 0, counter) is None and counter.by_reason == {"malformed": 1}
    sample["frontal.jpg"] = sample.pop("frontal.png")
    assert parse(sample, 0, counter) is not None


def test_a_pack_claimed_before_formats_existed_is_a_png_pack(tmp_path, reports_tgz, metadata_csv):
    first = _pack(tmp_path, reports_tgz, metadata_csv)
    claim = tmp_path / CLAIM
    recorded = json.loads(claim.read_text())
    for name in ("image_format", "quality"):
        del recorded["arguments"][name]
    claim.write_text(json.dumps(recorded))
    assert _pack(tmp_path, reports_tgz, metadata_csv)["shards"] == first["shards"]  # resumed, not refused
    claim.write_text(json.dumps(recorded))
    with pytest.raises(OutRefused, match="image_format: png -> webp"):
        _pack(tmp_path, reports_tgz, metadata_csv, image_format="webp")
