"""Zero-shot prompt sets: severity x subtype x location phrasings per pathology.

Built the way GLoRIA builds its CheXpert prompts (`generate_chexpert_class_prompts`): every
combination of a severity word, a subtype phrase and a location phrase, then a seeded sample
of `n` per class. The vocabulary follows how IU-RR radiologists write these findings.
"""
from __future__ import annotations

import itertools
import random

from cmgl_dist.shards.schema import PATHOLOGIES

# pathology -> (severities, subtypes, locations); "" leaves the slot out.
PROMPT_PARTS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "atelectasis": (
        ("", "mild", "minimal", "subsegmental"),
        ("atelectasis", "linear atelectasis", "bibasilar atelectasis", "platelike atelectasis",
         "streaky opacities consistent with atelectasis"),
        ("", "at the lung bases", "in the left lower lobe", "in the right lower lobe", "in the lingula"),
    ),
    "cardiomegaly": (
        ("", "mild", "moderate", "severe"),
        ("cardiomegaly", "enlargement of the cardiac silhouette", "enlarged heart size",
         "enlarged cardiomediastinal silhouette"),
        ("", "with a widened cardiac contour", "stable from prior"),
    ),
    "edema": (
        ("", "mild", "moderate", "severe", "interstitial"),
        ("pulmonary edema", "vascular congestion and edema", "interstitial edema",
         "perihilar edema"),
        ("", "bilaterally", "in the perihilar regions", "in both lungs"),
    ),
    "pleural_effusion": (
        ("", "small", "moderate", "large", "trace"),
        ("pleural effusion", "pleural fluid", "effusion with blunting of the costophrenic angle"),
        ("", "on the left", "on the right", "bilaterally", "at the lung base"),
    ),
    "consolidation": (
        ("", "focal", "patchy", "dense"),
        ("consolidation", "airspace consolidation", "airspace disease", "infiltrate"),
        ("", "in the right lower lobe", "in the left lower lobe", "in the right upper lobe",
         "in the lingula"),
    ),
}


# pathology -> the words of its prompts that name the finding itself (lower case). Localisation
# scores where these words look, in the prompts and in each image's own report; severity,
# location and filler words ("the", "left") do not name the lesion, and averaging every word's
# map would flatten it (see localisation.py). The plurals and "collapse" ("partial collapse of
# the left upper lobe") are how IU-RR's positive reports name these findings.
FINDING_WORDS: dict[str, frozenset[str]] = {
    "atelectasis": frozenset({"atelectasis", "collapse"}),
    "cardiomegaly": frozenset({"cardiomegaly", "enlargement", "enlarged", "cardiac", "heart", "cardiomediastinal"}),
    "edema": frozenset({"edema", "congestion"}),
    "pleural_effusion": frozenset({"effusion", "effusions", "fluid"}),
    "consolidation": frozenset({"consolidation", "consolidations", "airspace", "infiltrate", "infiltrates"}),
}


def finding_word_positions(words: list[str], pathology: str) -> list[int]:
    """Indices of the words (strings, any case) that name `pathology`."""
    return [i for i, word in enumerate(words) if word.lower() in FINDING_WORDS[pathology]]


# pathology -> statements that the finding is absent, as IU-RR reports phrase them. Used by the
# negation-contrasted zero-shot score (CheXzero's positive-vs-negative prompts): nearly every
# IU-RR report says "no pleural effusion", so a positive prompt alone also matches negated
# mentions.
NEGATIVE_PROMPTS: dict[str, tuple[str, ...]] = {
    "atelectasis": ("no atelectasis", "no evidence of atelectasis", "the lungs are clear",
                    "no focal airspace opacity", "the lungs are well expanded"),
    "cardiomegaly": ("no cardiomegaly", "heart size is normal", "the cardiac silhouette is normal in size",
                     "the cardiomediastinal silhouette is within normal limits", "normal heart size"),
    "edema": ("no pulmonary edema", "no edema", "no vascular congestion", "pulmonary vascularity is normal",
              "no interstitial edema"),
    "pleural_effusion": ("no pleural effusion", "no pleural effusions", "no effusion",
                         "the costophrenic angles are sharp", "no pleural fluid"),
    "consolidation": ("no consolidation", "no focal consolidation", "no airspace disease",
                      "no focal airspace consolidation", "the lungs are clear"),
}


