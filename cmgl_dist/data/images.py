"""Image bytes (PNG, JPEG or WebP, as packed) -> a normalised [3, crop, crop] float tensor, following GLoRIA's image recipe.

Longest side resized to `image_size` (aspect kept), zero-padded to a centred square, then a crop
of `crop_size`: random for training (plus a small affine and brightness/contrast jitter when
`augment`), centred for evaluation. GLoRIA's pretraining config uses the random crop alone; the
affine and the jitter are the optional steps of its `build_transformation`, here on with
`data.augment` and off without it (a centred crop then); `data.augmentation=random_crop` keeps the
crop alone, as GLoRIA's pretraining config. The grey image is normalised with each ImageNet
channel's statistics (GLoRIA: 0.5/0.5, `data.normalisation=half`), which repeats the one channel to
the three an ImageNet backbone expects. `data.resize=area` resizes as GLoRIA (INTER_AREA).

Every random choice is drawn from the `random.Random` passed in, which the caller seeds per
sample; nothing here touches a global RNG, so a sample's view is reproducible on resume.
"""
from __future__ import annotations

import io
import math
import random
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from cmgl_dist.shards.images import DECODERS, PIL_FORMATS, open_grey
from cmgl_dist.shards.schema import IMAGE_FORMATS

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
HALF = 0.5  # GLoRIA's transforms.norm 'half': Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

# Small, anatomy-preserving perturbations (no flips: left/right matters in a chest X-ray).
MAX_ROTATION_DEGREES = 10.0
MAX_TRANSLATE_FRACTION = 0.0625
SCALE_RANGE = (0.95, 1.05)
JITTER_RANGE = (0.9, 1.1)  # brightness and contrast factors


def verify_image(data: bytes, suffix: str) -> None:
    """Cheap structural check without inflating pixels: the format its member name says, and for
    a PNG its signature, chunk CRCs and no truncation (JPEG and WebP: the header)."""
    expected = PIL_FORMATS[next(f for f, s in IMAGE_FORMATS.items() if s == suffix)]
    with Image.open(io.BytesIO(data), formats=DECODERS) as image:
        if image.format != expected:
            raise ValueError(f"a {image.format} image in a .{suffix} member")
        image.verify()


def decode_grey(data: bytes, image_size: int | None = None) -> Image.Image:
    """The packer's decode path (PNG/JPEG/WebP only, header size cap, bit depth windowed); a JPEG
    stored at twice `image_size` or more decodes at a reduced scale (`open_grey`'s draft)."""
    return open_grey(data, draft_size=image_size)


