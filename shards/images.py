"""Real IU-RR images: locate by image id, extract from Open-i's archive, validate, resize, encode.

Every sample image is re-encoded as an 8-bit grayscale PNG whose longest side is `size`
(aspect kept), whatever the source format (PNG or JPEG, RGB or grayscale).
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

from PIL import Image

from cmgl_dist.atomic import atomic_path
from cmgl_dist.shards.archive import read_member, tolerant_members
from cmgl_dist.shards.reports import Skip

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# zlib level for PNGs in shards. On phantoms (benchmarks/results/png_compress_level.csv): level 1
# is ~2x faster than PIL's default 6 for ~8% more bytes; level 0 is faster again but 50% larger.
PNG_COMPRESS_LEVEL = 1


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


def extract_archive(archive: str | Path, dest: str | Path, wanted: set[str]) -> list[Skip]:
    """Extract the wanted image ids from a tar(.gz) into `dest` (one pass, atomic per file).

    Files already in `dest` are kept, so a rerun after an interruption resumes. Returns a skip
    per member that could not be read (and one if the archive ends early).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    skips: list[Skip] = []
    with tarfile.open(archive, "r:*") as tar:
        for member in tolerant_members(tar, lambda message: skips.append(Skip("", message))):
            image_id = image_id_of(member.name)
            if not member.isfile() or image_id not in wanted:
                continue
            target = dest / (image_id + Path(member.name).suffix.lower())
            if target.exists():
                continue
            data = read_member(tar, member)
            if isinstance(data, str):
                skips.append(Skip(image_id.split("_", 1)[0], data, image_id))
                continue
            with atomic_path(target) as tmp:
                tmp.write_bytes(data)
    return skips


def resize_longest(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image if new == image.size else image.resize(new, Image.BILINEAR, reducing_gap=2.0)


def load_image(path: str | Path, size: int) -> Image.Image:
    """Decode, check and resize one image; raises ImageError for anything unusable."""
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("L", (size, size))  # decode at a reduced scale: much faster
            image.load()  # a truncated file fails here, not at open
            gray = image.convert("L")
    except FileNotFoundError:
        raise ImageError("missing file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"unreadable image: {e}") from None
    if min(gray.size) < 16:
        raise ImageError(f"image too small: {gray.size}")
    return resize_longest(gray, size)


def encode_png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return out.getvalue()
