"""Phantom frontal chest radiographs whose findings follow a report's labels and MeSH locations.

The real IU-RR images cannot be had on every machine; these stand in for them. An image is an
attenuation map (brighter = denser) drawn on a coordinate grid in patient space, u across
(-1 = patient's right, shown on the image's left, as on a PA film), v down (-1 = top):
torso, two lungs with diaphragm domes, mediastinum, heart, ribs and clavicles, then the findings,
then a per-patient exposure curve and noise. Anatomy, pose, exposure and noise vary per patient
and everything is fixed by (seed, uid). Each finding also yields a boolean lesion mask.

Findings (what a reader and a detector can look for):
- cardiomegaly: a wider, taller cardiac silhouette (cardiothoracic ratio 0.56-0.68 vs 0.40-0.48);
- pleural_effusion: dense fluid filling the lung base up to a meniscus that rises laterally,
  blunting the costophrenic angle;
- atelectasis: a near-horizontal plate-like band of opacity;
- edema: bilateral perihilar (bat-wing) haze with a reticular texture;
- consolidation: a focal, dense, lobulated opacity.
Side and zone come from the MeSH qualifiers of the finding's major term (left/right/bilateral;
upper lobe/apex, middle lobe/lingula/hilum, base/lower lobe); a missing side is drawn at random
per patient, a missing zone is the base. Size follows borderline/mild/small/moderate/large/severe.

Incidental findings (no label, no mask) are drawn too, from the MeSH headings most IU-RR reports
without one of the five carry, so that an image shows what its report says even then: calcified
granulomas, nodules, opacities, scars, degenerative spine, scoliosis, tortuous aorta, lines and
surgical material, low or hyperinflated lung volumes, an elevated hemidiaphragm, a hiatal hernia
(`INCIDENTAL_HEADINGS`). A normal report gets none of them.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from cmgl_dist.shards.reports import mesh_qualifiers
from cmgl_dist.shards.schema import PATHOLOGIES

SIDE_SIGN = {"right": -1.0, "left": 1.0}  # patient side -> sign of u
ZONE_WORDS = {
    "upper": ("upper lobe", "apex", "apices", "upper"),
    "middle": ("middle lobe", "lingula", "hilum", "midlung", "middle"),
    "lower": ("base", "lower lobe", "costophrenic angle", "basilar", "lower", "retrocardiac"),
}
SEVERITY_WORDS = {"borderline": 0.6, "mild": 0.8, "small": 0.8, "moderate": 1.2, "large": 1.5, "severe": 1.5}
# MeSH major heading (exact, lower case) -> incidental finding kind; ("lung", qualifier) for
# headings whose meaning is in the qualifier.
INCIDENTAL_HEADINGS = {
    "calcified granuloma": "granuloma", "granulomatous disease": "granuloma", "granuloma": "granuloma",
    "calcinosis": "granuloma", "nodule": "nodule", "mass": "nodule", "opacity": "opacity",
    "density": "opacity", "infiltrate": "opacity", "airspace disease": "opacity", "pneumonia": "opacity",
    "cicatrix": "scar", "markings": "scar", "fibrosis": "scar", "thoracic vertebrae": "spine",
    "spine": "spine", "osteophyte": "spine", "spondylosis": "spine", "scoliosis": "scoliosis",
    "surgical instruments": "device", "catheters, indwelling": "device", "implanted medical device": "device",
    "pacemaker, artificial": "device", "sutures": "device", "stents": "device", "tube, inserted": "device",
    "aorta": "aorta", "aorta, thoracic": "aorta", "atherosclerosis": "aorta", "emphysema": "hyperinflated",
    "pulmonary disease, chronic obstructive": "hyperinflated", "diaphragm": "elevated_diaphragm",
    "hernia, hiatal": "hiatal_hernia",
    ("lung", "hypoinflation"): "low_volumes", ("lung", "hyperdistention"): "hyperinflated",
}
# Kinds that change the anatomy (lung volumes, diaphragm, spine) rather than add a density.
ANATOMY_KINDS = ("low_volumes", "hyperinflated", "elevated_diaphragm", "scoliosis")


@dataclass(frozen=True)
class Finding:
    pathology: str
    sides: tuple[str, ...]  # patient sides, ("right",), ("left",) or both; () for cardiomegaly
    zone: str  # "upper" | "middle" | "lower"; "" for cardiomegaly
    severity: float  # 0.6 (borderline) .. 1.5 (large/severe), 1.0 when unstated


@dataclass(frozen=True)
class Anatomy:
    rotation: float  # radians
    shift: tuple[float, float]
    scale: float
    thorax_half_width: float
    lung_center: float  # |u| of each lung's centre
    lung_half_width: float
    lung_top: float
    base: tuple[float, float]  # diaphragm level (right, left); the right usually sits higher
    dome: float
    heart_center: tuple[float, float]
    heart_ratio: float  # cardiothoracic ratio without cardiomegaly
    rib_period: float
    rib_phase: float
    gain: float
    gamma: float
    offset: float
    noise: float
    spine_curve: float = 0.0  # amplitude of a scoliotic curve of the spine (0: straight)


def patient_rng(seed: int, uid: str, stream: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{uid}:{stream}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def draw_anatomy(rng: np.random.Generator) -> Anatomy:
    u = rng.uniform
    right_base = u(0.42, 0.58)
    return Anatomy(
        rotation=np.deg2rad(u(-6, 6)), shift=(u(-0.06, 0.06), u(-0.05, 0.05)), scale=u(0.92, 1.06),
        thorax_half_width=u(0.74, 0.86), lung_center=u(0.36, 0.42), lung_half_width=u(0.26, 0.32),
        lung_top=u(-0.80, -0.70), base=(right_base, right_base + u(0.02, 0.07)), dome=u(0.08, 0.15),
        heart_center=(u(0.06, 0.14), right_base - u(0.16, 0.22)), heart_ratio=u(0.40, 0.48),
        rib_period=u(0.13, 0.17), rib_phase=u(0, 2 * np.pi),
        gain=u(0.85, 1.15), gamma=u(0.8, 1.25), offset=u(-0.05, 0.05), noise=u(0.012, 0.035),
    )


def plan_findings(labels: dict[str, int], mesh_major, rng: np.random.Generator) -> list[Finding]:
    """One Finding per positive pathology label, placed by its MeSH qualifiers."""
    findings = []
    for pathology in PATHOLOGIES:
        if not labels.get(pathology):
            continue
        words = mesh_qualifiers(mesh_major, pathology)
        severity = max((SEVERITY_WORDS[w] for w in words if w in SEVERITY_WORDS), default=1.0)
        if pathology == "cardiomegaly":  # the heart has no side or zone
            findings.append(Finding(pathology, (), "", severity))
            continue
        sides = tuple(s for s in ("right", "left") if s in words)
        if "bilateral" in words or pathology == "edema":
            sides = ("right", "left")
        elif not sides:
            sides = (("right",), ("left",), ("right", "left"))[rng.integers(3)]
        zone = next((z for z, keys in ZONE_WORDS.items() if any(k in w for w in words for k in keys)), "lower")
        findings.append(Finding(pathology, sides, zone, severity))
    return findings


def plan_incidentals(mesh_major, rng: np.random.Generator) -> list[Finding]:
    """One Finding per incidental MeSH heading (kind in `pathology`), placed by its qualifiers."""
    out, seen = [], set()
    for term in mesh_major:
        heading, *qualifiers = [part.strip().lower() for part in term.split("/")]
        kind = INCIDENTAL_HEADINGS.get(heading) or next(
            (INCIDENTAL_HEADINGS[(heading, q)] for q in qualifiers if (heading, q) in INCIDENTAL_HEADINGS), None)
        if kind is None or kind in seen:
            continue
        seen.add(kind)
        sides = tuple(s for s in ("right", "left") if s in qualifiers) or ((("right",), ("left",))[rng.integers(2)])
        if "bilateral" in qualifiers:
            sides = ("right", "left")
        zone = next((z for z, keys in ZONE_WORDS.items() if any(k in q for q in qualifiers for k in keys)),
                    ("upper", "middle", "lower")[rng.integers(3)])
        severity = max((SEVERITY_WORDS[q] for q in qualifiers if q in SEVERITY_WORDS), default=1.0)
        out.append(Finding(kind, sides, zone, severity))
    return out


def reshape_anatomy(a: Anatomy, incidentals: list[Finding]) -> Anatomy:
    """The anatomy with the incidental findings that change it: volumes, diaphragm, spine."""
    base = list(a.base)
    for f in incidentals:
        if f.pathology == "low_volumes":
            base = [b - 0.10 for b in base]
        elif f.pathology == "hyperinflated":
            base = [b + 0.09 for b in base]
            a = replace(a, dome=a.dome * 0.35)
        elif f.pathology == "elevated_diaphragm":
            base[f.sides[0] == "left"] -= 0.13
        elif f.pathology == "scoliosis":
            a = replace(a, spine_curve=0.06 * f.severity)
    return replace(a, base=(base[0], base[1]))


def _ramp(x: np.ndarray, width: float) -> np.ndarray:
    """0 below -width, 1 above +width, smooth in between (a soft step at 0)."""
    t = np.clip(x / (2 * width) + 0.5, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _smooth_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))


class _Canvas:
    """Patient-space coordinates of every pixel, and the shapes defined on them."""

    def __init__(self, a: Anatomy, size: int):
        grid = np.linspace(-1.0, 1.0, size, dtype=np.float32)
        x, y = np.meshgrid(grid, grid)
        c, s = np.cos(a.rotation), np.sin(a.rotation)
        x, y = x - a.shift[0], y - a.shift[1]
        self.u = ((c * x + s * y) / a.scale).astype(np.float32)
        self.v = ((-s * x + c * y) / a.scale).astype(np.float32)
        self.a, self.size = a, size
        self.edge = 2.5 / size  # soft-edge half width: a couple of pixels

    def ellipse(self, cu, cv, ru, rv) -> np.ndarray:
        """Soft inside-ness of an ellipse (1 inside, 0 outside)."""
        r = np.sqrt(((self.u - cu) / ru) ** 2 + ((self.v - cv) / rv) ** 2)
        return _ramp(1.0 - r, self.edge / min(ru, rv))

    def lung(self, side: str) -> np.ndarray:
        a = self.a
        cu = SIDE_SIGN[side] * a.lung_center
        base = a.base[side == "left"]
        height = base - a.lung_top
        t = np.clip((self.v - a.lung_top) / height, 0.0, 1.0)  # 0 at apex, 1 at base
        half_width = a.lung_half_width * (0.35 + 0.65 * np.sqrt(t))  # narrow apex
        across = 1.0 - np.abs(self.u - cu) / np.maximum(half_width, 1e-3)
        dome = base - a.dome * np.clip(1.0 - ((self.u - cu) / a.lung_half_width) ** 2, 0.0, 1.0)
        return _ramp(across, self.edge / a.lung_half_width) * _ramp(dome - self.v, self.edge) \
            * _ramp(self.v - a.lung_top, self.edge)

    def zone_center(self, side: str, zone: str) -> tuple[float, float]:
        a = self.a
        base = a.base[side == "left"]
        frac = {"upper": 0.25, "middle": 0.55, "lower": 0.82}[zone]
        return SIDE_SIGN[side] * a.lung_center, a.lung_top + frac * (base - a.dome * 0.5 - a.lung_top)


def heart_half_width(a: Anatomy, cardiomegaly: Finding | None) -> float:
    ratio = a.heart_ratio if cardiomegaly is None else 0.50 + 0.12 * cardiomegaly.severity
    return ratio * a.thorax_half_width


def _heart(cv: _Canvas, cardiomegaly: Finding | None) -> np.ndarray:
    a = cv.a
    half_width = heart_half_width(a, cardiomegaly)
    half_height = 0.15 + 0.25 * half_width
    cu = a.heart_center[0] + (0.0 if cardiomegaly is None else 0.25 * (half_width - a.heart_ratio * a.thorax_half_width))
    return cv.ellipse(cu, a.heart_center[1] - (half_height - 0.2) * 0.5, half_width, half_height)


def _effusion(cv: _Canvas, f: Finding, side: str, lungs: dict) -> np.ndarray:
    """Fluid replacing the air of the lung base up to a meniscus that rises toward the chest wall;
    it fills the costophrenic angle first, so the angle is blunted even when small."""
    a = cv.a
    cu = SIDE_SIGN[side] * a.lung_center
    lateral = np.clip(SIDE_SIGN[side] * (cv.u - cu) / a.lung_half_width, 0.0, 1.0)
    surface = a.base[side == "left"] - a.dome - 0.10 * f.severity - 0.10 * lateral ** 2
    return _ramp(cv.v - surface, cv.edge * 2) * lungs[side]


def _atelectasis(cv: _Canvas, f: Finding, side: str, rng) -> np.ndarray:
    cu, cv_ = cv.zone_center(side, f.zone)
    cu += SIDE_SIGN[side] * rng.uniform(-0.04, 0.06)
    angle = np.deg2rad(rng.uniform(-14, 14))
    along = (cv.u - cu) * np.cos(angle) + (cv.v - cv_) * np.sin(angle)
    across = -(cv.u - cu) * np.sin(angle) + (cv.v - cv_) * np.cos(angle)
    half_length = cv.a.lung_half_width * (0.55 + 0.25 * f.severity)
    # a band a few regions of a stride-16 grid can resolve (about 4-6% of the image height)
    thickness = 0.035 + 0.015 * f.severity
    return _ramp(1.0 - np.abs(across) / thickness, cv.edge / thickness) * _ramp(1.0 - np.abs(along) / half_length, 0.15)


def _edema(cv: _Canvas, f: Finding, side: str, rng) -> np.ndarray:
    a = cv.a
    hilum_u, hilum_v = SIDE_SIGN[side] * a.lung_center * 0.7, a.lung_top + 0.55 * (a.base[0] - a.lung_top)
    r2 = ((cv.u - hilum_u) / (a.lung_half_width * 1.1)) ** 2 + ((cv.v - hilum_v) / 0.38) ** 2
    haze = np.clip(1.0 - r2, 0.0, 1.0) ** 2  # compact bat-wing lobe around the hilum
    texture = 0.8 + 0.2 * np.tanh(2 * _smooth_noise(rng, max(8, cv.size // 8), cv.size))  # reticular
    return haze * texture * (0.8 + 0.2 * f.severity)


def _consolidation(cv: _Canvas, f: Finding, side: str, rng) -> np.ndarray:
    cu, cv_ = cv.zone_center(side, f.zone)
    cu += rng.uniform(-0.06, 0.06)
    cv_ += rng.uniform(-0.05, 0.05)
    radius = (0.09 + 0.03 * f.severity) * rng.uniform(0.85, 1.15)
    theta = np.arctan2(cv.v - cv_, cv.u - cu)
    lobes = sum(rng.uniform(0.04, 0.10) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    r = np.sqrt((cv.u - cu) ** 2 + (cv.v - cv_) ** 2) / (radius * (1.0 + lobes))
    return _ramp(1.0 - r, 0.08)


# Added density per finding, in the same units as the lung's missing density (0.36).
DENSITY = {"pleural_effusion": 0.36, "atelectasis": 0.26, "edema": 0.20, "consolidation": 0.34}
WORK_SIZE = 256  # shapes are drawn at most this large, then upsampled
MASK_LEVEL = 0.25  # a pixel belongs to a lesion where its finding reaches this share of full density


def _density(anatomy: Anatomy, findings: list[Finding], size: int, seed: int, uid: str
             ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Attenuation map [size, size] and each finding's soft shape (0..1) on the same grid.

    `findings` may hold incidental findings (kinds outside PATHOLOGIES): they get no shape."""
    incidentals = [f for f in findings if f.pathology not in PATHOLOGIES]
    findings = [f for f in findings if f.pathology in PATHOLOGIES]
    cv = _Canvas(reshape_anatomy(anatomy, incidentals), size)
    a = cv.a
    by_name = {f.pathology: f for f in findings}
    torso = cv.ellipse(0.0, 0.15, a.thorax_half_width, 1.05)
    lungs = {side: cv.lung(side) for side in ("right", "left")}
    lung_any = np.maximum(lungs["right"], lungs["left"])
    heart = _heart(cv, by_name.get("cardiomegaly"))
    spine_u = a.spine_curve * np.sin(np.pi * (cv.v + 0.9) / 1.6)
    spine = _ramp(0.07 - np.abs(cv.u - spine_u), cv.edge) * torso
    ribs = np.clip((np.sin(2 * np.pi * (cv.v + 0.35 * (np.abs(cv.u) - 0.4) ** 2) / a.rib_period + a.rib_phase) - 0.55) / 0.45, 0, 1)
    clavicle_v = a.lung_top + 0.08 + 0.18 * (np.abs(cv.u) - 0.15)
    clavicles = _ramp(0.022 - np.abs(cv.v - clavicle_v), cv.edge) * _ramp(0.72 - np.abs(cv.u), 0.05) * _ramp(np.abs(cv.u) - 0.08, 0.02)

    density = 0.55 * torso - 0.36 * lung_any * (1 - heart) + 0.18 * spine + 0.10 * heart \
        + 0.06 * ribs * lung_any + 0.14 * clavicles
    shapes: dict[str, np.ndarray] = {}
    if "cardiomegaly" in by_name:
        shapes["cardiomegaly"] = heart
    for f in findings:
        if f.pathology == "cardiomegaly":
            continue
        rng = patient_rng(seed, uid, f"finding:{f.pathology}")
        shape = np.zeros_like(density)
        for side in f.sides:
            if f.pathology == "pleural_effusion":
                part = _effusion(cv, f, side, lungs) * (1 - heart)  # fluid replaces air only
            elif f.pathology == "atelectasis":
                part = _atelectasis(cv, f, side, rng) * lungs[side]
            elif f.pathology == "edema":
                part = _edema(cv, f, side, rng) * lungs[side]
            else:
                part = _consolidation(cv, f, side, rng) * lungs[side]
            shape = np.maximum(shape, part)
        density += DENSITY[f.pathology] * shape
        shapes[f.pathology] = shape
    for f in incidentals:
        if f.pathology not in ANATOMY_KINDS:
            rng = patient_rng(seed, uid, f"incidental:{f.pathology}")
            density += _incidental(cv, f, lungs, spine_u, heart, rng)
    return density, shapes


