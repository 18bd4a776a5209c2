"""results.jsonl -> table.md (shaped like the paper's table) and one ROC PNG per pathology.

Table rows: zero-shot (GLoRIA's score, then contrasted with negated prompts), then the probe
fractions in increasing order, then fine-tuning when run; columns: the five AUCs and
their mean, each "0.87 [0.82, 0.91]" (bootstrap 95% CI). One section per exported checkpoint;
with several seeds of one setting, each seed gets its own row. Retrieval goes to a second small
table, localisation to two more (paired report, class prompts), failed jobs to a list at the end.
"""
from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np

from cmgl_dist.atomic import write_text_atomic
from cmgl_dist.evaluate.figures import plt, save_figure
from cmgl_dist.evaluate.metrics import roc_points
from cmgl_dist.evaluate.results import latest_per_job, read_records
from cmgl_dist.shards.schema import PATHOLOGIES

TITLES = {p: p.replace("_", " ").capitalize() for p in PATHOLOGIES}
AUC_COLUMNS = [TITLES[p] for p in PATHOLOGIES] + ["Mean"]


def format_interval(cell: dict) -> str:
    if cell is None or math.isnan(cell["value"]):
        return "n/a"
    if math.isnan(cell["low"]):
        return f"{cell['value']:.3f}"
    return f"{cell['value']:.3f} [{cell['low']:.3f}, {cell['high']:.3f}]"


def _setting_order(record: dict) -> tuple:
    order = ("zero_shot", "zero_shot_negated", "probe_cv", "probe", "finetune")
    return (order.index(record["task"]), record["fraction"] or 0.0, record["seed"])


def _row_label(record: dict, seeds_of_setting: int) -> str:
    return record["setting"] + (f" (seed {record['seed']})" if seeds_of_setting > 1 else "")


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def auc_table(records: list[dict]) -> list[str]:
    seeds = defaultdict(set)
    for r in records:
        seeds[r["setting"]].add(r["seed"])
    rows = [[_row_label(r, len(seeds[r["setting"]]))]
            + [format_interval(r["aucs"].get(p)) for p in PATHOLOGIES] + [format_interval(r["aucs"]["mean"])]
            for r in sorted(records, key=_setting_order)]
    lines = _markdown(["Setting"] + AUC_COLUMNS, rows)
    n_pos = records[0]["aucs"]["n_pos"]
    lines += ["", f"Test samples: {records[0]['n_test']}; positives: "
              + ", ".join(f"{TITLES[p].lower()} {n_pos[p]}" for p in PATHOLOGIES) + "."]
    for r in (r for r in records if "folds" in r):
        lines.append(f"{r['setting']}: folds by patient of {', '.join(map(str, r['fold_sizes']))} samples; "
                     f"mean AUC per fold {', '.join(f'{a:.3f}' for a in r['fold_mean_aucs'])}; "
                     "the row pools every sample's out-of-fold score.")
    unfittable = sorted({(r["setting"], p) for r in records for p in r.get("unfittable", [])})
    if unfittable:
        lines.append("No positive in the probe's train subset (AUC 0.5 by construction): "
                     + "; ".join(f"{s}: {p}" for s, p in unfittable) + ".")
    return lines


def retrieval_table(records: list[dict]) -> list[str]:
    record = records[0]
    ks = sorted(record["image_to_text"], key=lambda k: int(k.removeprefix("R@")))
    chance = record.get("chance", {})
    header = ["Direction"] + [f"{k} (chance)" if k in chance else k for k in ks]
    rows = [[label] + [_with_chance(record[name][k], chance.get(k)) for k in ks]
            for name, label in (("image_to_text", "image -> report"), ("text_to_image", "report -> image"))]
    lines = _markdown(header, rows) + ["", f"Candidates: {record['n_test']} test pairs."]
    if "finding_precision" in record:
        lines.append(_finding_precision(record["finding_precision"], record["n_test"]))
    return lines


def _finding_precision(fp: dict, n_test: int) -> str:
    line = (f"Finding-aware precision, image -> report P@{fp['k']} (retrieved reports whose finding set, "
            f"five pathologies + normal, equals the image's): {_with_chance(fp['precision'], fp['chance'])}")
    if not fp["left_out"]:
        return line + "."
    everyone = fp["with_left_out"]
    return (line + f" over the {n_test - fp['left_out']} test pairs whose finding set is known; "
            f"{fp['left_out']} unindexed reports (MeSH \"No Indexing\", labelled neither normal nor any "
            f"finding) left out. Counting them as so labelled: "
            f"{_with_chance(everyone['precision'], everyone['chance'])}.")


def _with_chance(value: float, chance) -> str:
    return f"{value:.3f}" if chance is None else f"{value:.3f} ({chance:.3f})"


LOCALISATION_COLUMNS = ["Attention mass in mask", "Pointing game", "Chance (mask share)"]


