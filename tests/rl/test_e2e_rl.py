"""End-to-end DQN through the real CLI: GridWorld learned on one process, CartPole on two gloo
ranks with environment steps summed over them, and resuming that continues counters and epsilon."""

import csv

import pytest
import torch

from lightdist.rl.dqn import epsilon_at
from lightdist.rl.gridworld import GridWorldEnv
from tests.helpers.cli import QUIET, read_summary, run_cli, run_dirs


def metrics_rows(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def logged(rows: list[dict], name: str) -> dict[int, float]:
    return {int(r["step"]): float(r[name]) for r in rows if r.get(name)}


def test_gridworld_dqn_learns_the_shortest_safe_path(workdir):
    run_cli(["+experiment=rl_dqn_gridworld", "data.record_video=final", *QUIET], cwd=workdir)
    (run_dir,) = run_dirs(workdir, "rl_dqn_gridworld")
    test = read_summary(run_dir)["test"]
    env = GridWorldEnv()  # the experiment's layout is the environment's default one
    shortest = env.shortest_path_length()
    assert shortest == 8
    # the greedy policy walks a shortest path that avoids every trap: the optimal return
    assert test["test/length_mean"] == shortest, test
    assert test["test/return_mean"] == pytest.approx(env.goal_reward + env.step_penalty * (shortest - 1), abs=1e-6)
    import imageio.v3 as iio

    frames = iio.imread(run_dir / "videos" / "final.gif")
    assert frames.shape[0] == shortest + 1  # the start and one frame per move


def test_cartpole_on_two_gloo_ranks_sums_env_steps(workdir):
    warmup, batches, epochs = 100, 60, 2
    run_cli(["+experiment=rl_dqn_cartpole", "trainer=cpu_ddp", "trainer.devices=2", f"trainer.max_epochs={epochs}",
             f"data.batches_per_epoch={batches}", f"data.learning_starts={warmup}", "data.eval_episodes=1",
             "data.test_episodes=3", "trainer.log_every_n_steps=20", *QUIET], cwd=workdir)
    (run_dir,) = run_dirs(workdir, "rl_dqn_cartpole")
    summary = read_summary(run_dir)
    assert summary["world_size"] == 2 and summary["global_step"] == epochs * batches
    rows = metrics_rows(run_dir)
    per_rank, total = logged(rows, "train/env_steps"), logged(rows, "train/env_steps_total")
    assert sorted(total) == [19, 39, 59, 79, 99, 119]
    for step, value in total.items():
        # each rank: warm-up, then 2 environments x 1 step per batch; summed over the 2 ranks
        assert per_rank[step] == warmup + 2 * (step + 1)
        assert value == 2 * per_rank[step], (step, value)
    assert summary["validation"]["val/env_steps_total"] == 2 * (warmup + 2 * epochs * batches)
    # episodes are split over the ranks (at least one each: 1 + 1, then 2 + 1) and gathered
    assert summary["validation"]["val/episodes"] == 2 and summary["test"]["test/episodes"] == 3
    assert summary["test"]["test/return_mean"] > 0


def test_resume_continues_env_steps_and_epsilon(workdir):
    args = ["+experiment=rl_dqn_gridworld", "data.batches_per_epoch=200", "data.learning_starts=100",
            "data.checkpoint_replay=true", "task.epsilon_decay_steps=1000", "trainer.log_every_n_steps=25",
            "test_after_fit=false", *QUIET]
    run_cli([*args, "trainer.max_epochs=2"], cwd=workdir)
    (run_dir,) = run_dirs(workdir, "rl_dqn_gridworld")
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 400
    assert ckpt["EnvDataModule"]["env_steps"] == 100 + 400
    assert ckpt["EnvDataModule"]["ranks"][0]["replay"]["size"] == 500  # every step so far (the buffer holds 10,000)
    exploration = ckpt["exploration"]
    assert exploration["env_steps_total"] == 500
    assert exploration["epsilon"] == pytest.approx(epsilon_at(500, 1.0, 0.05, 1000))
    assert len(exploration["ranks"]) == 1 and exploration["ranks"][0]["rng"]["bit_generator"] == "PCG64"

    run_cli([f"run_dir={run_dir}", "ckpt_path=last", *args, "trainer.max_epochs=3"], cwd=workdir)
    assert run_dirs(workdir, "rl_dqn_gridworld") == [run_dir]
    rows = metrics_rows(run_dir)
    env_steps, epsilon = logged(rows, "train/env_steps"), logged(rows, "train/epsilon")
    # one row per step across both segments, and counters as if the run had never stopped
    assert sorted(env_steps) == list(range(24, 600, 25))
    for step, value in env_steps.items():
        assert value == 100 + step + 1
        assert epsilon[step] == pytest.approx(epsilon_at(value, 1.0, 0.05, 1000), abs=1e-6)
    assert read_summary(run_dir)["validation"]["val/env_steps_total"] == 100 + 600
