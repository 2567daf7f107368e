"""DQN pieces against hand-computed values: TD targets, target updates, epsilon, Q-networks, collection."""

from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from lightdist.rl.data import EnvDataModule
from lightdist.rl.dqn import DQNTask, epsilon_at, polyak_update, td_targets
from lightdist.rl.qnets import MLPQNetwork, NatureCNN, QHead


def test_td_targets_dqn_and_double_dqn():
    rewards = torch.tensor([1.0, 0.5, -1.0])
    discounts = torch.tensor([0.9, 0.81, 0.0])  # the last one terminated
    next_q_target = torch.tensor([[1.0, 3.0], [2.0, -1.0], [5.0, 7.0]])
    next_q_online = torch.tensor([[4.0, 0.0], [0.0, 1.0], [0.0, 9.0]])
    # DQN: max of the target network: 1 + 0.9*3, 0.5 + 0.81*2, -1 + 0
    torch.testing.assert_close(td_targets(rewards, discounts, next_q_target), torch.tensor([3.7, 2.12, -1.0]))
    # Double DQN: the target network's value of the online argmax (actions 0, 1, 1): 1 + 0.9*1, 0.5 + 0.81*(-1)
    torch.testing.assert_close(td_targets(rewards, discounts, next_q_target, next_q_online),
                               torch.tensor([1.9, -0.31, -1.0]))


def test_polyak_and_hard_updates():
    online, target = nn.Linear(1, 1), nn.Linear(1, 1)
    nn.init.constant_(online.weight, 1.0), nn.init.constant_(target.weight, 0.0)
    polyak_update(target, online, tau=0.1)
    assert target.weight.item() == pytest.approx(0.1)
    polyak_update(target, online, tau=0.1)
    assert target.weight.item() == pytest.approx(0.19)  # 0.1 + 0.1 * (1 - 0.1)
    polyak_update(target, online, tau=1.0)
    assert target.weight.item() == 1.0


def make_task(**kwargs) -> DQNTask:
    model = MLPQNetwork((2,), 3, hidden=(4,))
    return DQNTask(model, num_actions=3, optimizer=partial(torch.optim.SGD, lr=0.1), **kwargs)


class _Trainer:
    """The two trainer attributes on_train_batch_end reads."""

    def __init__(self):
        self.global_step = 0


def test_target_network_updates_every_interval_only(monkeypatch):
    task = make_task(target_update_interval=3, tau=1.0)
    fake = _Trainer()
    monkeypatch.setattr(DQNTask, "global_step", property(lambda self: fake.global_step))
    class AddOne:  # an "optimizer"
        def step(self, closure=None):
            with torch.no_grad():
                for p in task.q_net.parameters():
                    p.add_(1.0)

    copies = []
    for step in range(1, 8):
        fake.global_step = step - 1  # Lightning counts the step once optimizer_step returns
        task.optimizer_step(0, step - 1, AddOne())
        same = all(torch.equal(a, b) for a, b in zip(task.q_net.parameters(), task.target_net.parameters()))
        copies.append(same)
    assert copies == [False, False, True, False, False, True, False]
    # the target is a frozen copy: never trained, never in the optimizer
    assert not any(p.requires_grad for p in task.target_net.parameters())
    optimized = [p for g in task.configure_optimizers().param_groups for p in g["params"]]  # the Task base's
    assert sorted(map(id, optimized)) == sorted(map(id, task.q_net.parameters()))


def test_epsilon_schedules():
    assert epsilon_at(0, 1.0, 0.1, 100) == 1.0
    assert epsilon_at(50, 1.0, 0.1, 100) == pytest.approx(0.55)
    assert epsilon_at(100, 1.0, 0.1, 100) == pytest.approx(0.1)
    assert epsilon_at(10_000, 1.0, 0.1, 100) == pytest.approx(0.1)
    assert epsilon_at(100, 1.0, 0.1, 100, "exponential") == pytest.approx(0.1 + 0.9 / np.e)


def test_epsilon_greedy_acting():
    task = make_task(epsilon_start=1.0, epsilon_end=0.0, epsilon_decay_steps=1000)
    task._rng = np.random.default_rng(0)
    obs = np.zeros((4000, 2), np.float32)
    greedy = task.act_greedy(obs[:1])[0]
    assert (task.act(obs, env_steps_total=1000) == greedy).all()  # epsilon 0
    actions = task.act(obs, env_steps_total=500)  # epsilon 0.5: half random over 3 actions
    assert np.mean(actions != greedy) == pytest.approx(0.5 * 2 / 3, abs=0.03)


def test_loss_weights_and_huber():
    task = make_task()
    td = torch.tensor([0.5, -3.0])
    assert task.loss(td, None).item() == pytest.approx((0.125 + 2.5) / 2)  # quadratic inside delta, linear outside
    assert task.loss(td, torch.tensor([2.0, 0.0])).item() == pytest.approx(0.125)
    assert make_task(loss="mse").loss(td, None).item() == pytest.approx((0.25 + 9.0) / 2)


def test_q_networks_shapes_and_dueling():
    mlp = MLPQNetwork((4,), 2, hidden=(8, 8), dueling=True)
    assert mlp(torch.zeros(5, 4)).shape == (5, 2)
    head = QHead(3, 4, dueling=True)
    q = head(torch.randn(6, 3))
    advantages = head.advantage(torch.randn(1, 3))
    # dueling: Q - V has zero mean over actions
    features = torch.randn(6, 3)
    torch.testing.assert_close((head(features) - head.value(features)).mean(dim=1), torch.zeros(6), atol=1e-6,
                               rtol=0)
    assert q.shape == (6, 4) and advantages.shape == (1, 4)
    cnn = NatureCNN((4, 84, 84), 6)
    assert cnn(torch.zeros(2, 4, 84, 84, dtype=torch.uint8)).shape == (2, 6)
    assert NatureCNN((4, 84, 84), 6, dueling=True)(torch.zeros(1, 4, 84, 84)).shape == (1, 6)


def collect(seed: int, rank: int, steps: int = 30, asynchronous: bool = False) -> np.ndarray:
    dm = EnvDataModule("CartPole-v1", num_envs=2, seed=seed, learning_starts=0, batch_size=1,
                       asynchronous=asynchronous)
    dm._rank = lambda: (rank, 2)
    dm.setup("fit")
    for _ in range(steps):
        dm.collector.step(policy=None)
    dm.teardown("fit")
    return dm.collector.replay.data["observations"][: len(dm.collector.replay)].copy()


def test_collection_is_reproducible_and_differs_between_ranks():
    a, b = collect(seed=5, rank=0), collect(seed=5, rank=0, asynchronous=True)
    np.testing.assert_array_equal(a, b)  # environments in subprocesses step exactly alike
    assert not np.array_equal(a, collect(seed=5, rank=1))
    assert not np.array_equal(a, collect(seed=6, rank=0))
