"""One decode path for pack and loader: every mode to 8 bits without clipping, PNG/JPEG only, a size cap."""
import io

import numpy as np
import pytest
from PIL import Image

from cmgl_dist.data import images as loader_images
from cmgl_dist.shards import images
from cmgl_dist.shards.images import ImageError, load_image
from helpers import png_bytes


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _sixteen_bit_gradient(low=1000, high=5000, shape=(64, 48)):
    return np.linspace(low, high, shape[0] * shape[1]).reshape(shape).astype(np.uint16)


def test_sixteen_bit_grey_is_windowed_from_its_own_range_not_saturated(tmp_path):
    pixels = _sixteen_bit_gradient()
    path = _write(tmp_path, "a.png", png_bytes(pixels))
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(load_image(path, 64))
    assert out.min() == 0 and out.max() == 255
    assert (out == 255).mean() < 0.05 and abs(out.mean() - 127.5) < 5
    assert (np.diff(out.astype(int).ravel()) >= 0).all()  # order kept: a gradient stays a gradient


def test_the_loader_decodes_through_the_same_function():
    data = png_bytes(_sixteen_bit_gradient())
    grey = np.asarray(loader_images.decode_grey(data))
    assert grey.dtype == np.uint8 and grey.min() == 0 and grey.max() == 255
    assert (grey == 255).mean() < 0.05


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"])
def test_every_mode_gives_eight_bit_grey_that_keeps_contrast(tmp_path, mode):
    base = Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (40, 1)))  # 64 wide gradient
    image = base.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(base).astype(np.uint16) * 257)
    out = io.BytesIO()
    image.save(out, format="PNG")
    grey = np.asarray(images.open_grey(out.getvalue()))
    assert grey.dtype == np.uint8 and grey.shape == (40, 64)
    assert grey.min() == 0 and grey.max() >= 250


def test_a_constant_sixteen_bit_image_does_not_divide_by_zero():
    grey = np.asarray(images.open_grey(png_bytes(np.full((32, 32), 3000, dtype=np.uint16))))
    assert grey.dtype == np.uint8 and len(np.unique(grey)) == 1


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "TIFF", "EPS"])
def test_only_png_and_jpeg_are_decoded(tmp_path, fmt):
    out = io.BytesIO()
    Image.fromarray(np.full((32, 32), 100, dtype=np.uint8)).convert("RGB" if fmt == "EPS" else "L").save(out, format=fmt)
    path = _write(tmp_path, "disguised.png", out.getvalue())
    with pytest.raises(ImageError, match="not a PNG or JPEG"):
        load_image(path, 32)


def test_the_side_cap_is_read_from_the_header_before_decoding(tmp_path, monkeypatch):
    path = _write(tmp_path, "wide.png", png_bytes(np.zeros((20, 3000), dtype=np.uint8)))
    monkeypatch.setattr(images, "MAX_IMAGE_SIDE", 2000)
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self) or Image.Image.load(self))
    with pytest.raises(ImageError, match="image too large: 3000x20"):
        load_image(path, 64)
    assert decoded == []


def test_the_default_side_cap_refuses_a_huge_header(tmp_path):
    # A valid PNG header that claims 60000 x 60000 pixels, with almost no data behind it.
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    with pytest.raises(ImageError, match="image too large"):
        load_image(_write(tmp_path, "bomb.png", data), 64)
