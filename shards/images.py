"""Real IU-RR images: locate by image id, extract from Open-i's archive, validate, resize, encode.

Every sample image is re-encoded as an 8-bit grayscale image whose longest side is `size`
(aspect kept), in the pack's `--format`: PNG (lossless, the default), JPEG or WebP at
`--quality`. Only PNG, JPEG and WebP are decoded (no other Pillow plugin is ever asked, so no EPS
and no Ghostscript), and the size is checked from the header before any pixel is decoded.
`open_grey` is the one decode path: the packer and the training loader both use it. A JPEG
asked for at most half its stored size decodes in the DCT domain at 1/2, 1/4 or 1/8 scale
(Pillow's `draft`), which skips most of the inverse transform's work.

Bit depth: 8-bit modes convert as Pillow does (RGB by luma; alpha dropped; palette looked up;
1-bit to 0/255). Every wider mode is read at its full depth and windowed linearly from the
image's own minimum and maximum to 0..255, so no value is clipped and no level is lost (a
constant image becomes 0): 16-bit grayscale (the usual DICOM export), 16-bit grey + alpha, RGB
and RGBA (luma, alpha dropped; Pillow itself would keep only their high bytes) and 32-bit
integer or float. Windowing works in blocks of rows, so its memory is a few bytes per pixel
whatever the file's size (the pixel count itself is capped from the header).
"""
from __future__ import annotations

import io
import math
import os
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cmgl_dist.shards.archive import copy_member, read_regular_file, tolerant_members
from cmgl_dist.shards.reports import Skip

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # what DECODERS read: found in folders as when named
# zlib level for PNGs in shards. On phantoms (benchmarks/results/png_compress_level.csv): level 1
# is ~2x faster than PIL's default 6 for ~8% more bytes; level 0 is faster again but 50% larger.
PNG_COMPRESS_LEVEL = 1
DECODERS = ("PNG", "JPEG", "WEBP")
# --format -> Pillow's format name; JPEG/WebP quality when --quality is not given.
PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
DEFAULT_QUALITY = 90
# Longest side accepted, read from the header. Chest X-rays are at most ~4,300 px a side; the
# cap keeps a forged header from asking for gigabytes (Pillow's own bomb limit is 179 Mpx).
MAX_IMAGE_SIDE = 10_000
MIN_IMAGE_SIDE = 16
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
# 16-bit PNG raw modes Pillow narrows to 8 bits -> the raw modes that recover every byte.
_PNG_WIDE_RAWMODES = {"RGB;16B": ("RGB;16B", "RGB;16L"), "RGBA;16B": ("RGBA;16B", "RGBA;16L"),
                      "LA;16B": ("RGBA",)}


class ImageError(ValueError):
    pass


def index_folder(folder: str | Path) -> dict[str, Path]:
    """image id (file stem) -> path, for every PNG/JPEG under `folder`."""
    found: dict[str, Path] = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            found.setdefault(path.stem, path)
    return found


def image_id_of(member_name: str) -> str | None:
    path = Path(member_name)
    return path.stem if path.suffix.lower() in IMAGE_SUFFIXES else None


