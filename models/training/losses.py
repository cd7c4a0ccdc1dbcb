"""Training losses: per-part identity cross-entropy and batch-hard triplet loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor


def part_cross_entropy(part_logits: list[Tensor], labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean over parts of the identity cross-entropy of each part's classifier."""
    losses = [F.cross_entropy(logits, labels, label_smoothing=label_smoothing) for logits in part_logits]
    return torch.stack(losses).mean()


def part_accuracy(part_logits: list[Tensor], labels: Tensor) -> float:
    """Top-1 accuracy of the summed part logits (the ensemble of the part classifiers)."""
    summed = torch.stack(part_logits).sum(dim=0)
    return float((summed.argmax(dim=1) == labels).float().mean())


def pairwise_distances(embeddings: Tensor) -> Tensor:
    """Euclidean distance matrix, with a gradient-safe square root at zero."""
    squared_norms = embeddings.pow(2).sum(dim=1)
    squared = squared_norms[:, None] + squared_norms[None, :] - 2.0 * embeddings @ embeddings.T
    return squared.clamp_min(1e-12).sqrt()


def batch_hard_triplet_loss(embeddings: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Mean of ``max(d(a, p) - d(a, n) + margin, 0)`` over anchors that have a positive and a negative.

    For every anchor a, p is the hardest positive (farthest sample of the same label other than a itself) and
    n the hardest negative (nearest sample of another label). Returns a zero that still carries a gradient
    path when no anchor has both.
    """
    distances = pairwise_distances(embeddings)
    same = labels[:, None] == labels[None, :]
    not_self = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive_mask = same & not_self
    negative_mask = ~same
    valid = positive_mask.any(dim=1) & negative_mask.any(dim=1)
    if not bool(valid.any()):
        return embeddings.sum() * 0.0
    hardest_positive = distances.masked_fill(~positive_mask, float("-inf")).amax(dim=1)
    hardest_negative = distances.masked_fill(~negative_mask, float("inf")).amin(dim=1)
    losses = F.relu(hardest_positive - hardest_negative + margin)
    return losses[valid].mean()
