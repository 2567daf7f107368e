"""The ranks agree on a preemption signal without a blocking collective of its own each step: the
flag's all-reduce starts at the end of the step before a check and is read at the check, so it runs
while the next batch is fetched; one process takes its flag at the same point. Driven hook by hook
here (several ranks: on a real one-process gloo group); the end-to-end preemption and resume runs
are in tests/resume and tests/distributed/test_slurm.py."""

import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch.distributed as dist

import lightdist.callbacks.preemption as preemption
from lightdist.callbacks.rng_state import RNGState
from lightdist.distributed.preemption import PREEMPTED_CHECKPOINT, Preempted


@pytest.fixture
def gloo_group(tmp_path, monkeypatch):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    calls: list[tuple[str, bool]] = []  # (the hook it ran in, async_op)
    all_reduce = dist.all_reduce

    def recorded(*args, async_op=False, **kwargs):
        calls.append((recorded.hook, async_op))
        return all_reduce(*args, async_op=async_op, **kwargs)

    recorded.hook = ""
    monkeypatch.setattr(preemption.dist, "all_reduce", recorded)
    monkeypatch.setattr(preemption, "train_loader_states", lambda trainer: [])
    yield calls, recorded
    dist.destroy_process_group()


def fake_trainer(root: Path, saved: list[int], world_size: int = 2) -> SimpleNamespace:
    trainer = SimpleNamespace(world_size=world_size, accumulate_grad_batches=2, global_step=0, num_training_batches=5,
                              default_root_dir=str(root), is_global_zero=True, ckpt_path=None)

    def save_checkpoint(path, weights_only=False):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("checkpoint")
        saved.append(trainer.global_step)

    trainer.save_checkpoint = save_checkpoint
    return trainer


def train(handler, trainer, recorded, epochs: int, signal_at: tuple[str, int, int] | None) -> None:
    """Lightning's order of hooks; `signal_at`: (where, epoch, batch) the flag goes up: "in_batch_end"
    (a callback before the handler in the same hook) or "after_batch_end" (while the next batch is fetched)."""
    for epoch in range(epochs):
        for batch_idx in range(trainer.num_training_batches):
            recorded.hook = "on_train_batch_start"
            handler.on_train_batch_start(trainer, None, None, batch_idx)
            if (batch_idx + 1) % trainer.accumulate_grad_batches == 0 or batch_idx + 1 == trainer.num_training_batches:
                trainer.global_step += 1
            if signal_at == ("in_batch_end", epoch, batch_idx):
                handler.signalled = signal.SIGUSR1
            recorded.hook = "on_train_batch_end"
            handler.on_train_batch_end(trainer, None, None, None, batch_idx)
            if signal_at == ("after_batch_end", epoch, batch_idx):
                handler.signalled = signal.SIGUSR1
    recorded.hook = "on_train_end"
    handler.on_train_end(trainer, None)


def test_agreement_starts_after_each_window_and_is_read_at_the_next_check(gloo_group, tmp_path):
    calls, recorded = gloo_group
    saved: list[int] = []
    trainer = fake_trainer(tmp_path, saved)
    handler = preemption.PreemptionHandler()
    train(handler, trainer, recorded, epochs=2, signal_at=None)
    assert saved == [] and handler._pending is None
    # windows of 2 over 5 batches: checks before batches 2 and 4 and each later epoch's first batch;
    # each one's all-reduce starts, without waiting, at the end of the batch before it (6 in two
    # epochs); the last one (after the run's last step, no check left to read it) ends with training
    assert calls == [("on_train_batch_end", True)] * 6


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("where, batch, saved_at", [
    ("in_batch_end", 1, 1),      # raised by a callback before the handler: the next check saves
    ("after_batch_end", 1, 2),   # raised while the next batch is fetched: the check after it saves
    ("in_batch_end", 4, 3),      # at an epoch's end: the next epoch's first batch saves
])
def test_every_rank_acts_on_the_agreed_flag_only(gloo_group, tmp_path, world_size, where, batch, saved_at):
    calls, recorded = gloo_group
    saved: list[int] = []
    trainer = fake_trainer(tmp_path, saved, world_size)
    handler = preemption.PreemptionHandler()
    with pytest.raises(Preempted, match=f"preempted at step {saved_at}"):
        train(handler, trainer, recorded, epochs=2, signal_at=(where, 0, batch))
    assert saved == [saved_at]
    assert (tmp_path / "checkpoints" / PREEMPTED_CHECKPOINT).read_text() == "checkpoint"
    assert calls and all(asynchronous for _, asynchronous in calls) if world_size > 1 else calls == []


