"""The sample schema shared by the packer, the loader and evaluation (documented in SCHEMA.md)."""
import re

# The five pathologies the paper evaluates, in table order, plus `normal` (labels.json only).
PATHOLOGIES = ("atelectasis", "cardiomegaly", "edema", "pleural_effusion", "consolidation")
LABEL_KEYS = PATHOLOGIES + ("normal",)

SPLITS = ("train", "val", "test")

# Members of one sample in a shard (webdataset groups files by the key before the first dot).
REPORT = "report.json"
LABELS = "labels.json"
META = "meta.json"
MASKS = "masks.npz"

# `cmgl pack --format`: how shard images are encoded -> the member suffix (frontal.png, frontal.jpg, ...).
IMAGE_FORMATS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
DEFAULT_IMAGE_FORMAT = "png"  # lossless; the lossy ones change the pixels a model trains on
FRONTAL_MEMBERS = tuple(f"frontal.{suffix}" for suffix in IMAGE_FORMATS.values())
LATERAL_MEMBERS = tuple(f"lateral.{suffix}" for suffix in IMAGE_FORMATS.values())


def image_member(view: str, image_format: str) -> str:
    """`frontal.jpg` for ("frontal", "jpeg"): the member holding one view in that format."""
    return f"{view}.{IMAGE_FORMATS[image_format]}"

MANIFEST = "manifest.json"


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


SHARD_FILE = re.compile(r"^(train|val|test)-\d{6}\.tar$")  # what shard_name() produces


def shard_entry_problem(name, split) -> "str | None":
    """Why a manifest's shard entry is not a shard of this format (None when it is).

    The one rule every reader applies before a name from a manifest becomes a path, a URL or part
    of a `pipe:` command: a name of the packer's form cannot climb out of its folder or carry shell
    syntax (`x.tar;touch FILE;:`), whoever wrote the manifest."""
    if not isinstance(name, str) or not SHARD_FILE.match(name) or split not in SPLITS:
        return f"name/split {str(name)[:100]!r}/{str(split)[:20]!r} is not a shard of this format"
    return None