def localisation_tables(record: dict) -> list[str]:
    """The paired-report table, then the class-prompt one. A record written before the paired
    protocol holds only the prompt protocol, under "localisation" without `unscored` counts."""
    paired, prompts = record["localisation"], record.get("localisation_prompts")
    if prompts is None and "unscored" not in paired.get("all", {}):
        paired, prompts = None, paired
    lines = []
    if paired is not None:
        lines += _localisation_rows(paired, unscored=True) + [
            "", "Paired-report protocol (GLoRIA's attention maps): the finding words of the image's own "
                "report attend over its regions; a mask whose report names the finding with none of these "
                "words is not scored, and counted."]
    else:
        lines += ["Paired-report protocol: not in this record (written by an older cmgl; rerun the "
                  "localisation job)."]
    if prompts is not None:
        lines += ["", "Class-prompt protocol: the finding words of the zero-shot class prompts.", ""]
        lines += _localisation_rows(prompts, unscored=False)
    return lines + ["", "Chance is the same for mass and pointing: a uniform map's mass in the mask, and the "
                        "hit rate of a peak placed at random. Bootstrap 95% intervals in brackets, resampling "
                        "reports (a report's phantom renderings together); findings short of masks in the "
                        "split are scored on more renderings of their positive reports (eval.localisation_min_masks)."]


def _localisation_rows(scores: dict, unscored: bool) -> list[str]:
    header = ["Finding", "Masks scored"] + (["Not scored (no finding word in the report)"] if unscored else [])
    rows = [[TITLES.get(name, "All"), _masks(s)] + ([str(s.get("unscored", 0))] if unscored else [])
            + [_fraction(s.get(k), s.get(f"{k}_ci")) for k in ("mass", "pointing", "mask_share")]
            for name, s in ((n, scores[n]) for n in PATHOLOGIES + ("all",) if n in scores)]
    return _markdown(header + LOCALISATION_COLUMNS, rows)


def _masks(scores: dict) -> str:
    """Masks scored, and the reports they come from where renderings made them differ."""
    n, reports = scores["n"], scores.get("reports")
    return str(n) if reports is None or reports == n else f"{n} ({reports} reports)"


def _fraction(value: Optional[float], interval: Optional[list] = None) -> str:
    """0.544 [0.412, 0.671]: the figure and its bootstrap 95% interval, where recorded."""
    if value is None:
        return "n/a"
    return f"{value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def build_table(records: list[dict]) -> str:
    ok = [r for r in records if r.get("status") == "ok"]
    failed = [r for r in records if r.get("status") == "failed"]
    by_export = defaultdict(list)
    for r in ok:
        by_export[r["export"], r.get("corpus"), r.get("split")].append(r)
    lines = ["# Evaluation", ""]
    for (export, corpus, split), recs in by_export.items():
        lines += [f"## {export}" + (f" on {corpus}, split {split}" if corpus else ""), ""]
        aucs = [r for r in recs if "aucs" in r]
        if aucs:
            lines += ["AUC per pathology, bootstrap 95% CI in brackets.", ""] + auc_table(aucs) + [""]
        retrieval = [r for r in recs if r["task"] == "retrieval"]
        if retrieval:
            lines += ["### Image <-> report retrieval", ""] + retrieval_table(retrieval) + [""]
        localisation = [r for r in recs if r["task"] == "localisation"]
        if localisation:
            lines += ["### Localisation (phantom lesion masks)", ""] + localisation_tables(localisation[0]) + [""]
    if failed:
        lines += ["## Failed jobs", ""] + [f"- `{r['job_id']}` after {r['attempts']} attempt(s): {r['error']}"
                                           for r in failed] + [""]
    return "\n".join(lines)


def plot_rocs(records: list[dict], out_dir: Path) -> list[Path]:
    """roc_<pathology>.png: one curve per AUC job (setting, export) from its saved test scores."""
    curves = [r for r in records if r.get("status") == "ok" and "scores_file" in r]
    curves.sort(key=_setting_order)
    paths = []
    for c, pathology in enumerate(PATHOLOGIES):
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        for r in curves:
            with np.load(out_dir / r["scores_file"]) as npz:
                labels, scores = npz["labels"][:, c], npz["scores"][:, c]
            if labels.all() or not labels.any():
                continue
            fpr, tpr = roc_points(labels, scores)
            name = r["setting"] if len({x["export"] for x in curves}) == 1 else f"{Path(r['export']).name}: {r['setting']}"
            ax.plot(fpr, tpr, label=f"{name} ({r['aucs'][pathology]['value']:.2f})")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=TITLES[pathology],
               xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(loc="lower right", fontsize=7)
        path = out_dir / f"roc_{pathology}.png"
        save_figure(fig, path)
        paths.append(path)
    return paths


def write_report(out_dir: str | os.PathLike, records: Optional[list[dict]] = None) -> Path:
    """table.md and the ROC PNGs in `out_dir`, from `records` (default: the latest of each job in
    `out_dir/results.jsonl`; `cmgl evaluate` passes those made for its own inputs)."""
    out_dir = Path(out_dir)
    if records is None:
        records = latest_per_job(read_records(out_dir / "results.jsonl"))
    table = out_dir / "table.md"
    write_text_atomic(table, build_table(records))
    plot_rocs(records, out_dir)
    return table
