"""Corpus sources for `cmgl pack --source`: one module each, all yielding `CorpusRecord`s.

IU-RR (`--source iurr`, the default) keeps its own path in `shards/pack.py` (reports choose
their frontal and lateral images), so its shards stay byte-identical to earlier packs.
"""
from cmgl_dist.shards.sources import chexpert, generic_csv, mimic, nih, padchest
from cmgl_dist.shards.sources.record import (UNCERTAIN_POLICIES, CorpusRecord, Exclusions, SourceError,
                                             SourceInput)

SOURCES = {module.NAME: module for module in (nih, chexpert, mimic, padchest, generic_csv)}
SOURCE_NAMES = ("iurr", *SOURCES)

__all__ = ["SOURCES", "SOURCE_NAMES", "UNCERTAIN_POLICIES", "CorpusRecord", "Exclusions", "SourceError",
           "SourceInput"]
