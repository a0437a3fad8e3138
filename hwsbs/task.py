"""The training objective and its accuracy, for classifiers and sequence models alike.

A classifier returns logits ``(batch, classes)`` for targets ``(batch,)``; a language model
returns ``(batch, positions, vocabulary)`` for next-token targets ``(batch, positions)``. Every
loss and accuracy in hwsbs goes through these two functions, so the search, the baselines and
the evaluation treat both the same way: one prediction per target position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["task_loss", "count_correct", "flatten_predictions"]


def flatten_predictions(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """``(predictions, targets)`` as ``(N, classes)`` and ``(N,)``: one row per target position."""
    if logits.dim() > 2 and targets.dim() == logits.dim() - 1:
        return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    return logits, targets


def task_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over every target position."""
    flat_logits, flat_targets = flatten_predictions(logits, targets)
    return F.cross_entropy(flat_logits, flat_targets)


@torch.no_grad()
def count_correct(logits: Tensor, targets: Tensor) -> tuple[int, int]:
    """``(correct top-1 predictions, predictions)``: per sample, or per token for sequences."""
    flat_logits, flat_targets = flatten_predictions(logits, targets)
    return int((flat_logits.argmax(-1) == flat_targets).sum()), int(flat_targets.numel())