def _incidental(cv: _Canvas, f: Finding, lungs: dict, spine_u: np.ndarray, heart: np.ndarray, rng) -> np.ndarray:
    """Added density of one incidental finding (negative for air)."""
    a = cv.a
    side = f.sides[0]
    cu, cv_ = cv.zone_center(side, f.zone)
    cu += rng.uniform(-0.08, 0.08)
    cv_ += rng.uniform(-0.06, 0.06)
    if f.pathology == "granuloma":  # small, very dense, sharp; sometimes a second one
        dots = cv.ellipse(cu, cv_, 0.028, 0.028)
        if rng.uniform() < 0.5:
            dots = np.maximum(dots, cv.ellipse(cu + rng.uniform(-0.1, 0.1), cv_ + rng.uniform(-0.1, 0.1), 0.022, 0.022))
        return 0.50 * dots
    if f.pathology == "nodule":
        return 0.30 * cv.ellipse(cu, cv_, 0.05 * f.severity, 0.05 * f.severity) * lungs[side]
    if f.pathology == "opacity":
        return 0.16 * _ramp(1.0 - np.hypot(cv.u - cu, cv.v - cv_) / 0.11, 0.3) * lungs[side]
    if f.pathology == "scar":  # a thin oblique line
        angle = rng.uniform(0.3, 1.2) * SIDE_SIGN[side]
        across = -(cv.u - cu) * np.sin(angle) + (cv.v - cv_) * np.cos(angle)
        along = (cv.u - cu) * np.cos(angle) + (cv.v - cv_) * np.sin(angle)
        return 0.22 * _ramp(0.012 - np.abs(across), cv.edge) * _ramp(0.12 - np.abs(along), 0.02) * lungs[side]
    if f.pathology == "spine":  # osteophytes: bright spurs off both edges of the spine at a few levels
        spurs = np.zeros_like(cv.u)
        for v in rng.uniform(-0.4, 0.5, size=3):
            for sign in (-1.0, 1.0):
                spurs = np.maximum(spurs, cv.ellipse(float(sign * 0.085), float(v), 0.03, 0.014))
        return 0.35 * spurs
    if f.pathology == "device":  # a catheter: a bright line from the right shoulder into the mediastinum
        path_u = -0.55 + 0.5 * np.clip((cv.v + 0.85) / 0.75, 0, 1)
        return 0.60 * _ramp(0.010 - np.abs(cv.u - path_u), cv.edge) * _ramp(cv.v + 0.85, 0.01) * _ramp(-0.10 - cv.v, 0.01)
    if f.pathology == "aorta":  # a prominent aortic knob, left of the upper mediastinum
        return 0.16 * cv.ellipse(0.13, a.lung_top + 0.28, 0.08, 0.07)
    if f.pathology == "hiatal_hernia":  # a retrocardiac air bubble
        return -0.25 * cv.ellipse(a.heart_center[0] - 0.04, a.heart_center[1] + 0.05, 0.07, 0.05) * heart
    raise ValueError(f"no drawing for incidental finding {f.pathology!r}")


