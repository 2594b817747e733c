"""Weighted pixel cross-entropy: sum(w * CE) / sum(w), label 255 ignored."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .classes import IGNORE


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the per-pixel cross-entropy weighted by ``weights``.

    logits (N, C); labels (N,) integer codes with 255 = ignore; weights (N,) or None (all 1).
    Returns sum(w * CE) / sum(w) over non-ignored pixels; 0 (with a gradient) when no pixel counts.
    """
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"loss: logits have {logits.shape[0]} rows, labels {labels.shape[0]}")
    labels = labels.long()
    valid = labels != IGNORE
    ce = F.cross_entropy(logits, labels.masked_fill(~valid, 0), reduction="none")
    w = torch.ones_like(ce) if weights is None else weights.to(ce.dtype)
    w = w * valid.to(ce.dtype)
    total = w.sum()
    if total <= 0:
        return (logits * 0).sum()
    return (w * ce).sum() / total
