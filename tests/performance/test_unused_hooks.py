"""lightdist.unused_hooks: Lightning dispatches a per-batch hook only to the callbacks and the task
that define it (each dispatch to an inherited empty hook costs a few microseconds of host time);
the hooks that are defined are all still called, and a class's super() calls still work."""

import json
from collections import Counter

import lightning as L
import pytest

from lightdist.unused_hooks import PER_BATCH_HOOKS, TRAINING_STEP_HOOKS, skip_unused_hooks
from tests.helpers.cli import run_cli
from tests.helpers.hook_calls import defined_hooks
from tests.helpers.interrupt import interrupt_env


class Counting(L.Callback):
    def __init__(self) -> None:
        self.seen: Counter = Counter()

    def on_train_batch_end(self, *args) -> None:
        self.seen["Counting"] += 1


class Derived(Counting):
    def on_train_batch_end(self, *args) -> None:
        self.seen["Derived"] += 1
        super().on_train_batch_end(*args)


class Module(L.LightningModule):
    def on_after_backward(self) -> None:
        self.seen = True


def test_inherited_hooks_are_shadowed_and_defined_ones_kept():
    callback, module = Derived(), Module()
    skip_unused_hooks(module, [callback])
    assert defined_hooks(callback, L.Callback) == ["on_train_batch_end"]
    for hook in PER_BATCH_HOOKS:
        assert (getattr(callback, hook) is None) == (hook != "on_train_batch_end"), hook
        assert (getattr(module, hook) is None) == (hook in TRAINING_STEP_HOOKS and hook != "on_after_backward"), hook
    callback.on_train_batch_end(None, module, None, None, 0)  # the chain of super() calls still runs
    assert callback.seen == {"Derived": 1, "Counting": 1}
    assert L.Callback().on_after_backward is not None  # instances only: the classes are unchanged
    assert callable(Derived.on_before_backward)


@pytest.mark.slow
def test_a_default_run_dispatches_per_batch_hooks_only_where_defined(workdir):
    """The real CLI with the default callbacks and logger: every per-batch hook Lightning calls on a
    callback or the task is one its class defines, and each defined training hook runs every step."""
    path = workdir / "hooks.json"
    steps, val_batches = 6, 2
    # no sanity check: its validation batches would add to the validation hooks' counts
    run_cli(["data.train_subset=192", "data.val_subset=64", "data.batch_size=32", "trainer.max_epochs=1",
             "trainer.log_every_n_steps=2", "test_after_fit=false", "trainer.num_sanity_val_steps=0",
             "+trainer.profiler._target_=tests.helpers.hook_calls.HookCalls", f"+trainer.profiler.path={path}",
             "+callbacks.note_hooks._target_=tests.helpers.hook_calls.NoteHooks"], cwd=workdir,
            env=interrupt_env())
    probe = json.loads(path.read_text())
    defined, calls = probe["defined"], Counter(probe["calls"])
    assert len(defined) > 10  # the task and a default run's callbacks
    dispatched = {}
    for name, count in calls.items():
        owner, _, hook = name.rpartition(".")
        module = owner.startswith("[LightningModule]")  # its evaluation hooks are always called
        if hook in (TRAINING_STEP_HOOKS if module else PER_BATCH_HOOKS) and owner in defined:
            dispatched[owner, hook] = count
    assert dispatched  # (the profiler sees the dispatch)
    assert {k for k in dispatched if k[1] not in defined[k[0]]} == set()
    for owner, hooks in defined.items():
        for hook in hooks:
            if hook in TRAINING_STEP_HOOKS:
                assert dispatched.get((owner, hook)) == steps, (owner, hook)
            elif hook.startswith("on_validation"):
                assert dispatched.get((owner, hook)) == val_batches, (owner, hook)