# GLoRIA's own vocabulary (`constants.CHEXPERT_CLASS_PROMPTS`, `eval.prompts=gloria`), its three
# lists per class in its dict's order: for pleural effusion that is severity, location, subtype, so
# its prompts read "small left bilateral pleural effusion". Its spellings are kept ("presistent").
GLORIA_PROMPT_PARTS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "atelectasis": (
        ("", "mild", "minimal"),
        ("subsegmental atelectasis", "linear atelectasis", "trace atelectasis", "bibasilar atelectasis",
         "retrocardiac atelectasis", "bandlike atelectasis", "residual atelectasis"),
        ("at the mid lung zone", "at the upper lung zone", "at the right lung zone", "at the left lung zone",
         "at the lung bases", "at the right lung base", "at the left lung base", "at the bilateral lung bases",
         "at the left lower lobe", "at the right lower lobe"),
    ),
    "cardiomegaly": (
        ("",),
        ("cardiac silhouette size is upper limits of normal", "cardiomegaly which is unchanged",
         "mildly prominent cardiac silhouette", "portable view of the chest demonstrates stable cardiomegaly",
         "portable view of the chest demonstrates mild cardiomegaly", "persistent severe cardiomegaly",
         "heart size is borderline enlarged", "cardiomegaly unchanged", "heart size is at the upper limits of normal",
         "redemonstration of cardiomegaly",
         "ap erect chest radiograph demonstrates the heart size is the upper limits of normal",
         "cardiac silhouette size is mildly enlarged",
         "mildly enlarged cardiac silhouette, likely left ventricular enlargement. other chambers are less prominent",
         "heart size remains at mildly enlarged", "persistent cardiomegaly with prominent upper lobe vessels"),
        ("",),
    ),
    "edema": (
        ("", "mild", "improvement in", "presistent", "moderate", "decreased"),
        ("pulmonary edema", "trace interstitial edema", "pulmonary interstitial edema"),
        ("",),
    ),
    "pleural_effusion": (
        ("", "small", "stable", "large", "decreased", "increased"),
        ("left", "right", "tiny"),
        ("bilateral pleural effusion", "subpulmonic pleural effusion", "bilateral pleural effusion"),
    ),
    "consolidation": (
        ("", "increased", "improved", "apperance of"),
        ("bilateral consolidation", "reticular consolidation", "retrocardiac consolidation", "patchy consolidation",
         "airspace consolidation", "partial consolidation"),
        ("at the lower lung zone", "at the upper lung zone", "at the left lower lobe", "at the right lower lobe",
         "at the left upper lobe", "at the right uppper lobe", "at the right lung base", "at the left lung base"),
    ),
}
PROMPT_VOCABULARIES = {"cmgl": PROMPT_PARTS, "gloria": GLORIA_PROMPT_PARTS}


def all_prompts(pathology: str, vocabulary: str = "cmgl") -> list[str]:
    """Every severity x subtype x location combination for one pathology. GLoRIA's vocabulary is
    joined as its `generate_chexpert_class_prompts` joins it, f"{a} {b} {c}" (an empty slot leaves
    two spaces, which no tokenizer sees), its repeated effusion subtype included."""
    first, second, third = PROMPT_VOCABULARIES[vocabulary][pathology]
    if vocabulary == "gloria":
        return [f"{a} {b} {c}" for a in first for b in second for c in third]
    return [" ".join(part for part in combo if part) for combo in itertools.product(first, second, third)]


def class_prompts(n: int | None = 20, seed: int = 0, vocabulary: str = "cmgl") -> dict[str, list[str]]:
    """pathology -> `n` prompts (seeded sample; all of them when n is None), PATHOLOGIES order;
    `vocabulary` (eval.prompts): cmgl's IU-RR phrasing or GLoRIA's CheXpert one."""
    rng = random.Random(seed)
    out = {}
    for pathology in PATHOLOGIES:
        prompts = all_prompts(pathology, vocabulary)
        out[pathology] = prompts if n is None or n >= len(prompts) else sorted(rng.sample(prompts, n))
    return out