def _upsample(array: np.ndarray, size: int) -> np.ndarray:
    if array.shape[0] == size:
        return array
    return np.asarray(Image.fromarray(array.astype(np.float32)).resize((size, size), Image.BILINEAR))


def render(anatomy: Anatomy, findings: list[Finding], size: int, uid_seed: tuple[int, str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(uint8 image [size, size], {pathology: bool mask [size, size]}) for one patient.

    Shapes are drawn at up to WORK_SIZE pixels and upsampled (radiographs hold little detail a
    bilinear upsample loses, and it halves the cost at 512); the grain is added at full size.
    Per-finding randomness comes from its own stream, so removing a finding leaves every other
    pixel of the image as it was (what the tests check).
    """
    seed, uid = uid_seed
    density, shapes = _density(anatomy, findings, min(size, WORK_SIZE), seed, uid)
    density = _upsample(density, size)
    masks = {name: _upsample(shape, size) > (0.5 if name == "cardiomegaly" else MASK_LEVEL)
             for name, shape in shapes.items()}
    noise_rng = patient_rng(seed, uid, "noise")
    mottle = 0.03 * _smooth_noise(noise_rng, 12, size)
    grain = anatomy.noise * noise_rng.standard_normal((size, size), dtype=np.float32)
    exposed = anatomy.gain * np.clip(density + mottle, 0.0, None) ** anatomy.gamma + anatomy.offset + grain
    image = np.clip(exposed * (255.0 / 0.75), 0, 255).astype(np.uint8)
    return image, masks


def phantom_for_report(uid: str, labels: dict[str, int], mesh_major, size: int, seed: int):
    """The phantom for one report: (image uint8 [size, size], masks, findings, incidental ones included)."""
    anatomy = draw_anatomy(patient_rng(seed, uid, "anatomy"))
    findings = plan_findings(labels, mesh_major, patient_rng(seed, uid, "placement"))
    if not labels.get("normal"):
        findings += plan_incidentals(mesh_major, patient_rng(seed, uid, "incidental-placement"))
    image, masks = render(anatomy, findings, size, (seed, uid))
    return image, masks, findings