def test_a_resumed_run_decides_from_its_first_step_on(gloo_group, tmp_path):
    """A run resumed before a check's batch had no step before it to take the flag: the check after
    its first step decides (every rank alike), with the loaders' states of that step's end."""
    calls, recorded = gloo_group
    saved: list[int] = []
    trainer = fake_trainer(tmp_path, saved)
    trainer.global_step = 1  # resumed at batch 2, where a check is due
    handler = preemption.PreemptionHandler()
    handler.signalled = signal.SIGTERM
    recorded.hook = "on_train_batch_start"
    handler.on_train_batch_start(trainer, None, None, 2)
    assert calls == [] and saved == []
    trainer.global_step = 2
    recorded.hook = "on_train_batch_end"
    handler.on_train_batch_end(trainer, None, None, None, 3)
    recorded.hook = "on_train_batch_start"
    with pytest.raises(Preempted, match="preempted at step 2"):
        handler.on_train_batch_start(trainer, None, None, 4)
    assert calls == [("on_train_batch_end", True)] and saved == [2]


def test_one_process_keeps_the_loaders_states_only_for_a_save(gloo_group, tmp_path, monkeypatch):
    """Reading a StatefulDataLoader's state costs ~0.1 ms: a single process reads it only when the
    flag it took at a step's end says the next check saves; several ranks at each check's step end."""
    calls, recorded = gloo_group
    for world_size, signal_at, reads in [(1, None, 0), (1, ("in_batch_end", 1, 3), 1), (2, None, 6)]:
        kept: list[int] = []
        monkeypatch.setattr(preemption, "train_loader_states", lambda trainer, kept=kept: kept.append(1) or [])
        handler = preemption.PreemptionHandler()
        try:
            train(handler, fake_trainer(tmp_path, [], world_size), recorded, epochs=2, signal_at=signal_at)
        except Preempted:
            pass
        assert len(kept) == reads, (world_size, signal_at)


def test_the_generators_state_is_kept_at_a_step_end_only_where_a_save_may_follow(tmp_path, monkeypatch):
    """RNGState keeps the state of between the batches for a checkpoint taken while one is in flight
    (the preemption save); a snapshot costs ~35 us, so only at the step ends where the handler took
    its flag: one process, only once signalled; it asks the handler, which decides once per step."""
    monkeypatch.setattr(preemption, "train_loader_states", lambda trainer: [])
    trainer = fake_trainer(tmp_path, [], world_size=1)
    handler, rng = preemption.PreemptionHandler(), RNGState()
    trainer.callbacks = [rng, handler]  # RNGState asks first: before the handler in build_callbacks
    rng.on_train_start(trainer, None)  # finds the handler among the trainer's callbacks
    kept = []
    for batch_idx, signalled in [(0, False), (1, False), (2, True), (3, True)]:
        handler.on_train_batch_start(trainer, None, None, batch_idx)
        rng.on_train_batch_start(trainer, None)
        trainer.global_step += batch_idx % 2
        handler.signalled = signal.SIGUSR1 if signalled else None
        rng.on_train_batch_end(trainer, None, None, None, batch_idx)
        handler.on_train_batch_end(trainer, None, None, None, batch_idx)
        kept.append(rng._between_batches is not None)
    # checks before batches 2 and 4 (windows of 2): batch 1's end precedes one, unsignalled; batch
    # 2's was signalled, but no check follows it; batch 3's both
    assert kept == [False, False, False, True]
