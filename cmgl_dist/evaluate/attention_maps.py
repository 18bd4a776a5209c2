"""GLoRIA-style figures: for a few test reports, each chosen word's attention over the X-ray.

One PNG per report: the image, then one panel per word with its word->region attention
(upsampled from the region grid) over the image. Finding words (`prompts.FINDING_WORDS`, the
words localisation scores, e.g. 'effusion', 'cardiomegaly') are shown first, then the longest
other words.
"""
from __future__ import annotations

from pathlib import Path

import torch

from cmgl_dist.data.images import IMAGENET_MEAN, IMAGENET_STD
from cmgl_dist.evaluate.figures import plt, save_figure
from cmgl_dist.evaluate.localisation import attention_heatmap
from cmgl_dist.evaluate.prompts import FINDING_WORDS
from cmgl_dist.shards.schema import PATHOLOGIES

WORDS_PER_FIGURE = 5
ANY_FINDING_WORD = frozenset().union(*FINDING_WORDS.values())


def pick_words(words: list[str], k: int = WORDS_PER_FIGURE) -> list[int]:
    """Indices of up to k distinct words: finding words first, then the longest others."""
    seen, ranked = set(), []
    order = sorted(range(len(words)), key=lambda i: (words[i].lower() not in ANY_FINDING_WORD, -len(words[i]), i))
    for i in order:
        if words[i].lower() not in seen:
            seen.add(words[i].lower())
            ranked.append(i)
    return ranked[:k]


def draw_report(image: torch.Tensor, words: list[str], attention: torch.Tensor, title: str,
                path: Path) -> None:
    """image [3, C, C] normalised; attention [W, R] for the report's real words."""
    grey = (image[0] * IMAGENET_STD[0, 0, 0] + IMAGENET_MEAN[0, 0, 0]).clamp(0, 1).cpu()
    chosen = pick_words(words)
    fig, axes = plt.subplots(1, 1 + len(chosen), figsize=(2.6 * (1 + len(chosen)), 3.0), squeeze=False)
    axes[0, 0].imshow(grey, cmap="gray")
    axes[0, 0].set_title(title, fontsize=8)
    for ax, w in zip(axes[0, 1:], chosen):
        heat = attention_heatmap(attention[w], grey.shape[-1])
        ax.imshow(grey, cmap="gray")
        ax.imshow(heat, cmap="jet", alpha=0.45)
        ax.set_title(words[w], fontsize=10)
    for ax in axes[0]:
        ax.axis("off")
    save_figure(fig, path)


@torch.inference_mode()
def write_attention_figures(ctx, folder: Path) -> list[str]:
    """PNGs for the first `eval.n_figures` test reports with a finding (others if too few)."""
    model = ctx.model
    device = next(model.parameters()).device
    batch = next(iter(ctx.loader()))
    labels = batch["labels"][:, :len(PATHOLOGIES)]
    order = sorted(range(labels.shape[0]), key=lambda i: (-int(labels[i].sum() > 0), i))[:ctx.settings.n_figures]
    pick = {k: _rows(v, order, labels.shape[0], device) for k, v in batch.items()}
    _, regions = model.encode_image(pick["images"])
    _, words, word_mask = model.encode_text(pick)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for j, key in enumerate(pick["keys"]):
        real = words[j][word_mask[j]]
        found = [p for p, y in zip(PATHOLOGIES, labels[order[j]]) if y > 0.5]
        path = folder / f"{key}.png"
        draw_report(pick["images"][j], pick["words"][j][:real.shape[0]],
                    ctx.attention(real, regions[j]).cpu(),
                    f"{key}: {', '.join(found) or 'no finding'}", path)
        paths.append(str(path))
    return paths


def _rows(value, order: list[int], batch_size: int, device: torch.device):
    """The chosen samples of one batch entry (entries without a batch dimension pass through)."""
    if torch.is_tensor(value) and value.dim() and value.shape[0] == batch_size:
        return value[order].to(device)
    if isinstance(value, list) and len(value) == batch_size:
        return [value[i] for i in order]
    return value
