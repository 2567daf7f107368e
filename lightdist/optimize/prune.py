"""Magnitude pruning with torch.nn.utils.prune: unstructured (global L1) or structured (whole channels).

Masks are made permanent (prune.remove), so a pruned model is an ordinary module whose
pruned weights are exact zeros: it saves, loads, quantizes and exports like the original.
Tensors keep their shapes (channels are zeroed, not removed), so the dense size and
latency do not change; the zeros show in the compressed size and in what a sparse
runtime or a later channel-removal pass can exploit.
"""

from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import nn
from torch.nn.utils import prune

from lightdist.errors import ConfigError
from lightdist.tasks.optim import _NORMS

Method = Literal["l1_unstructured", "channels"]
_CHANNEL_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass
class PruneOptions:
    """`l1_unstructured`: the `amount` fraction of all prunable weights with the smallest |w|, over the
    whole model at once. `channels`: in every conv/linear layer but the output layer, the `amount`
    fraction of output channels with the smallest L`norm` norm."""

    method: Method = "l1_unstructured"
    amount: float = 0.5
    norm: int = 1

    def __post_init__(self):
        if self.method not in get_args(Method):
            raise ConfigError(f"prune.method={self.method}: choose from {', '.join(get_args(Method))}")
        if not 0.0 < self.amount < 1.0:
            raise ConfigError(f"prune.amount={self.amount} must be a fraction between 0 and 1")


def is_prunable(module: nn.Module, name: str) -> bool:
    """A weight matrix or kernel: 'weight' in its name, at least 2 dimensions, not in a normalisation layer.
    Under a pruning reparametrisation (during training) the parameter is `<name>_orig`."""
    param = getattr(module, f"{name}_orig", None)
    param = getattr(module, name, None) if param is None else param
    return (isinstance(param, torch.Tensor) and param.ndim >= 2 and "weight" in name
            and not isinstance(module, _NORMS))


def prunable_weights(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(name, module, parameter name) of every weight matrix or kernel (convolutions, linear, embedding and
    recurrent weights; not norms or biases)."""
    return [(f"{module_name}.{name}" if module_name else name, module, name)
            for module_name, module in model.named_modules()
            for name, _ in module.named_parameters(recurse=False) if is_prunable(module, name)]


def output_layer(model: nn.Module) -> str:
    """The layer producing the logits: the last conv/linear layer registered (lightdist's models register
    their head last). Structured pruning leaves it whole: a zeroed row would delete a class."""
    names = [name for name, m in model.named_modules() if isinstance(m, _CHANNEL_LAYERS)]
    if not names:
        raise ConfigError("the model has no convolution or linear layer to prune channels of")
    return names[-1]


def channel_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    last = output_layer(model)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _CHANNEL_LAYERS) and n != last]


def prune_model(model: nn.Module, options: PruneOptions) -> nn.Module:
    """Prune `model` in place and make the masks permanent; returns it."""
    if options.method == "l1_unstructured":
        targets = [(m, p) for _, m, p in prunable_weights(model)]
        if not targets:
            raise ConfigError("the model has no weight matrices to prune")
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=options.amount)
    else:
        targets = [(m, "weight") for _, m in channel_layers(model)]
        if not targets:
            raise ConfigError("the model has no layer but its output layer: no channels to prune")
        for module, name in targets:
            prune.ln_structured(module, name, amount=options.amount, n=options.norm, dim=0)
    for module, name in targets:
        prune.remove(module, name)
    return model


def _zero_fraction(tensors: list[torch.Tensor]) -> float:
    total = sum(t.numel() for t in tensors)
    return sum(int((t == 0).sum()) for t in tensors) / max(1, total)


@torch.no_grad()
def sparsity(model: nn.Module) -> dict[str, Any]:
    """Fractions of exact zeros: in the prunable weights (`weights`, the global figure), in all parameters,
    in whole output channels of the conv/linear layers structured pruning acts on, and per layer."""
    weights = [(name, getattr(m, p)) for name, m, p in prunable_weights(model)]
    channels = [m.weight.flatten(1).abs().sum(1) for _, m in channel_layers(model)] if any(
        isinstance(m, _CHANNEL_LAYERS) for m in model.modules()) else []
    return {
        "weights": _zero_fraction([w for _, w in weights]),
        "parameters": _zero_fraction(list(model.parameters())),
        "channels": _zero_fraction(channels) if channels else 0.0,
        "layers": {name: round(_zero_fraction([w]), 6) for name, w in weights},
    }
