"""Plain training and evaluation loops (full precision and fixed-configuration fine-tuning)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import DataLoader

from hwsbs.distributed import sum_over_ranks, sync_gradients
from hwsbs.errors import SearchDivergedError
from hwsbs.progress import PhaseProgress
from hwsbs.task import count_correct, task_loss

__all__ = ["make_sgd", "train_epoch", "evaluate", "evaluate_metrics", "perplexity", "check_finite"]


def check_finite(loss: torch.Tensor, where: str) -> None:
    """Stop on a NaN/inf loss instead of training on garbage."""
    if not torch.isfinite(loss):
        raise SearchDivergedError(f"loss became {float(loss)} during {where}; lower the learning rate or lambda")


def make_sgd(
    params_decay: list[nn.Parameter], params_no_decay: list[nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.SGD:
    """SGD with Nesterov momentum 0.9 (the paper's optimiser); decay only on weights."""
    groups = [{"params": params_decay, "weight_decay": weight_decay}]
    if params_no_decay:
        groups.append({"params": params_no_decay, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)


def split_decay(model: nn.Module, exclude: set[int] | None = None) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Weights of Conv/Linear get weight decay; biases, norms, clipping values do not."""
    exclude = exclude or set()
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if id(p) in exclude or not p.requires_grad:
            continue
        (decay if name.endswith("weight") and p.dim() > 1 else no_decay).append(p)
    return decay, no_decay


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    device: torch.device,
    progress: PhaseProgress,
    where: str,
) -> float:
    """One epoch of cross-entropy training; returns the mean loss."""
    model.train()
    total, count = 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        loss = task_loss(model(x), y)
        check_finite(loss, where)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sync_gradients(model.parameters(), int(x.shape[0]))  # under torchrun: the global batch's gradient
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += float(loss.detach()) * len(y)
        count += len(y)
        progress.update(loss=float(loss.detach()))
    total, count_all = sum_over_ranks([total, count])  # under torchrun: the mean over the global epoch
    return total / max(count_all, 1)


def perplexity(mean_loss: float) -> float:
    """``exp`` of a mean cross-entropy per token (infinite where the float would overflow)."""
    return math.inf if mean_loss > 700 else math.exp(mean_loss)


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Top-1 accuracy as a fraction."""
    return evaluate_metrics(model, loader, device)[0]


@torch.no_grad()
def evaluate_metrics(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """``(top-1 accuracy, mean cross-entropy)`` over every target: per sample, or per token for a
    language model (``exp`` of its loss is the perplexity). Both NaN for an empty loader."""
    was_training = model.training
    model.eval()
    correct, count, loss_sum = 0, 0, 0.0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        right, n = count_correct(logits, y)
        correct += right
        count += n
        loss_sum += float(task_loss(logits, y)) * n  # the mean over this batch's n targets, back to a sum
    model.train(was_training)
    total_right, total, loss_sum = sum_over_ranks([correct, count, loss_sum])  # under torchrun: each rank saw a shard
    return (total_right / total, loss_sum / total) if total else (math.nan, math.nan)
