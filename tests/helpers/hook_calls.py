"""What Lightning dispatches, for tests/performance/test_unused_hooks.py.

HookCalls is a profiler (trainer.profiler._target_=tests.helpers.hook_calls.HookCalls): Lightning
names every hook it calls in profiler.profile("[Callback]<state_key>.<hook>" or
"[LightningModule]<class>.<hook>"); it counts the names and writes them to `path` with, for each
callback and the module, the per-batch hooks its class (or a base below Lightning's) defines.
"""

import json
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import lightning as L
from lightning.pytorch.profilers import PassThroughProfiler

from lightdist.unused_hooks import PER_BATCH_HOOKS


def defined_hooks(obj: object, base: type) -> list[str]:
    """The per-batch hooks some class of obj's, other than `base` and what it derives from, defines."""
    own = [k for k in type(obj).__mro__ if not issubclass(base, k)]
    return [h for h in PER_BATCH_HOOKS if any(h in k.__dict__ for k in own)]


class HookCalls(PassThroughProfiler):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = Path(path)
        self.calls: Counter = Counter()
        self.defined: dict[str, list[str]] = {}

    def profile(self, action_name: str) -> nullcontext:  # type: ignore[override]
        self.calls[action_name] += 1
        return nullcontext()

    def note(self, trainer: L.Trainer) -> None:
        module = trainer.lightning_module
        self.defined = {f"[LightningModule]{type(module).__name__}": defined_hooks(module, L.LightningModule)}
        self.defined.update({f"[Callback]{c.state_key}": defined_hooks(c, L.Callback) for c in trainer.callbacks})

    def describe(self) -> None:
        self.path.write_text(json.dumps({"calls": self.calls, "defined": self.defined}))


class NoteHooks(L.Callback):
    """Hands the trainer's callbacks and module to HookCalls once training starts."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.profiler.note(trainer)
