"""Optimizer parameter groups shared by every task."""

from collections.abc import Callable, Iterable
from functools import partial

import torch
from torch import nn


def param_groups(named_params: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Weight decay for weight matrices and kernels only.

    Biases and normalisation scales/shifts (every parameter with fewer than 2 dims) are
    left undecayed: decaying them only shrinks what the normalisation layers learn.
    """
    decay, no_decay = [], []
    for _, p in named_params:
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(factory: Callable[..., torch.optim.Optimizer], module: nn.Module) -> torch.optim.Optimizer:
    """`factory` is a partial from config (e.g. torch.optim.SGD with lr, momentum, weight_decay)."""
    weight_decay = factory.keywords.get("weight_decay", 0.0) if isinstance(factory, partial) else 0.0
    return factory(param_groups(module.named_parameters(), weight_decay))
