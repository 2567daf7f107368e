"""A callback that end-to-end tests add by override
(+callbacks.buffers._target_=tests.helpers.buffer_probe.BufferDigests +callbacks.buffers.path=<file>)
to compare the model's buffers across ranks: each rank writes to <file>.<global rank> a digest of
its buffers after each training step and at each validation's first batch (after every hook of
the validation's start has run)."""

import json

import lightning as L
import torch


def digest(module: torch.nn.Module) -> list[float]:
    return [float(b.double().sum()) for b in module.buffers()]


class BufferDigests(L.Callback):
    def __init__(self, path: str):
        self.path = path
        self.seen: dict[str, list[list[float]]] = {"train": [], "validation": []}

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.seen["train"].append(digest(pl_module))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, *args) -> None:
        if batch_idx == 0:
            self.seen["validation"].append(digest(pl_module))

    def on_fit_end(self, trainer, pl_module) -> None:
        with open(f"{self.path}.{trainer.global_rank}", "w") as f:
            json.dump(self.seen, f)
