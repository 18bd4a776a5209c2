"""Bounds on `cmgl pack`'s (and `cmgl sweep`'s) numeric arguments, checked before any work (argparse: exit 2).

`image_size` is capped because a phantom or a resized image holds size^2 pixels per worker;
the other caps only keep a typo from meaning hours of work or thousands of processes.
"""
from __future__ import annotations

import argparse

BOUNDS = {
    "image_size": (16, 4096),
    "samples_per_shard": (1, 100_000),
    "workers": (1, 256),
    "limit": (1, 10_000_000),
    "num_cpus": (1, 4096),   # sweep: a Ray session with no CPU never runs a job
    "retries": (0, 10),      # sweep: a negative count would retry for ever
    "quality": (1, 100),  # JPEG / WebP quality (Pillow's scale)
}


class OutOfBounds(ValueError):
    pass


def check_bound(name: str, value: int | None) -> None:
    """Raise OutOfBounds naming the flag and its range; None (not given) always passes."""
    low, high = BOUNDS[name]
    if value is not None and not low <= value <= high:
        raise OutOfBounds(f"--{name.replace('_', '-')} {value}: must be between {low} and {high}")


def check_bounds(**values: int | None) -> None:
    for name, value in values.items():
        check_bound(name, value)


def bounded(name: str):
    """An argparse `type` for the argument `name`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
            check_bound(name, value)
        except (ValueError, OutOfBounds) as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return value
    parse.__name__ = name
    return parse


def check_format(image_format: str, quality: int | None) -> int | None:
    """--format and --quality checked together; the quality a lossy format is written at
    (its default when not given), None for PNG (lossless: a quality would mean nothing)."""
    from cmgl_dist.shards.images import DEFAULT_QUALITY, PIL_FORMATS

    if image_format not in PIL_FORMATS:
        raise OutOfBounds(f"--format {image_format!r}: must be one of {', '.join(PIL_FORMATS)}")
    if image_format == "png":
        if quality is not None:
            raise OutOfBounds("--quality is for --format jpeg or webp; PNG is lossless")
        return None
    check_bound("quality", quality)
    return DEFAULT_QUALITY if quality is None else quality
