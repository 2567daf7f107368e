"""DQN interrupted mid-epoch by its preemption signal and resumed ends bit-identical (fp64,
deterministic) to the same run never interrupted: final Q-network weights and every logged loss,
on one process and on two gloo ranks. Without the environments' state in the checkpoint the
resumed run starts fresh episodes and differs, so the comparison can fail."""

import shutil
from pathlib import Path

import torch

from tests.helpers.cli import QUIET, run_cli, run_dirs
from tests.helpers.interrupt import (
    interrupt_args,
    interrupt_env,
    max_weight_difference,
    train_losses,
)

EXACT = ["trainer.precision=64-true", "trainer.deterministic=true", "trainer.log_every_n_steps=1",
         "data.checkpoint_replay=true", "data.eval_episodes=1", "test_after_fit=false", *QUIET]
# A small buffer that wraps around before the interruption; 2 epochs of 30 batches.
GRIDWORLD = ["+experiment=rl_dqn_gridworld", "data.batch_size=16", "data.buffer_size=60", "data.learning_starts=40",
             "data.batches_per_epoch=30", "trainer.max_epochs=2", "task.target_update_interval=10",
             "task.epsilon_decay_steps=100", *EXACT]
# Two environments per rank, 3-step returns (n-step queues in flight), a time limit that truncates,
# the experiment's cosine learning-rate schedule.
CARTPOLE = ["+experiment=rl_dqn_cartpole", "data.batch_size=16", "data.buffer_size=80", "data.learning_starts=40",
            "data.batches_per_epoch=20", "trainer.max_epochs=2", "data.max_episode_steps=25", "model.hidden=[32]",
            "task.target_update_interval=8", "task.epsilon_decay_steps=100", *EXACT]


def run(workdir: Path, args: list[str], name: str) -> Path:
    workdir.mkdir()
    run_cli(args, cwd=workdir, env=interrupt_env())
    (run_dir,) = run_dirs(workdir, name)
    return run_dir


def interrupted(workdir: Path, args: list[str], name: str, batch: int) -> Path:
    run_dir = run(workdir, [*args, *interrupt_args(batch)], name)
    assert (run_dir / "checkpoints" / "preempted.ckpt").exists()
    return run_dir


def resume(run_dir: Path, args: list[str]) -> str:
    proc = run_cli([f"run_dir={run_dir}", "ckpt_path=last", *args], cwd=run_dir.parents[2], env=interrupt_env())
    return proc.stdout + proc.stderr


def assert_identical(a: Path, b: Path, steps: int) -> None:
    assert max_weight_difference(a, b) == 0.0
    losses_a, losses_b = train_losses(a), train_losses(b)
    assert sorted(losses_a) == list(range(steps)) and losses_b == losses_a


def test_gridworld_resumed_three_times_is_exact(tmp_path):
    """Stopped by max_steps after a periodic last.ckpt written at a target-network update (mid-epoch),
    then preempted at the first batch of the second epoch (fetched, not trained on), then mid-window
    of 2 accumulated batches (the checkpoint waits for the window's end)."""
    args = [*GRIDWORLD, "trainer.accumulate_grad_batches=2", "checkpoint.every_n_steps=10"]
    a = run(tmp_path / "a", args, "rl_dqn_gridworld")
    b = run(tmp_path / "b", [*args, "trainer.max_steps=10"], "rl_dqn_gridworld")
    assert torch.load(b / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
    # run_dir= brings back the run's own overrides, max_steps=10 included: lift it
    args += [*interrupt_args(30, 42), "trainer.max_steps=-1"]
    log = resume(b, args)
    assert "not resumable" not in log and "episodes in flight restart" not in log
    ckpt = torch.load(b / "checkpoints" / "preempted.ckpt", weights_only=True)
    assert ckpt["global_step"] == 15 and len(ckpt["EnvDataModule"]["ranks"][0]["pass"]["untrained"]) == 1
    resume(b, args)
    assert torch.load(b / "checkpoints" / "preempted.ckpt", weights_only=True)["global_step"] == 21
    resume(b, args)
    assert_identical(a, b, steps=30)


def test_cartpole_on_two_ranks_resumed_mid_epoch_is_exact_and_needs_the_env_state(tmp_path):
    args = [*CARTPOLE, "trainer=cpu_ddp", "trainer.devices=2"]
    a = run(tmp_path / "a", args, "rl_dqn_cartpole")
    b = interrupted(tmp_path / "b", args, "rl_dqn_cartpole", batch=27)
    path = b / "checkpoints" / "preempted.ckpt"
    ckpt = torch.load(path, weights_only=True)
    ranks = ckpt["EnvDataModule"]["ranks"]
    assert len(ranks) == 2 and ranks[0]["episodes_in_flight"] and ranks[1]["episodes_in_flight"]
    assert ranks[0]["replay"]["data"]["observations"].ne(ranks[1]["replay"]["data"]["observations"]).any()
    assert len(ckpt["exploration"]["ranks"]) == 2

    # the same checkpoint without the environments: fresh episodes on resume, one warning, another ending
    (tmp_path / "c").mkdir()
    c = tmp_path / "c" / b.relative_to(tmp_path / "b")
    shutil.copytree(b, c)
    for rank in ranks:
        del rank["episodes_in_flight"]
    torch.save(ckpt, c / "checkpoints" / "preempted.ckpt")

    resume(b, args)
    assert_identical(a, b, steps=40)
    log = resume(c, args)
    assert log.count("episodes in flight restart") == 1, log[-3000:]
    assert max_weight_difference(a, c) > 0.0
    assert train_losses(c) != train_losses(a)
