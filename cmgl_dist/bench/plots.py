"""The figures of `cmgl bench`, drawn from the figures its commands write (never typed in)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cmgl_dist.atomic import atomic_path  # noqa: E402


def save(fig, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def stacked_breakdown(per_rank: list[dict], rows: list[tuple[str, float, float]], path: Path, title: str) -> None:
    """One stacked bar per rank (mean over steps of each phase) and one for the p50 breakdown."""
    names = [name for name, _, _ in rows if name not in ("sum_of_phases", "step")]
    bars = {f"rank {i}": {n: sum(s.get(n, 0.0) for s in r["steps"]) / len(r["steps"]) for n in names}
            for i, r in enumerate(per_rank)}
    bars["p50"] = {name: ms for name, ms, _ in rows}
    fig, ax = plt.subplots(figsize=(7, 4))
    cmap = plt.get_cmap("tab20")
    for j, name in enumerate(names):
        bottoms = [sum(bars[b][n] for n in names[:j]) for b in bars]
        ax.bar(list(bars), [bars[b][name] for b in bars], bottom=bottoms, label=name, color=cmap(j % 20))
    ax.set_ylabel("ms per step")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    save(fig, path)


def grouped_bars(labels: list[str], series: dict[str, list[float]], path: Path, title: str) -> None:
    """One panel per series (e.g. step ms, peak MB, bytes), one bar per label."""
    fig, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3.5))
    for ax, (name, values) in zip(axes if len(series) > 1 else [axes], series.items()):
        ax.bar(labels, values, color="tab:blue")
        ax.set_title(name, fontsize=9)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save(fig, path)


def scaling_lines(gpus: list[int], parts: dict[str, list[float]], efficiency: list[float], path: Path,
                  title: str) -> None:
    """Predicted step time by part (stacked areas) and weak-scaling efficiency against GPUs."""
    fig, (ax_time, ax_eff) = plt.subplots(1, 2, figsize=(11, 4))
    ax_time.stackplot(gpus, *parts.values(), labels=list(parts))
    ax_time.set_xscale("log", base=2)
    ax_time.set_xlabel("GPUs")
    ax_time.set_ylabel("predicted ms per step")
    ax_time.legend(fontsize=7, loc="upper left")
    ax_eff.plot(gpus, efficiency, marker="o")
    ax_eff.set_xscale("log", base=2)
    ax_eff.set_ylim(0, 1.05)
    ax_eff.set_xlabel("GPUs")
    ax_eff.set_ylabel("weak-scaling efficiency")
    for ax in (ax_time, ax_eff):
        ax.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save(fig, path)
