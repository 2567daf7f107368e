"""Batches of a run's own data, outside a Trainer, and accuracy of any callable model on them."""

from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any, Literal

import torch

Split = Literal["train", "val", "test"]


def as_args(inputs: Any) -> tuple:
    """A batch's model inputs as positional arguments: one tensor (images) or a tuple (text: tokens, lengths)."""
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def batches(run, split: Split, limit: int | None = None) -> Iterator[tuple[tuple, torch.Tensor]]:
    """(model args, targets) of up to `limit` batches, prepared as training prepares them (normalised on the
    device by the data module's on_after_batch_transfer; no augmentation outside training)."""
    datamodule = run.datamodule
    datamodule.setup("fit" if split != "test" else "test")
    loader = {"train": datamodule.train_dataloader, "val": datamodule.val_dataloader,
              "test": datamodule.test_dataloader}[split]()
    for batch in islice(loader, limit):
        batch = datamodule.on_after_batch_transfer(batch, 0)
        inputs, targets = run.task.split_batch(batch)
        yield as_args(inputs), targets


@torch.inference_mode()
def accuracy(model: Callable[..., torch.Tensor], data: list[tuple[tuple, torch.Tensor]]) -> float:
    """Top-1 accuracy of `model` (a module, a compiled graph or an ONNX runner) over the batches."""
    correct = total = 0
    for args, targets in data:
        logits = torch.as_tensor(model(*args))
        correct += int((logits.argmax(dim=-1) == targets).sum())
        total += len(targets)
    return correct / max(1, total)


@torch.inference_mode()
def agreement(reference: Callable, candidate: Callable, data: list[tuple[tuple, torch.Tensor]]) -> dict[str, float]:
    """How closely `candidate` reproduces `reference`: largest absolute logit difference and top-1 agreement."""
    max_diff, same, total = 0.0, 0, 0
    for args, _ in data:
        a = torch.as_tensor(reference(*args)).float()
        b = torch.as_tensor(candidate(*args)).float()
        max_diff = max(max_diff, float((a - b).abs().max()))
        same += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += len(a)
    return {"max_abs_logit_diff": max_diff, "top1_agreement": same / max(1, total)}
