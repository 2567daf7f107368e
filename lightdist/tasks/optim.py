"""Optimizer parameter groups shared by every task."""

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, nn.RMSNorm)


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay for weights of linear, convolution, embedding and recurrent layers only.

    Biases and normalisation scales/shifts are left undecayed: decaying them only shrinks
    what the normalisation layers learn. Decided by layer type and parameter name, not by
    shape: sharded strategies (FSDP) hand the optimizer flattened 1-D views of every weight.
    """
    decay, no_decay, seen = [], [], set()
    for sub in module.modules():
        for name, p in sub.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            exempt = isinstance(sub, _NORMS) or name == "bias" or name.startswith("bias_")
            (no_decay if exempt else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(factory: Callable[..., torch.optim.Optimizer], module: nn.Module) -> torch.optim.Optimizer:
    """`factory` is a partial from config (e.g. torch.optim.SGD with lr, momentum, weight_decay)."""
    weight_decay = factory.keywords.get("weight_decay", 0.0) if isinstance(factory, partial) else 0.0
    return factory(param_groups(module, weight_decay))
