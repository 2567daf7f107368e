"""Every rank's random generators in the checkpoint, restored per rank on resume.

Dropout, on-device augmentation (kornia, batch mixing) and anything else drawing from the global
generators would otherwise continue from the seed after a resume, not from where the run stopped.
Saved: torch's CPU generator, every CUDA device's, numpy's global and python's `random`, per rank
(lightdist.distributed.rank_states); stored as tensors and plain values, since checkpoints are
loaded with weights_only=True.

Which state: a batch is transferred to the device, and augmented there, before the callbacks'
on_train_batch_start, where the preemption checkpoint is taken; that batch is fetched and
augmented again by the resumed run. So a checkpoint taken while a batch is in flight holds the
state from before its transfer: the state kept at the last point between batches (a validation's
end, an epoch's start, and the end of each step after which the preemption handler may save: a
snapshot costs ~35 us, numpy's state most of it, too much for every step of a small model).
Restored at on_train_start: after what a resumed run does first and the interrupted one did not
(a sanity check), before its first batch.
"""

import random
from typing import Any

import lightning as L
import numpy as np
import torch

from lightdist.callbacks.preemption import PreemptionHandler
from lightdist.distributed.rank_states import gather, own


def snapshot() -> tuple:
    """The generators' states as the libraries give them: cheap enough for every step's end."""
    # is_initialized alone: is_available costs ~50 us on every call (it asks the driver)
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return torch.get_rng_state(), np.random.get_state(), random.getstate(), cuda


def saved(raw: tuple) -> dict[str, Any]:
    """A snapshot as a checkpoint stores it (tensors and plain values): converted only when one is written."""
    torch_state, (kind, keys, pos, has_gauss, gauss), (version, internal, python_gauss), cuda = raw
    state: dict[str, Any] = {
        "torch": torch_state,
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": list(internal), "gauss": python_gauss},
    }
    if cuda is not None:
        state["cuda"] = cuda
    return state


def collect() -> dict[str, Any]:
    return saved(snapshot())


def restore(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    cuda = state.get("cuda")
    # another number of devices per rank: the CUDA generators start afresh (the resume is exact to the step)
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class RNGState(L.Callback):
    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None  # loaded, not yet restored
        self._between_batches: tuple | None = None  # a snapshot()
        self._preemption: PreemptionHandler | None = None
        self._in_batch = False

    def _now(self) -> dict[str, Any]:
        if self._pending is not None:
            return self._pending
        if self._in_batch and self._between_batches is not None:
            return saved(self._between_batches)
        return collect()  # between batches; or in one with no snapshot kept, where nothing of lightdist saves

    def state_dict(self) -> dict[str, Any]:
        # Lightning builds the checkpoint on every rank: gather is a collective, every rank is here.
        return {"ranks": gather(self._now())}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = own(state_dict.get("ranks"), "the random generators' state")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._preemption = next((c for c in trainer.callbacks if isinstance(c, PreemptionHandler)), None)
        if self._pending is not None:
            restore(self._pending)
            self._pending = None
        self._between()  # a resumed mid-epoch run has no epoch start before its first batch

    def _between(self, keep: bool = True) -> None:
        self._in_batch = False
        self._between_batches = snapshot() if keep else None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._between()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._in_batch = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._between(keep=self._preemption is not None and self._preemption.takes_flag_after(trainer, batch_idx))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._between()  # a validation within an epoch may draw (its loader's seed) before the next batch
