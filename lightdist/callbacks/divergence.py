"""Stop a run whose loss or gradient norm is no longer finite, before a checkpoint can hold NaNs.

Lightning's EarlyStopping(check_finite=True) looks only at a validation-time metric, once per
validation, and stops through `trainer.should_stop`: the loop then still runs validation and
ModelCheckpoint writes last.ckpt with the broken weights. Here the training loss of every step
(its `outputs`) is checked, with check_grad_norm also the gradient norm (before the optimizer
step), and the weights and buffers before each checkpoint; the ranks agree on the verdict (one
all-reduce), and every rank raises `Diverged` at the same step, from hooks that run before the
checkpoint callbacks' own (Lightning orders those last), or while a checkpoint is being built (any
other save: every N steps, preemption), before it is written. Checkpoints already written keep
the last finite weights.

Reading a value on the host makes it wait for the GPU, so the steps' values stay on the device
and are read together every `check_every_n_steps` steps (by default at the logging steps, where
the logged metrics are read anyway), and before every checkpoint: a run stops up to that many
steps after its first non-finite one, and names that one.
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
    skips such steps by design. When a checkpoint is due (an epoch end, a validation, any save),
    pending non-finite steps, or weights and buffers no longer finite, stop the run there: no
    checkpoint is written from them. check_every_n_steps: how often the steps' values are read
    (null: every trainer.log_every_n_steps).
    """

    def __init__(self, patience: int = 1, check_grad_norm: bool = False, check_every_n_steps: int | None = None):
        if patience < 1:
            raise ValueError("callbacks.divergence.patience must be at least 1")
        if check_every_n_steps is not None and check_every_n_steps < 1:
            raise ValueError("callbacks.divergence.check_every_n_steps must be at least 1 (or null)")
        self.patience = patience
        self.check_grad_norm = check_grad_norm
        self.check_every_n_steps = check_every_n_steps
        self.streak = 0
        self._grad_norm: torch.Tensor | None = None
        self._first: tuple[int, str, float] | None = None  # the first non-finite step of the streak
        # (step, {name: 0-dim tensor on the device}) of the steps not read yet
        self._pending: list[tuple[int, dict[str, torch.Tensor]]] = []
        self._read_at = -1
        self._checked_at: int | None = None

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if not self.check_grad_norm or getattr(trainer.precision_plugin, "scaler", None) is not None:
            return
        # the optimizer's parameters: walking the module tree every step costs more than the norm
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        first = grads[0]
        if all(g.dtype == first.dtype and g.device == first.device and not hasattr(g, "full_tensor") for g in grads):
            # one fused kernel per step: finite exactly when the total norm is (get_total_norm's grouping of
            # the tensors by device and dtype costs more than the norm of a small model's gradients)
            self._grad_norm = torch.stack(torch._foreach_norm(grads)).sum()
        else:  # kept on the device, with the loss, until the next read
            self._grad_norm = torch.nn.utils.get_total_norm(grads)
            if hasattr(self._grad_norm, "full_tensor"):  # FSDP2: a DTensor, the norm of this rank's shards
                self._grad_norm = self._grad_norm.full_tensor()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs  # what training_step returned
        checked = {"loss": loss.detach()} if isinstance(loss, torch.Tensor) else {}
        if self._grad_norm is not None:
            checked["grad_norm"], self._grad_norm = self._grad_norm.detach(), None
        self._pending.append((trainer.global_step, checked))
        every = self.check_every_n_steps or trainer.log_every_n_steps or 50
        if trainer.global_step % every == 0 and trainer.global_step != self._read_at:
            self._read(trainer)

    def _read(self, trainer: L.Trainer) -> None:
        """Every pending step's values in one read; the ranks' verdicts per step in one all-reduce.
        Every rank holds the same steps (the same schedule), so every rank is here."""
        pending, self._pending = self._pending, []
        self._read_at = trainer.global_step
        if not pending:
            return
        names = ("loss", "grad_norm")
        device = next(iter(pending[-1][1].values())).device if pending[-1][1] else trainer.strategy.root_device
        zero = torch.zeros((), device=device)  # a value a step does not have is finite
        table = torch.stack([v[n].float().reshape(()).to(device) if n in v else zero
                             for _, v in pending for n in names]).reshape(len(pending), len(names))
        # any rank's verdict is every rank's
        bad_any = trainer.strategy.reduce((~torch.isfinite(table)).any(dim=1).float(), reduce_op="max")
        rows = torch.cat([table, bad_any.reshape(-1, 1).to(device)], dim=1).tolist()  # the one read
        for (step, _), row in zip(pending, rows):
            if not row[-1]:
                self.streak, self._first = 0, None
                continue
            self.streak += 1
            if self._first is None:  # a rank whose own values were finite learns only that another's were not
                bad = next(((n, v) for n, v in zip(names, row) if not math.isfinite(v)), None)
                self._first = (step, *(bad or ("loss on another rank", math.nan)))
            if self.streak >= self.patience:
                self._stop(trainer)

    # Where ModelCheckpoint may save (its own hooks run after these).
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._before_checkpoint(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._before_checkpoint(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # Any save (every N steps, every M minutes, preemption) reads first: raising here, while the
        # checkpoint is built on every rank, writes nothing. Once per step: an epoch end has read already.
        if self._checked_at != trainer.global_step or self._pending:
            self._before_checkpoint(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._read(trainer)  # the last steps of a run that ends without a checkpoint
        if self.streak:
            self._stop(trainer)

    def _before_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._read(trainer)
        self._checked_at = trainer.global_step
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