def square_resize(image: Image.Image, image_size: int, resize: str = "bilinear") -> Image.Image:
    """Grey S x S image: longest side to S (aspect kept), centred on a zero square.

    `resize` (data.resize): bilinear (PIL, the short side rounded) or area (GLoRIA's `_resize_img`:
    OpenCV's INTER_AREA, the short side truncated, as `int(w * (S / h))`)."""
    if resize == "area":
        return _square_area(image, image_size)
    width, height = image.size
    scale = image_size / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    square = Image.new("L", (image_size, image_size), 0)
    square.paste(image.resize((new_w, new_h), Image.BILINEAR), ((image_size - new_w) // 2, (image_size - new_h) // 2))
    return square


def _square_area(image: Image.Image, image_size: int) -> Image.Image:
    """GLoRIA's `_resize_img`: the taller side (height on a tie) to S by INTER_AREA, the other
    `int(side * (S / taller))`, zero padding split floor before / ceil after."""
    width, height = image.size
    if height >= width:
        new_h, new_w = image_size, int(width * (image_size / height))
    else:
        new_h, new_w = int(height * (image_size / width)), image_size
    resized = area_resize(np.asarray(image.convert("L")), max(1, new_h), max(1, new_w))
    square = np.zeros((image_size, image_size), np.uint8)
    top, left = (image_size - resized.shape[0]) // 2, (image_size - resized.shape[1]) // 2
    square[top:top + resized.shape[0], left:left + resized.shape[1]] = resized
    return Image.fromarray(square, mode="L")


def area_resize(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [H, W] -> [height, width] as OpenCV's INTER_AREA shrinks: each output pixel is the mean of
    the source box it covers, source pixels weighted by their overlap with it (whole pixels for an
    integer factor), rounded to the nearest level. An axis that grows is interpolated linearly
    (pixel centres aligned) instead: OpenCV's own rule for enlarging under INTER_AREA is not
    reproduced, and GLoRIA's images (CheXpert, 320 px and up, to 256) only shrink."""
    rows = _axis_weights(pixels.shape[0], height)
    columns = _axis_weights(pixels.shape[1], width)
    out = rows @ pixels.astype(np.float64) @ columns.T
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _axis_weights(size: int, new_size: int) -> np.ndarray:
    """[new_size, size]: the row-stochastic weights of one axis (box overlaps, or linear to grow)."""
    if new_size <= size:
        scale = size / new_size
        start = np.arange(new_size)[:, None] * scale
        source = np.arange(size)[None, :]
        overlap = np.minimum(start + scale, source + 1) - np.maximum(start, source)
        return np.clip(overlap, 0.0, None) / scale
    centre = np.clip((np.arange(new_size) + 0.5) * size / new_size - 0.5, 0, size - 1)
    low = np.floor(centre).astype(int)
    high = np.minimum(low + 1, size - 1)
    weights = np.zeros((new_size, size))
    np.add.at(weights, (np.arange(new_size), low), 1 - (centre - low))
    np.add.at(weights, (np.arange(new_size), high), centre - low)
    return weights


def train_view(square: Image.Image, crop_size: int, rng: random.Random, augment: bool,
               augmentation: str = "affine") -> torch.Tensor:
    """float [1, C, C] in [0, 1]: random crop, small affine, brightness/contrast jitter
    (`augmentation` affine), the random crop alone (random_crop: GLoRIA's RandomCrop, origin
    uniform over every position), or a centred crop when `augment` is off."""
    if not augment:
        return eval_view(square, crop_size)
    if augmentation == "random_crop":
        left, top = rng.randint(0, square.size[0] - crop_size), rng.randint(0, square.size[1] - crop_size)
        return _to_unit_tensor(square.crop((left, top, left + crop_size, top + crop_size)))
    view = draw_view(rng, square.size[0], crop_size)
    image = affine_crop(square, crop_size, (view.left, view.top), view.angle, (view.shift_x, view.shift_y), view.scale)
    return jitter(_to_unit_tensor(image), view.brightness, view.contrast)


class View(NamedTuple):
    """One training view's random draws (crop origin, rotation, shift, scale, jitter factors)."""
    left: int
    top: int
    angle: float
    shift_x: float
    shift_y: float
    scale: float
    brightness: float
    contrast: float


def draw_view(rng: random.Random, size: int, crop_size: int) -> View:
    """The draws of one training view from a square of `size`, in a fixed order (CPU and device paths)."""
    left, top = rng.randint(0, size - crop_size), rng.randint(0, size - crop_size)
    angle = rng.uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES)
    max_shift = MAX_TRANSLATE_FRACTION * crop_size
    shift_x, shift_y = rng.uniform(-max_shift, max_shift), rng.uniform(-max_shift, max_shift)
    scale = rng.uniform(*SCALE_RANGE)
    return View(left, top, angle, shift_x, shift_y, scale, rng.uniform(*JITTER_RANGE), rng.uniform(*JITTER_RANGE))


def jitter(view: torch.Tensor, brightness, contrast) -> torch.Tensor:
    """Brightness then contrast about each view's own mean, clamped to [0, 1]; `view` [..., 1, C, C],
    the factors scalars or [..., 1, 1, 1] tensors."""
    view = view * brightness
    mean = view.mean(dim=(-3, -2, -1), keepdim=True)
    return ((view - mean) * contrast + mean).clamp_(0.0, 1.0)


def affine_coefficients(crop_size: int, origin: tuple[float, float], angle_degrees: float,
                        shift: tuple[float, float], scale: float) -> tuple[float, ...]:
    """(a, b, c, d, e, f): output pixel (x, y) samples the square at (a x + b y + c, d x + e y + f).

    The crop at `origin`, rotated, shifted and scaled about its centre: origin + centre + R(-angle)
    / scale applied to (output - centre - shift)."""
    angle = math.radians(angle_degrees)
    a, b = math.cos(angle) / scale, math.sin(angle) / scale
    d, e = -b, a
    centre = crop_size / 2
    out_x, out_y = centre + shift[0], centre + shift[1]
    src_x, src_y = origin[0] + centre, origin[1] + centre
    return a, b, src_x - a * out_x - b * out_y, d, e, src_y - d * out_x - e * out_y


def affine_crop(square: Image.Image, crop_size: int, origin: tuple[int, int], angle_degrees: float,
                shift: tuple[float, float], scale: float) -> Image.Image:
    """The crop at `origin`, rotated, shifted and scaled about its centre, in one bilinear resampling
    (PIL's AFFINE maps each output pixel to its source); anything from outside the square is black."""
    coefficients = affine_coefficients(crop_size, origin, angle_degrees, shift, scale)
    return square.transform((crop_size, crop_size), Image.AFFINE, coefficients, resample=Image.BILINEAR, fillcolor=0)


def eval_view(square: Image.Image, crop_size: int) -> torch.Tensor:
    offset = (square.size[0] - crop_size) // 2
    return _to_unit_tensor(square.crop((offset, offset, offset + crop_size, offset + crop_size)))


def _to_unit_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]


def normalise_to_rgb(view: torch.Tensor, normalisation: str = "imagenet") -> torch.Tensor:
    """[1, C, C] in [0, 1] -> [3, C, C], each channel normalised with its ImageNet statistics, or
    (`half`, GLoRIA's norm) with mean 0.5 and std 0.5."""
    if normalisation == "half":
        return ((view - HALF) / HALF).expand(3, -1, -1).clone()
    return (view - IMAGENET_MEAN) / IMAGENET_STD


def eval_image(grey: Image.Image, data_cfg) -> torch.Tensor:
    """[3, crop, crop]: evaluation's view of one grey image under `data_cfg`'s resize, centre crop
    and normalisation (the loader's, the API's and the localisation renderings' one path)."""
    square = square_resize(grey, data_cfg.image_size, data_cfg.resize)
    return normalise_to_rgb(eval_view(square, data_cfg.crop_size), data_cfg.normalisation)
