"""`cmgl predict`: zero-shot scores (and attention overlays) for image files, from an export.

    cmgl predict --export runs/iurr/export --images new_xrays/ --out predictions/
    cmgl predict --export E --images a.png b.jpg --out P --classes cardiomegaly "hilar enlargement" \
                 --words pleural effusion

OUT/scores.csv: one row per readable image (its path, then one column per class: the raw pooled
similarity, which does not depend on the other images; `cmgl evaluate` saves these standardised
per class over its split, the same ranking). OUT/unreadable.csv: every file that could not be
decoded, with why (counted in the log, never fatal to the rest). `--words`: OUT/overlays/<n>.png,
each named word's attention over the image. Images are decoded by the packer's decode path and
transformed as evaluation does (`cmgl_dist.api`).
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from cmgl_dist.atomic import atomic_path
from cmgl_dist.locks import FolderBusy, folder_lock
from cmgl_dist.logs import init_logger
from cmgl_dist.shards.bounds import BOUNDS
from cmgl_dist.shards.images import IMAGE_SUFFIXES

log = logging.getLogger("cmgl.predict")
SCORES = "scores.csv"
UNREADABLE = "unreadable.csv"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
MIN_PACK_SIZE, MAX_PACK_SIZE = 32, BOUNDS["image_size"][1]
OVERLAY_STEM = 80  # characters of an image's name kept in its overlay's file name (names stay < 255 bytes)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cmgl predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", required=True, help="export dir written by `cmgl train` (RUN_DIR/export)")
    p.add_argument("--images", nargs="+", required=True, help="image files and/or folders (PNG/JPEG, searched recursively)")
    p.add_argument("--out", required=True, help="folder for scores.csv, unreadable.csv and overlays/")
    p.add_argument("--classes", nargs="+", help="class names (default: the five pathologies' prompt sets); "
                   "a name that is not one of the five is its own prompt")
    p.add_argument("--words", nargs="+", help="draw these words' attention over each image (one text of them "
                   "all: GLoRIA's softmax over words shares each region among them)")
    p.add_argument("--pack-size", type=int, help="resize as `cmgl pack --image-size N` first (scores then equal "
                   "`cmgl evaluate` on such a pack)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    return p


def find_images(arguments: list[str], out: Path | None = None) -> tuple[list[Path], list[tuple[str, str]]]:
    """(image files in argument order, folders sorted), plus (argument, why) for what is not one.
    Nothing inside `out` is read (a run's own overlays would be scored by the next run)."""
    own = out.resolve() if out is not None else None
    files, missing = [], []
    for argument in arguments:
        path = Path(argument)
        if own is not None and (path.resolve() == own or own in path.resolve().parents):
            missing.append((argument, "inside --out (cmgl predict's own output is never read)"))
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            files += [p for p in found if own is None or own not in p.resolve().parents]
        elif path.is_file():
            files.append(path)
        else:
            missing.append((argument, "no such file or folder"))
    return files, missing


def predict(model, files: list[Path], classes=None, batch_size: int = 32):
    """(readable files, [N, C] scores, class names, [(path, why)] unreadable) with a progress bar."""
    import torch

    from cmgl_dist.api import Encoded
    from cmgl_dist.shards.images import ImageError

    readable, unreadable, features = [], [], []
    with tqdm(total=len(files), unit="image", desc="predict", disable=None, file=sys.stderr) as bar:
        for start in range(0, len(files), batch_size):
            batch = []
            for path in files[start:start + batch_size]:
                try:
                    batch.append((path, model.transform(path)))
                except (ImageError, OSError, ValueError) as e:
                    unreadable.append((str(path), str(e)))
            if batch:
                features.append(model.encode_pixels(torch.stack([t for _, t in batch])))
                readable += [p for p, _ in batch]
            bar.update(len(files[start:start + batch_size]))
    if not readable:
        return [], None, [], unreadable
    encoded = Encoded(torch.cat([g for g, _ in features]), torch.cat([r for _, r in features]))
    scores, names = model.zero_shot(encoded, classes)
    return readable, scores, names, unreadable


def spreadsheet_safe(cell) -> str:
    """A text cell that a spreadsheet would run as a formula (it begins with = + - @, or a tab or
    carriage return that hides one) gets a leading quote; numbers are left as they are."""
    cell = str(cell)
    if cell[:1] in FORMULA_STARTS:
        try:
            float(cell)
        except ValueError:
            return "'" + cell
    return cell


def write_csv(path: Path, header: list[str], rows) -> None:
    """`path` written atomically, every cell spreadsheet-safe (file names and class names are
    whatever the user's files and arguments hold)."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow([spreadsheet_safe(c) for c in header])
    writer.writerows([spreadsheet_safe(c) for c in row] for row in rows)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text.getvalue())


def draw_overlay(model, path: Path, words: list[str], out: Path) -> None:
    from cmgl_dist.evaluate.figures import plt, save_figure

    strings, maps = model.attention(path, " ".join(words))
    grey = model.grey(path)
    wanted = {w.lower() for w in words}
    shown = [i for i, s in enumerate(strings) if s.lower() in wanted]
    fig, axes = plt.subplots(1, 1 + len(shown), figsize=(3.0 * (1 + len(shown)), 3.2), squeeze=False)
    axes[0, 0].imshow(grey, cmap="gray")
    axes[0, 0].set_title(path.name, fontsize=8)
    for ax, i in zip(axes[0, 1:], shown):
        ax.imshow(grey, cmap="gray")
        ax.imshow(maps[i].numpy(), cmap="jet", alpha=0.45)
        ax.set_title(strings[i], fontsize=10)
    for ax in axes[0]:
        ax.axis("off")
    save_figure(fig, out)


def check_arguments(args) -> str | None:
    """What is wrong with the arguments (None when nothing): each is one line and exit 2."""
    from cmgl_dist.api import check_prompt

    if args.batch_size < 1:
        return f"--batch-size {args.batch_size}: must be >= 1"
    if args.pack_size is not None and not MIN_PACK_SIZE <= args.pack_size <= MAX_PACK_SIZE:
        return f"--pack-size {args.pack_size}: must be between {MIN_PACK_SIZE} and {MAX_PACK_SIZE}"
    for flag, values in (("--classes", args.classes), ("--words", args.words)):
        for value in values or ():
            if problem := check_prompt(value):
                return f"{flag} {value[:80]!r}: {problem}"
    return None


def main(argv=None) -> int:
    init_logger()
    args = build_parser().parse_args(argv)
    if problem := check_arguments(args):
        log.error("%s", problem)
        return 2
    out = Path(args.out)
    try:
        with folder_lock(out, "cmgl predict"):
            return run(args, out)
    except FolderBusy as e:  # --out held by another run, a file, not writable, or a planted lock
        log.error("--out %s", e)
        return 2


def run(args, out: Path) -> int:
    """The command, holding --out's writer lock."""
    from cmgl_dist.api import load

    try:
        model = load(args.export, device=args.device, pack_size=args.pack_size)
    except (FileNotFoundError, OSError, RuntimeError, ValueError) as e:
        log.error("--export %s: %s", args.export, str(e).splitlines()[0] if str(e) else type(e).__name__)
        return 1
    files, missing = find_images(args.images, out)
    readable, scores, names, undecodable = predict(model, files, args.classes, args.batch_size)
    unreadable = missing + undecodable
    if args.words:
        (out / "overlays").mkdir(exist_ok=True)
    write_csv(out / UNREADABLE, ["image", "reason"], unreadable)
    if unreadable:
        log.warning("%d of %d inputs unreadable (listed in %s)", len(unreadable), len(files) + len(missing),
                    out / UNREADABLE)
    if not readable:
        log.error("no readable image among %s", args.images)
        return 1
    write_csv(out / SCORES, ["image", *names], ([str(p), *(f"{v:.8g}" for v in row)] for p, row in zip(readable, scores)))
    if args.words:
        for index, path in enumerate(tqdm(readable, unit="image", desc="overlays", disable=None, file=sys.stderr)):
            draw_overlay(model, path, args.words, out / "overlays" / f"{index:06d}-{path.stem[:OVERLAY_STEM]}.png")
    log.info("scored %d images on %d classes: %s", len(readable), len(names), out / SCORES)
    return 0
