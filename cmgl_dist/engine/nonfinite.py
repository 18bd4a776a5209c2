"""The NaN/Inf guard, decided on the device: a non-finite micro batch never reaches the optimizer.

Per micro batch the loop all-reduces a flag (any rank's loss not finite) with the loss parts and
hands it to `NonFiniteGuard.update`, which keeps it in a device tensor. Every trainable
parameter carries a gradient hook, `torch.where(keep, grad, 0)`, that runs before the gradient
is accumulated (and before DeepSpeed's own accumulation hooks): a dropped micro batch adds
exactly zero to every gradient, whatever NaN or Inf its backward produced, and the optimizer
step takes the other micro batches' gradients. Nothing is read on the host per micro batch.
Counts (all dropped micro batches; the longest run of them in a row) stay on the device and
are read with the metrics, every `train.log_every` steps (`take`); a run of `train.max_nonfinite`
stops training there, with a checkpoint of the weights (which no dropped batch changed).
A step whose micro batches were all dropped still runs its optimizer step on zero gradients:
AdamW's momentum and weight decay move the weights as on any step with a vanishing gradient.
Batch-norm running statistics updated by a dropped batch's forward are not restored (the forward
has run before any guard can know its loss).
"""
from __future__ import annotations

import torch
from torch import nn


class NonFiniteGuard:
    def __init__(self, module: nn.Module, device: torch.device):
        self.keep = torch.ones((), dtype=torch.bool, device=device)
        # dropped since the last take, the current run of drops, the longest run since the last take
        self.counts = torch.zeros(3, dtype=torch.long, device=device)
        self.handles = [p.register_hook(self._gate) for p in module.parameters() if p.requires_grad]

    def _gate(self, grad: torch.Tensor) -> torch.Tensor:
        return torch.where(self.keep, grad, grad.new_zeros(()))

    def update(self, nonfinite: torch.Tensor) -> torch.Tensor:
        """nonfinite: a device bool (summed flag > 0). Returns the device bool `kept`."""
        self.keep.copy_(~nonfinite)
        dropped = nonfinite.long()
        total, run, longest = self.counts.unbind()
        run = (run + dropped) * dropped
        self.counts.copy_(torch.stack([total + dropped, run, torch.maximum(longest, run)]))
        return self.keep.clone()

    def take(self) -> tuple[int, int]:
        """(dropped micro batches, longest run in a row) since the last take: one host read."""
        total, run, longest = self.counts.tolist()
        self.counts.copy_(torch.tensor([0, run, run]))
        return total, longest
