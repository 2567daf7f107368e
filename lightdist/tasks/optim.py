"""Optimizer parameter groups shared by every task."""

from collections.abc import Callable, Collection, Mapping
from functools import partial

import torch
from torch import nn

from lightdist.config.building import building
from lightdist.errors import ConfigError

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, nn.RMSNorm)


def param_groups(module: nn.Module, weight_decay: float, scaled: Collection[nn.Parameter] = (),
                 lr: float | None = None, lr_factor: float = 1.0, include_frozen: bool = False,
                 factors: Mapping[int, float] | None = None) -> list[dict]:
    """Weight decay for weights of linear, convolution, embedding and recurrent layers only.

    Biases and normalisation scales/shifts are left undecayed: decaying them only shrinks
    what the normalisation layers learn. Decided by layer type and parameter name, not by
    shape: sharded strategies (FSDP) hand the optimizer flattened 1-D views of every weight.

    Discriminative learning rates: the parameters in `scaled` (a fine-tuned backbone) get
    their own groups at `lr * lr_factor`; every other group runs at the optimizer's lr.
    `include_frozen` keeps parameters that do not require gradients yet (a backbone frozen
    for the first epochs): the optimizer skips them while they get no gradient, and the
    schedule covers their group from the first step, so unfreezing adds no group.
    `factors` (id of a parameter -> factor; layer-wise decay) multiply each parameter's rate
    further: every distinct factor gets its own groups, at `lr * factor`.
    """
    scaled_ids = {id(p) for p in scaled}
    factors = factors or {}
    buckets: dict[tuple[float, bool], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for sub in module.modules():
        for name, p in sub.named_parameters(recurse=False):
            if (not p.requires_grad and not include_frozen) or id(p) in seen:
                continue
            seen.add(id(p))
            exempt = isinstance(sub, _NORMS) or name == "bias" or name.startswith("bias_")
            factor = (lr_factor if id(p) in scaled_ids else 1.0) * factors.get(id(p), 1.0)
            buckets.setdefault((factor, exempt), []).append(p)
    groups = [{"params": buckets.get((1.0, False), []), "weight_decay": weight_decay}]
    if buckets.get((1.0, True)):
        groups.append({"params": buckets[(1.0, True)], "weight_decay": 0.0})
    for factor in sorted({f for f, _ in buckets if f != 1.0}, reverse=True):  # the same order on every rank
        for exempt in (False, True):
            if buckets.get((factor, exempt)):
                groups.append({"params": buckets[(factor, exempt)], "weight_decay": 0.0 if exempt else weight_decay,
                               "lr": lr * factor})
    return groups


def build_optimizer(factory: Callable[..., torch.optim.Optimizer], module: nn.Module,
                    scaled: Collection[nn.Parameter] = (), lr_factor: float = 1.0,
                    include_frozen: bool = False, factors: Mapping[int, float] | None = None) -> torch.optim.Optimizer:
    """`factory` is a partial from config (e.g. torch.optim.SGD with lr, momentum, weight_decay).

    `scaled` parameters (a backbone) learn at lr * `lr_factor` (see param_groups).
    """
    keywords = factory.keywords if isinstance(factory, partial) else {}
    weight_decay = keywords.get("weight_decay", 0.0)
    lr = keywords.get("lr")
    if ((scaled and lr_factor != 1.0) or any(f != 1.0 for f in (factors or {}).values())) and lr is None:
        raise ConfigError("a backbone learning-rate factor or layer-wise decay needs the optimizer's lr in its config",
                          hint="set optimizer.lr")
    groups = param_groups(module, weight_decay, scaled, lr, lr_factor, include_frozen, factors)
    with building("optimizer", factory):  # a refused value (lr=-1) names optimizer.<key>
        return factory(groups)
