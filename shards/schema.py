"""The sample schema shared by the packer, the loader and evaluation (documented in SCHEMA.md)."""
import re

# The five pathologies the paper evaluates, in table order, plus `normal` (labels.json only).
PATHOLOGIES = ("atelectasis", "cardiomegaly", "edema", "pleural_effusion", "consolidation")
LABEL_KEYS = PATHOLOGIES + ("normal",)

SPLITS = ("train", "val", "test")

# Members of one sample in a shard (webdataset groups files by the key before the first dot).
FRONTAL = "frontal.png"
LATERAL = "lateral.png"
REPORT = "report.json"
LABELS = "labels.json"
META = "meta.json"
MASKS = "masks.npz"

MANIFEST = "manifest.json"


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


SHARD_FILE = re.compile(r"^(train|val|test)-\d{6}\.tar$")  # what shard_name() produces
