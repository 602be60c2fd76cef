"""The training loss both classifiers share: cross entropy weighted like the competition metric."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import schema

SEVERITY_WEIGHTS = torch.tensor(schema.SEVERITY_WEIGHTS, dtype=torch.float32)  # 1 / 2 / 4, the metric's


def class_weighted_ce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross entropy over the label columns [B, 25] with a label (>= 0) and mask (if given),
    each weighted by its true class's sample weight, as the metric weighs rows."""
    b = logits.shape[0]
    keep = labels >= 0 if mask is None else (labels >= 0) & mask
    w = SEVERITY_WEIGHTS.to(logits.device)[labels.clamp(min=0)] * keep
    ce = F.cross_entropy(logits.float().flatten(0, 1), labels.clamp(min=0).flatten(), reduction="none").view(b, -1)
    return (ce * w).sum() / w.sum().clamp(min=1.0)
