"""Pruning during training: Lightning's ModelPruning, on the weights that are worth pruning, with a
schedule that ends at a target sparsity.

Lightning's callback takes, each epoch, a fraction of the weights *still unpruned* to remove, and by
default prunes every parameter called `weight` or `bias` (normalisation scales included). Two small
additions, written here because Lightning has neither:
- only weight matrices and kernels are pruned (the same set as `lightdist optimize`'s pruning:
  no biases, no normalisation parameters);
- `SparsitySchedule` turns "reach sparsity S from epoch a to epoch b" into the per-epoch amounts
  ModelPruning wants, following the cubic schedule of Zhu & Gupta (2017): sparsity rises quickly
  while the network can still recover and levels off towards S.
"""

from dataclasses import dataclass

import torch
from lightning.pytorch.callbacks import ModelPruning
from torch import nn

from lightdist.compat import pruning_targets


@dataclass
class SparsitySchedule:
    """Cumulative sparsity `final` reached at the end of epoch `end_epoch`, pruning at the end of each epoch
    from `start_epoch` on: sparsity after epoch e is final * (1 - (1 - k/n)^3), k = e - start_epoch + 1,
    n = end_epoch - start_epoch + 1. Called with an epoch, returns the fraction of the remaining weights to
    prune then (what ModelPruning's `amount` callable returns)."""

    final: float
    start_epoch: int = 0
    end_epoch: int = 0

    def __post_init__(self):
        from lightdist.errors import ConfigError

        if not 0.0 < self.final < 1.0:
            raise ConfigError(f"pruning sparsity {self.final} must be a fraction between 0 and 1")
        if not 0 <= self.start_epoch <= self.end_epoch:
            raise ConfigError(f"pruning epochs {self.start_epoch}..{self.end_epoch}: need 0 <= start_epoch <= end_epoch")

    def sparsity(self, epoch: int) -> float:
        """Cumulative sparsity after pruning at the end of `epoch`."""
        if epoch < self.start_epoch:
            return 0.0
        n = self.end_epoch - self.start_epoch + 1
        k = min(epoch - self.start_epoch + 1, n)
        return self.final * (1.0 - (1.0 - k / n) ** 3)

    def __call__(self, epoch: int) -> float:
        if not self.start_epoch <= epoch <= self.end_epoch:
            return 0.0
        before, after = self.sparsity(epoch - 1), self.sparsity(epoch)
        return (after - before) / (1.0 - before)


class WeightPruning(ModelPruning):
    """ModelPruning restricted to weight matrices and kernels (see lightdist.optimize.prune.prunable_weights),
    and working on channels_last weights."""

    def filter_parameters_to_prune(self, parameters_to_prune=()):
        from lightdist.optimize.prune import is_prunable

        return [(module, name) for module, name in parameters_to_prune if is_prunable(module, name)]

    def apply_pruning(self, amount) -> None:
        # torch's global_unstructured flattens every weight with .view(-1), which channels_last kernels
        # (task.channels_last) refuse: the weights are made contiguous for the pruning step only.
        restore = []
        for module, name in pruning_targets(self):
            for attr in (name, f"{name}_orig", f"{name}_mask"):
                tensor = getattr(module, attr, None)
                if not isinstance(tensor, torch.Tensor) or tensor.is_contiguous():
                    continue
                if isinstance(tensor, nn.Parameter) or attr in dict(module.named_buffers(recurse=False)):
                    restore.append(tensor)
                    tensor.data = tensor.data.contiguous()
                else:  # the masked weight of an earlier pruning step, recomputed at every forward
                    setattr(module, attr, tensor.contiguous())
        super().apply_pruning(amount)
        for tensor in restore:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
