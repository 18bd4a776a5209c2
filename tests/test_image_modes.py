"""One decode path for every image mode and every image file: 16-bit colour and grey + alpha PNGs
at full depth, memory bounded by pixels, an oversized image counted as too large, links and files
over the cap refused in folders, a dangling link or an --out inside --images no obstacle to a pack,
and distinct images whose ids map onto one key both packed."""
from __future__ import annotations

import json
import os
import struct
import tracemalloc
import zlib

import numpy as np
import pytest

from cmgl_dist.shards import images
from cmgl_dist.shards.images import ImageError, load_image, open_grey
from cmgl_dist.shards.pack import main as pack_main
from cmgl_dist.shards.schema import MANIFEST
from helpers import grey_png


def png16(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG of uint16 pixels: HxW grey, HxWx2 grey + alpha, HxWx3 RGB, HxWx4 RGBA (every
    other row Sub-filtered, so the decoder's per-pixel byte count matters)."""
    pixels = np.asarray(pixels, dtype=">u2")
    h, w = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    raw = pixels.reshape(h, w * channels).view(np.uint8).reshape(h, -1)
    step = 2 * channels
    rows = []
    for y, row in enumerate(raw):
        if y % 2:
            sub = row.copy()
            sub[step:] = row[step:] - row[:-step]  # uint8 arithmetic wraps, as the filter does
            rows.append(b"\x01" + sub.tobytes())
        else:
            rows.append(b"\x00" + row.tobytes())

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[channels], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows)))
            + chunk(b"IEND", b""))


TWELVE_BIT = (np.arange(48 * 64).reshape(48, 64) * 37 % 4096).astype(np.uint16)  # a 12-bit detector's range


@pytest.mark.parametrize("layout", ["grey+alpha", "rgb", "rgba"])
def test_sixteen_bit_colour_and_alpha_keep_every_grey_level(layout):
    grey = np.asarray(open_grey(png16(TWELVE_BIT)))
    opaque = np.full_like(TWELVE_BIT, 65535)
    planes = {"grey+alpha": [TWELVE_BIT, opaque], "rgb": [TWELVE_BIT] * 3, "rgba": [TWELVE_BIT] * 3 + [opaque]}
    decoded = np.asarray(open_grey(png16(np.stack(planes[layout], axis=-1))))
    assert len(np.unique(decoded)) == 256  # not 16 levels from the high bytes alone
    assert np.abs(decoded.astype(int) - grey).max() <= 1  # equal channels: the grey image itself


def test_rgb_sixteen_bit_is_luma_of_the_full_depth_channels():
    red = np.zeros_like(TWELVE_BIT)
    rgb = np.stack([red, TWELVE_BIT, red], axis=-1)
    expected = np.asarray(open_grey(png16(TWELVE_BIT)))  # green alone, windowed: the same up to rounding
    assert np.abs(np.asarray(open_grey(png16(rgb))).astype(int) - expected).max() <= 1


def test_decoding_a_sixteen_bit_image_needs_a_few_bytes_per_pixel():
    side = 1024
    data = png16(np.tile(np.arange(side, dtype=np.uint16) * 60, (side, 1)))
    assert len(data) < 200_000  # a small file ...
    tracemalloc.start()
    try:
        open_grey(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * side * side, f"{peak / side / side:.1f} bytes per pixel"  # ... no float64 copies of it


def test_an_image_over_the_side_cap_is_too_large_not_unreadable():
    wide = grey_png(0, shape=(16, images.MAX_IMAGE_SIDE + 1))
    with pytest.raises(ImageError, match=r"^image too large: 10001x16"):
        open_grey(wide)


def test_links_and_files_over_the_cap_are_not_read_from_folders(tmp_path):
    real = tmp_path / "real.png"
    real.write_bytes(grey_png(0))
    (tmp_path / "link.png").symlink_to(real)
    assert load_image(real, 32).size[0] == 32 or load_image(real, 32).size[1] == 32
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(tmp_path / "link.png", 32)
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as f:
        f.truncate((64 << 20) + 1)  # sparse: no disk used
    with pytest.raises(ImageError, match="^image too large"):
        load_image(huge, 32)


def _csv_corpus(root):
    corpus = root / "corpus"
    corpus.mkdir()
    rows = ["path,atelectasis,cardiomegaly,edema,pleural_effusion,consolidation,text"]
    for n, name in enumerate(["a.b.png", "a_b.png", "c.png", "d.png"]):
        (corpus / name).write_bytes(grey_png(n))
        rows.append(f"{name},{n % 2},0,0,0,0,report {n}")
    (corpus / "labels.csv").write_text("\n".join(rows) + "\n")
    (corpus / "gone.png").symlink_to(corpus / "never-there.png")  # dangling
    return corpus


def test_a_dangling_link_and_an_out_inside_images_do_not_disturb_a_pack(tmp_path, caplog):
    corpus = _csv_corpus(tmp_path)
    argv = ["--source", "csv", "--labels", str(corpus / "labels.csv"), "--images", str(corpus),
            "--out", str(corpus / "packed"), "--image-size", "32", "--samples-per-shard", "2", "--workers", "1"]
    assert pack_main(argv) == 0
    first = json.loads((corpus / "packed" / MANIFEST).read_text())
    assert first["samples_written"] == 4  # a.b.png and a_b.png share an id but are two images
    assert pack_main(argv) == 0, caplog.text  # the same inputs: a resume, not "other inputs"
    assert json.loads((corpus / "packed" / MANIFEST).read_text())["shards_sha256"] == first["shards_sha256"]
    assert not os.path.exists(corpus / "packed" / ".cmgl-lock")
