"""Per-batch hooks that an object only inherits, taken out of Lightning's dispatch.

Lightning calls each per-batch hook (six a training step) on the LightningModule and on every
callback, also where the object only has its base class's empty method. Such a call costs 2-10 us
of host time (the hook's name formatted, a profiler context, the module's current hook name set
twice through nn.Module.__setattr__): with a default run's dozen callbacks, about 0.2 ms a step,
1% of a small model's step on a CPU. Lightning's dispatchers (lightning.pytorch.trainer.call) skip
an attribute that is not callable, so such a hook is shadowed on the instance by None. A class that
overrides a hook keeps it, so its super() calls still reach the base's empty method.
"""

from collections.abc import Iterable

import lightning as L

TRAINING_STEP_HOOKS = (
    "on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
    "on_before_optimizer_step", "on_before_zero_grad",
)
# A callback's per-batch hooks. The module's evaluation ones stay: Lightning reads their signatures.
PER_BATCH_HOOKS = (
    *TRAINING_STEP_HOOKS, "on_validation_batch_start", "on_validation_batch_end", "on_test_batch_start",
    "on_test_batch_end", "on_predict_batch_start", "on_predict_batch_end",
)


def _shadow_inherited(obj: object, base: type, hooks: tuple[str, ...]) -> None:
    for name in hooks:
        if getattr(type(obj), name, None) is getattr(base, name):
            setattr(obj, name, None)


def skip_unused_hooks(module: L.LightningModule, callbacks: Iterable[L.Callback]) -> None:
    """Shadow the per-batch hooks that `module` and `callbacks` inherit unchanged from Lightning's bases."""
    _shadow_inherited(module, L.LightningModule, TRAINING_STEP_HOOKS)
    for callback in callbacks:
        _shadow_inherited(callback, L.Callback, PER_BATCH_HOOKS)
