"""Speed options of the task's model (top-level config keys `channels_last` and `compile`).

Applied at setup, on every rank (after a ddp_spawn launch: a compiled function does not
pickle) and before the strategy moves and wraps the model, to the task's `model`.

Under DDP the compiled model runs inside DistributedDataParallel: torch._dynamo sees the active
DDP module and splits the model's graph at DDP's bucket boundaries (its "DDP optimizer",
torch._dynamo.config.optimize_ddp, on by default), so gradient all-reduces overlap the compiled
backward. Only the model's forward (and its backward) is compiled: the optimizer step, the loss
and Lightning's loop run eagerly, so a graph break in the model never splits an optimizer step.
strategy=fsdp2 compiles each block itself, before sharding it; nothing is compiled here then.
"""

import weakref
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn

from lightdist.errors import ConfigError


def _to_channels_last(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.dim() == 4
                 else a for a in args)


class ModelOptions(L.Callback):
    """`channels_last`: NHWC weights and inputs, which let cuDNN use tensor-core convolutions without
    transposes (mixed precision on GPUs). `compile`: torch.compile's default backend (true) or the
    named one (from Python also a backend function); nn.Module.compile compiles in place, so
    state_dict keys stay those of the plain model."""

    def __init__(self, channels_last: bool = False, compile: bool | str | Callable = False):
        self.channels_last, self.compile = channels_last, compile
        self._done: Any = weakref.WeakSet()  # models already set up (fit, then test, may share one)

    def __getstate__(self) -> dict:  # ddp_spawn pickles the callbacks; a WeakSet does not pickle
        return {**self.__dict__, "_done": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _done=weakref.WeakSet())

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        compile = False if getattr(getattr(trainer, "strategy", None), "compiles_blocks", False) else self.compile
        if not (self.channels_last or compile):
            return
        model = getattr(pl_module, "model", None)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"channels_last and compile apply to a task's `model`, which "
                              f"{type(pl_module).__name__} has not", hint="set channels_last=false compile=false")
        if model in self._done:
            return
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
            model.register_forward_pre_hook(_to_channels_last)
        if compile:
            model.compile(backend="inductor" if compile is True else compile)
        self._done.add(model)


def model_options(cfg: Any) -> list[L.Callback]:
    """The callback for the config's top-level `channels_last` and `compile` keys (none when both are off).
    What compile cannot do under a strategy is refused before the run, by check_compile (the preflight)."""
    channels_last, compile = bool(cfg.get("channels_last")), cfg.get("compile") or False
    return [ModelOptions(channels_last, compile)] if channels_last or compile else []
