"""Full fine-tuning (optional, `eval.finetune`): the image encoder and a linear head, end to end.

The same seeded stratified subset as the probe (see probe.py) is trained with per-class binary
cross-entropy (positives weighted by the subset's negative/positive ratio, as the probe's
`class_weight="balanced"`) under the training augmentation, for a fixed number of passes over
the subset; the test split is then scored with centre crops. The subset is selected by sample
key from the streamed train split, so small fractions decode images they then drop: cheap on a
GPU, slow on a CPU, which is why it is off by default.
"""
from __future__ import annotations

import torch
from torch import nn

from cmgl_dist.shards.schema import PATHOLOGIES

EPOCHS = 5
LR = 1e-4
WEIGHT_DECAY = 1e-4


class ImageClassifier(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.head = nn.Linear(model.embed_dim, len(PATHOLOGIES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        global_features, _ = self.model.encode_image(images)
        return self.head(global_features)


def finetune_scores(ctx, subset_keys: set[str], subset_labels: torch.Tensor, seed: int):
    """Fine-tune on the train samples in `subset_keys`; (test scores [N, 5], test labels, test keys)."""
    torch.manual_seed(seed)
    device = next(ctx.model.parameters()).device
    classifier = ImageClassifier(ctx.model).to(device)
    classifier.model.text_backbone.requires_grad_(False)
    params = [p for p in classifier.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    positives = subset_labels.sum(0)
    pos_weight = ((len(subset_labels) - positives) / positives.clamp(min=1)).to(device)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    classifier.train()
    for epoch in range(EPOCHS):
        for batch in ctx.loader("train", train=True, epoch=epoch):
            rows = [i for i, key in enumerate(batch["keys"]) if key in subset_keys]
            if not rows:
                continue
            images = batch["images"][rows].to(device)
            labels = batch["labels"][rows, :len(PATHOLOGIES)].to(device)
            loss = loss_fn(classifier(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    classifier.eval()
    scores, labels, keys = [], [], []
    with torch.inference_mode():
        for batch in ctx.loader():
            scores.append(torch.sigmoid(classifier(batch["images"].to(device))).cpu())
            labels.append(batch["labels"][:, :len(PATHOLOGIES)])
            keys += batch["keys"]
    return torch.cat(scores).double().numpy(), torch.cat(labels).numpy() > 0.5, keys
