"""Stop a run whose loss or gradient norm is no longer finite, before a checkpoint can hold NaNs.

Lightning's EarlyStopping(check_finite=True) looks only at a validation-time metric, once per
validation, and stops through `trainer.should_stop`: the loop then still runs validation and
ModelCheckpoint writes last.ckpt with the broken weights. Here the training loss (the `outputs`
of each step) and the gradient norm (before the optimizer step) are checked at every step, and
the weights and buffers before each checkpoint; the ranks agree on the verdict (one boolean
all-reduce), and every rank raises `Diverged` at the same step, from hooks that run before the
checkpoint callbacks' own (Lightning orders those last). Checkpoints already written keep the
last finite weights.
"""

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch

from lightdist.errors import LightdistError


class Diverged(LightdistError):
    """Raised on every rank at the same step; train.run records it in summary.json."""

    def __init__(self, step: int, metric: str, value: float, hint: str):
        super().__init__(f"training diverged at step {step}: {metric} is {value}", hint=hint)
        self.step, self.metric, self.value = step, metric, value

    def record(self) -> dict[str, Any]:
        return {"step": self.step, "metric": self.metric, "value": str(self.value), "message": str(self)}


class DivergenceGuard(L.Callback):
    """patience: consecutive non-finite steps tolerated before stopping (1: stop at the first).
    A step counts when the loss of any rank is not finite or, with check_grad_norm, the gradient
    norm is not finite. Under fp16 loss scaling the gradient check is left to the scaler, which
    skips such steps by design. When a checkpoint is due (an epoch end, a validation), pending
    non-finite steps, or weights and buffers no longer finite, stop the run there: no checkpoint
    is written from them.
    """

    def __init__(self, patience: int = 1, check_grad_norm: bool = True):
        if patience < 1:
            raise ValueError("callbacks.divergence.patience must be at least 1")
        self.patience = patience
        self.check_grad_norm = check_grad_norm
        self.streak = 0
        self._grad_norm: torch.Tensor | None = None
        self._first: tuple[int, str, float] | None = None  # the first non-finite step of the streak

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if not self.check_grad_norm or getattr(trainer.precision_plugin, "scaler", None) is not None:
            return
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads:  # kept on the device: read once, with the loss, in on_train_batch_end
            self._grad_norm = torch.nn.utils.get_total_norm(grads)
            if hasattr(self._grad_norm, "full_tensor"):  # FSDP2: a DTensor, the norm of this rank's shards
                self._grad_norm = self._grad_norm.full_tensor()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs  # what training_step returned
        checked = {"loss": loss} if isinstance(loss, torch.Tensor) else {}
        if self._grad_norm is not None:
            checked["grad_norm"], self._grad_norm = self._grad_norm, None
        bad = None
        if checked:
            device = next(iter(checked.values())).device
            values = torch.stack([v.detach().float().reshape(()).to(device) for v in checked.values()]).tolist()
            bad = next(((name, v) for name, v in zip(checked, values) if not math.isfinite(v)), None)
        # Any rank's verdict is every rank's: all of them raise at the same step, none waits.
        if not trainer.strategy.reduce_boolean_decision(bad is not None, all=False):
            self.streak, self._first = 0, None
            return
        self.streak += 1
        if self._first is None:  # a rank whose own values were finite learns only that another's were not
            self._first = (trainer.global_step, *(bad or ("loss on another rank", math.nan)))
        if self.streak >= self.patience:
            self._stop(trainer)

    # Where ModelCheckpoint may save (its own hooks run after these).
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._before_checkpoint(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._before_checkpoint(trainer, pl_module)

    def _before_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.streak:
            self._stop(trainer)
        # A finite loss does not make finite weights: BatchNorm's running variance, say, overflows
        # to inf while the batch statistics keep the loss finite. One pass per checkpoint.
        tensors = [(n, t) for n, t in (*pl_module.named_parameters(), *pl_module.named_buffers())
                   if t.is_floating_point() and t.numel()]
        bad = None
        flags = [torch.isfinite(t.detach()).all() for _, t in tensors]
        if flags and not bool(torch.stack([f.to(flags[0].device) for f in flags]).all()):  # one host sync
            name, t = next((n, t) for n, t in tensors if not torch.isfinite(t.detach()).all())
            bad = (name, float(t.detach()[~torch.isfinite(t.detach())].flatten()[0]))
        if trainer.strategy.reduce_boolean_decision(bad is not None, all=False):
            self._first = (trainer.global_step, *(bad or ("a weight on another rank", math.nan)))
            self._stop(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, Diverged):  # ModelCheckpoint(save_on_exception=True) would save the broken weights
            for checkpoint in trainer.checkpoint_callbacks:
                checkpoint.save_on_exception = False

    def _stop(self, trainer: L.Trainer) -> None:
        step, metric, value = self._first
        raise Diverged(step, metric, value, hint=fix_hint(trainer, metric))


def fix_hint(trainer: L.Trainer, metric: str) -> str:
    """The likely fixes, as the overrides that apply them."""
    fixes = []
    lrs = [group["lr"] for opt in trainer.optimizers for group in opt.param_groups if "lr" in group]
    if lrs:
        fixes.append(f"lower optimizer.lr, now {max(lrs):.3g}")
    if not trainer.gradient_clip_val:
        fixes.append("clip gradients: trainer.gradient_clip_val=1.0")
    if str(trainer.precision).startswith("16"):
        fixes.append("train in trainer.precision=bf16-mixed (or 32-true)")
    return "; or ".join(fixes) or f"check what makes the {metric} non-finite"
