"""The Lightning side of preemption: raise a flag on the signal, save where all ranks agree.

Signal names, SLURM requeue and the checkpoint replacement live in lightdist.distributed.preemption;
its docstring explains why the handler only raises a flag and the ranks agree on it between steps.
"""

import logging
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist

from lightdist.compat import (
    replace_train_loader_states,
    settle_batch_totals,
    skip_sigterm_broadcast,
    train_loader_states,
    undo_logging_step_advance,
)
from lightdist.distributed.dcp import wait_for_saves
from lightdist.distributed.preemption import (
    PREEMPTED_CHECKPOINT,
    Preempted,
    configured_signals,
    parse_signal,
    replace,
)

log = logging.getLogger(__name__)


def _nothing() -> None:
    pass


class PreemptionHandler(L.Callback):
    def __init__(self, signals: str | Sequence[str] = ("SIGUSR1", "SIGTERM"), check_every_n_steps: int = 1):
        names = [signals] if isinstance(signals, str) else list(signals)
        self.signums = list(dict.fromkeys(parse_signal(n) for n in names))
        self.check_every_n_steps = max(1, int(check_every_n_steps))
        self.signalled: signal.Signals | None = None
        self.preempted = False
        self._previous: dict[signal.Signals, Any] = {}
        self._group: Any = None
        self._saving = False
        self._advanced_on_restart = True
        # the training loaders' states where the next check may save (see on_train_batch_end)
        self._loader_states: list[dict[str, Any]] = []
        self._restore_broadcast: Callable[[], None] = _nothing
        # the flag taken at the end of the step before a check, read at the check: (the all-reduce's
        # work, or None for one process; the flag)
        self._pending: tuple[Any, torch.Tensor] | None = None
        self._takes_flag: bool | None = None  # decided at this step's end (takes_flag_after)

    @classmethod
    def from_config(cls, node: Any) -> "PreemptionHandler":
        return cls([s.name for s in configured_signals(node)], node.get("check_every_n_steps", 1))

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Nothing else: a signal handler may run in the middle of a collective.
        self.signalled = self.signalled or signal.Signals(signum)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is not None:
            settle_batch_totals(trainer)  # resumed from a checkpoint saved before a batch (this handler's)
        for signum in self.signums:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            # A CPU (gloo) group for this one flag, whatever the training backend.
            self._group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
            if signal.SIGTERM in self.signums:  # Lightning's SIGTERM flag is never set while this handler owns it
                self._restore_broadcast = skip_sigterm_broadcast(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if not self._saving:
            return
        # On restart Lightning adds one to its logging-step counter, because it assumes the
        # checkpoint was taken at the end of a step, before the counter moved on. This one is
        # taken between steps, after it moved: without the correction the resumed run would
        # log every step under the next step's number.
        if self._advanced_on_restart:
            undo_logging_step_advance(checkpoint)
        # Lightning saves the loaders' current state, which includes the batch just fetched for the
        # step not yet taken: a resumed run would skip it. The state before it was kept at the end
        # of the previous step (none at an epoch's first batch: the resumed epoch starts afresh).
        replace_train_loader_states(checkpoint, self._loader_states)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None and self._pending[0] is not None:
            self._pending[0].wait()  # started after the last step: every rank started it, every rank ends it
        self._pending = None
        # Back to Lightning's handlers for testing: a SIGTERM after training stops the job as before.
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
        self._restore_broadcast()
        self._restore_broadcast = _nothing

    def _start_agreement(self, trainer: L.Trainer) -> None:
        """At the end of the step before a check: what the check will decide on. Several ranks start
        an all-reduce of their flags without waiting for it (it runs while Lightning fetches the next
        batch, so a check has no blocking collective of its own); a signalled single process raises
        its own. The training loaders' states are kept for the checkpoint (see on_save_checkpoint)."""
        self._loader_states = train_loader_states(trainer)
        if trainer.world_size > 1 and dist.is_initialized():
            flag = torch.tensor([int(self.signalled or 0)], dtype=torch.int32)
            self._pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True), flag)
        else:
            self._pending = (None, torch.ones(1))

    def _anyone_signalled(self) -> bool:
        """The flag started at the end of the previous step; none after a resume's first batch (no
        step before it started one): the next check decides. Only the agreed flag counts, never this
        rank's own: a signal that came after the agreement started is seen by the next check, on
        every rank at once."""
        if self._pending is None:
            return False
        work, flag = self._pending
        self._pending = None
        if work is not None:
            work.wait()
        return bool(flag.item())

    def _checks_at(self, trainer: L.Trainer, batch_idx: int) -> bool:
        """Whether the ranks agree on the signal before batch `batch_idx`: between optimizer steps
        only (the first batch of an accumulation window; windows restart with each epoch), so no
        accumulated gradient is lost, every check_every_n_steps steps. The same on every rank."""
        return (batch_idx % trainer.accumulate_grad_batches == 0 and trainer.global_step > 0
                and trainer.global_step % self.check_every_n_steps == 0)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.takes_flag_after(trainer, batch_idx):
            self._start_agreement(trainer)

    def takes_flag_after(self, trainer: L.Trainer, batch_idx: int) -> bool:
        """Whether the flag is taken at the end of batch `batch_idx`, so that the check before the next
        batch may save: at every check for several ranks (their flags are agreed on), for one process
        only when it was signalled. Decided once per step end by whoever asks first (this handler, or
        RNGState, which then keeps the generators' state for the save), so that both see one answer."""
        if self._takes_flag is None:
            # The next batch is this epoch's next or the next epoch's first; the same on every rank.
            following = batch_idx + 1 if batch_idx + 1 < trainer.num_training_batches else 0
            self._takes_flag = (not self.preempted and self._checks_at(trainer, following)
                                and (trainer.world_size > 1 or self.signalled is not None))
        return self._takes_flag

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._takes_flag = None
        # Between steps: the previous step is complete and logged, the next not begun, so the
        # checkpoint and the metrics file end at the same step.
        if self.preempted or not self._checks_at(trainer, batch_idx):
            return
        if batch_idx == 0:
            self._loader_states = []
        # Lightning moves the counter on at restart only where this batch would end an accumulation
        # window (it asks with the saved batch progress, which counts this batch as fetched)
        self._advanced_on_restart = ((batch_idx + 1) % trainer.accumulate_grad_batches == 0
                                     or batch_idx + 1 >= trainer.num_training_batches)
        if not self._anyone_signalled():
            return
        self.preempted = True
        path = Path(trainer.default_root_dir) / "checkpoints" / PREEMPTED_CHECKPOINT
        partial = path.with_name(f"{path.name}.partial")
        self._saving = True
        try:
            # the full state (optimizer, loops) to resume from; collective for sharded strategies, ends with a barrier
            trainer.save_checkpoint(partial, weights_only=False)
            wait_for_saves()  # an async sharded save (strategy.async_save) is in place before the rename
        finally:
            self._saving = False
        if trainer.is_global_zero:
            replace(partial, path)
            why = self.signalled.name if self.signalled else "another rank's signal"
            log.info(f"preemption ({why}): saved {path} at step {trainer.global_step}")
        raise Preempted(f"preempted at step {trainer.global_step}; resume from {path}")
