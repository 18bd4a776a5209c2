"""Token features of a locked text encoder, computed once per distinct text and kept in memory.

With every weight of the text encoder frozen and the encoder in eval mode (no dropout), a
report's token features are a function of its token ids alone, yet training visits each report
once per epoch: on the 2-core main job the locked MiniLM took 42% of every step (py-spy). The
cache keys each row by its unpadded token ids and encodes a missing row on its own (batch of one,
no padding), so a feature never depends on which batch first met the text (resumed runs see the
same numbers as uninterrupted ones). Rows past the byte budget are encoded as usual, uncached.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from cmgl_dist.host_reads import host_numpy, host_values, reading_host_values


class FrozenTextCache:
    def __init__(self, budget_mb: int):
        if budget_mb <= 0:
            raise ValueError(f"the text cache needs a positive budget, got {budget_mb} MB")
        self.budget_bytes = budget_mb << 20
        self.used_bytes = 0
        self.rows: dict[bytes, torch.Tensor] = {}
        self.hits = self.misses = 0

    def token_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       encode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                       host: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """[B, L, H] features of the batch's tokens (zero at padding) from `encode(ids, mask)`.

        `host`: the same ids and mask in host memory (the collated batch), which the keys are read
        from without waiting on the device; without it they are copied from the device."""
        if host is None or host[0].device.type != "cpu":  # no host copy: read the device's (a sync)
            host = (input_ids.cpu(), attention_mask.cpu())
        host_ids, host_mask = host
        lengths = host_mask.sum(dim=1)
        positions = torch.arange(host_mask.shape[1])
        with reading_host_values():
            if not torch.equal(host_mask.bool(), positions[None, :] < lengths[:, None]):
                raise ValueError("the text cache needs right-padded batches (attention mask 1...1 0...0)")
        host_ids = host_numpy(host_ids)
        rows = []
        for i, n in enumerate(host_values(lengths)):
            key = host_ids[i, :n].tobytes()
            row = self.rows.get(key)
            if row is None:
                self.misses += 1
                row = encode(input_ids[i:i + 1, :n], attention_mask[i:i + 1, :n])[0]
                self._keep(key, row)
            else:
                self.hits += 1
            rows.append(row)
        out = rows[0].new_zeros(len(rows), input_ids.shape[1], rows[0].shape[-1])
        for i, row in enumerate(rows):
            out[i, :row.shape[0]] = row
        return out

    def _keep(self, key: bytes, row: torch.Tensor) -> None:
        size = row.numel() * row.element_size() + len(key)
        if self.used_bytes + size <= self.budget_bytes:
            self.rows[key] = row.detach()
            self.used_bytes += size
