"""Small hand-made IU-RR-like inputs for pack tests: report XML and images, written to a folder."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from xml.sax.saxutils import quoteattr

_CONTROL = {"\n": "&#10;", "\r": "&#13;", "\t": "&#9;"}  # kept by the XML parser only as character references


def report_xml(uid: str, images=(), findings="Heart is enlarged.", impression="Cardiomegaly.") -> str:
    sections = "".join(f'<AbstractText Label="{label}">{text}</AbstractText>'
                       for label, text in (("FINDINGS", findings), ("IMPRESSION", impression)) if text)
    parents = "".join(f'<parentImage id={quoteattr(image, _CONTROL)}/>' for image in images)
    return (f'<?xml version="1.0"?><eCitation><uId id={quoteattr(uid, _CONTROL)}/><Abstract>{sections}</Abstract>'
            f"<MeSH><major>Cardiomegaly/mild</major></MeSH>{parents}</eCitation>")


def png_bytes(pixels: np.ndarray, mode: str | None = None) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels, mode).save(out, format="PNG") if mode else Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def grey_png(seed: int, shape=(40, 30), value: int | None = None) -> bytes:
    if value is not None:
        return png_bytes(np.full(shape, value, dtype=np.uint8))
    return png_bytes(np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8))


def write_inputs(root: Path, uids: list[str], image_value: int | None = None) -> tuple[Path, Path]:
    """A reports folder with one report per uid and an images folder with one frontal PNG each."""
    reports, images = root / "reports", root / "images"
    reports.mkdir(parents=True, exist_ok=True)
    images.mkdir(parents=True, exist_ok=True)
    for n, uid in enumerate(uids):
        (reports / f"{n}.xml").write_text(report_xml(uid, (f"IMG{n}",)))
        (images / f"IMG{n}.png").write_bytes(grey_png(n, value=image_value))
    return reports, images