def extract_archive(archive: str | Path, dest: str | Path, wanted: set[str]) -> tuple[dict[str, Path], list[Skip]]:
    """Extract the wanted image ids from a tar(.gz) into `dest` (one streaming pass, atomic per file).

    Every wanted member is written afresh, so `dest` never serves an image from another archive;
    files in `dest` this archive did not provide are removed (the folder is the packer's own).
    Returns image id -> staged path, and a skip per member that could not be read (and one if
    the archive ends early).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    staged: dict[str, Path] = {}
    skips: list[Skip] = []
    with tarfile.open(archive, "r:*") as tar:
        for member in tolerant_members(tar, lambda message: skips.append(Skip("", message))):
            image_id = image_id_of(member.name)
            if image_id not in wanted or image_id in staged:
                continue
            target = dest / (image_id + Path(member.name).suffix.lower())
            if problem := copy_member(tar, member, target):
                skips.append(Skip(image_id.split("_", 1)[0], problem, image_id))
                continue
            staged[image_id] = target
    keep = set(staged.values())
    for path in dest.iterdir():
        if path not in keep and path.is_file():
            path.unlink()
    return staged, skips


def resize_longest(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image if new == image.size else image.resize(new, Image.BILINEAR, reducing_gap=2.0)


def open_grey(source: str | Path | bytes, draft_size: int | None = None) -> Image.Image:
    """Decode a PNG, JPEG or WebP (file path or bytes) into an 8-bit grayscale image, turned upright
    as its EXIF orientation says; ImageError if unusable.

    `draft_size` lets a JPEG decode at a reduced scale (much faster) when only that many pixels
    are needed on its longest side; the result's longest side is then at least `draft_size`.
    """
    try:
        with _open(source) as image:
            _check_header_size(image.size)
            if image.format == "JPEG" and draft_size:
                image.draft("L", draft_box(image.size, draft_size))
            gray = to_grey8(image, source)  # decodes; a truncated file fails here, not at open
            orientation = _exif_orientation(image)  # after decoding: a PNG's EXIF read loads the image
        gray = gray.transpose(_UPRIGHT[orientation]) if orientation in _UPRIGHT else gray
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError("missing file") from None
    except UnidentifiedImageError:
        raise ImageError("unreadable image: not a PNG or JPEG file") from None
    except Image.DecompressionBombError as e:  # the header alone is over Pillow's limit
        raise ImageError(f"image too large: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"unreadable image: {e}") from None
    if min(gray.size) < MIN_IMAGE_SIDE:
        raise ImageError(f"image too small: {gray.size}")
    return gray


# EXIF orientation -> the transpose that shows the image upright (Pillow's ImageOps.exif_transpose)
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}
_ORIENTATION_TAG = 0x0112


def _exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation a camera or phone wrote (1: as stored); an unreadable EXIF block counts as 1."""
    try:
        return int(image.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - a damaged EXIF block does not make the pixels unreadable
        return 1


def draft_box(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """The smallest (w, h) a draft may shrink `size` to and still give `longest` on its longest side
    (Pillow keeps each side at least the box's; a square box would refuse a wide image's scale)."""
    scale = longest / max(size)
    return max(1, math.ceil(size[0] * scale)), max(1, math.ceil(size[1] * scale))


def _check_header_size(size: tuple[int, int]) -> None:
    if max(size) > MAX_IMAGE_SIDE:
        raise ImageError(f"image too large: {size[0]}x{size[1]} (longest side cap {MAX_IMAGE_SIDE})")


def _open(source: str | Path | bytes) -> Image.Image:
    return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=DECODERS)


def to_grey8(image: Image.Image, source: str | Path | bytes | None = None) -> Image.Image:
    """8-bit grayscale of an opened image; wider modes windowed from their own range (module docstring).
    `source` (what `image` was opened from) lets a 16-bit colour PNG be read at full depth."""
    wide = _wide_png_plane(image, source)
    if wide is not None:
        return _window(wide)
    image.load()
    if image.mode not in _WIDE_MODES:
        return image.convert("L")
    return _window(np.asarray(image))


def _wide_png_plane(image: Image.Image, source) -> np.ndarray | None:
    """A 16-bit PNG with colour or alpha at full depth, as one grey plane; None for any other image.

    Pillow opens such a PNG as an 8-bit mode and unpacks only the high byte of each sample. The
    file is decoded again keeping the low bytes (`;16L` read on big-endian data), or, for grey +
    alpha, as RGBA bytes (4 bytes a pixel either way, so the row filters agree), and the bytes
    are put back together.
    """
    rawmode = image.tile[0][3] if image.format == "PNG" and len(image.tile) == 1 else None
    if source is None or rawmode not in _PNG_WIDE_RAWMODES:
        return None
    channels = []
    for wanted in _PNG_WIDE_RAWMODES[rawmode]:
        with _open(source) as again:
            codec, extents, offset, _ = again.tile[0]
            again.tile = [(codec, extents, offset, wanted)]
            again.load()
            channels.append(np.asarray(again))
    if rawmode == "LA;16B":  # RGBA bytes: grey high, grey low, alpha high, alpha low
        (both,) = channels
        return both[..., 0].astype(np.uint16) << 8 | both[..., 1]
    return _luma16(*channels)


def _luma16(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma (Pillow's RGB -> L weights) of 16-bit R, G, B split into bytes; float32, by row blocks."""
    grey = np.empty(high.shape[:2], dtype=np.float32)
    for rows in _row_blocks(grey.shape):
        rgb = (high[rows, :, :3].astype(np.float32) * 256 + low[rows, :, :3]) / 1000
        grey[rows] = rgb[..., 0] * 299 + rgb[..., 1] * 587 + rgb[..., 2] * 114
    return grey


def grey_from_wide(pixels: np.ndarray) -> Image.Image:
    """8-bit grey of raw integer pixels wider than 8 bits, [H, W] or [H, W, C] (C 1, 3 or 4), as a
    file of that depth decodes: colour by luma (alpha dropped), then windowed from its own range."""
    if pixels.ndim == 3:
        if pixels.shape[2] == 1:
            pixels = pixels[..., 0]
        else:
            rgb = pixels[..., :3].astype(np.float64) / 1000
            pixels = rgb[..., 0] * 299 + rgb[..., 1] * 587 + rgb[..., 2] * 114
    return _window(pixels)


def _row_blocks(shape: tuple[int, ...], pixels: int = 1 << 16):
    step = max(1, pixels // max(1, shape[1]))
    return (slice(top, top + step) for top in range(0, shape[0], step))


def _window(pixels: np.ndarray) -> Image.Image:
    """Linear window of a wide grey plane from its own min..max to 0..255, in row blocks (bounded memory)."""
    low, high = float(pixels.min()), float(pixels.max())
    scale = 255.0 / (high - low) if high > low else 0.0
    out = np.empty(pixels.shape, dtype=np.uint8)
    for rows in _row_blocks(pixels.shape):
        out[rows] = np.rint((pixels[rows].astype(np.float64) - low) * scale)
    return Image.fromarray(out, "L")


def load_image(path: str | Path, size: int) -> Image.Image:
    """Read (a regular file of at most 64 MiB, links not followed), decode, check and resize one
    image; raises ImageError for anything unusable."""
    if not os.path.lexists(path):
        raise ImageError("missing file")
    data = read_regular_file(Path(path))
    if isinstance(data, str):  # not a regular file, over the cap, unreadable
        raise ImageError(data.replace("member too large", "image too large"))
    return resize_longest(open_grey(data, draft_size=size), size)


def encode_image(image: Image.Image, image_format: str, quality: int | None = None) -> bytes:
    """`image` as a shard member in `image_format` (png, jpeg, webp): no timestamps, so equal
    pixels give equal bytes with the same Pillow build (the manifest records its version)."""
    out = io.BytesIO()
    if image_format == "png":
        image.save(out, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        image.save(out, format=PIL_FORMATS[image_format], quality=quality or DEFAULT_QUALITY)
    return out.getvalue()
