"""Replay buffers and n-step folding against hand-computed values."""

import numpy as np
import pytest
import torch

from lightdist.rl.replay import NStepFolder, PrioritizedReplayBuffer, ReplayBuffer, SegmentTree


def transitions(start: int, count: int) -> dict[str, np.ndarray]:
    ids = np.arange(start, start + count)
    return {"observations": ids[:, None].astype(np.float32), "actions": ids % 2, "rewards": ids.astype(np.float32),
            "next_observations": (ids + 100)[:, None].astype(np.float32), "discounts": np.full(count, 0.9, np.float32)}


def test_uniform_buffer_is_a_ring():
    buffer = ReplayBuffer(4, (1,), np.float32, np.random.default_rng(0))
    buffer.add(transitions(0, 3))
    assert len(buffer) == 3 and buffer.position == 3
    buffer.add(transitions(3, 3))  # 3, 4, 5: slot 3, then 0 and 1 are overwritten
    assert len(buffer) == 4 and buffer.position == 2
    assert buffer.data["observations"][:, 0].tolist() == [4, 5, 2, 3]
    assert buffer.data["next_observations"][:, 0].tolist() == [104, 105, 102, 103]
    batch = buffer.sample(1000)
    assert set(batch["observations"][:, 0].tolist()) == {2, 3, 4, 5}
    # fields stay aligned: each sampled row is one transition
    np.testing.assert_array_equal(batch["rewards"], batch["observations"][:, 0])
    np.testing.assert_array_equal(batch["next_observations"][:, 0], batch["observations"][:, 0] + 100)


def test_uniform_buffer_state_round_trip():
    buffer = ReplayBuffer(8, (1,), np.float32, np.random.default_rng(3))
    buffer.add(transitions(0, 5))
    state = buffer.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state["data"].values())
    copy = ReplayBuffer(8, (1,), np.float32, np.random.default_rng(99))
    copy.load_state_dict(state)
    assert (copy.size, copy.position) == (5, 5)
    np.testing.assert_array_equal(buffer.sample(16)["rewards"], copy.sample(16)["rewards"])  # same rng state too


def push_steps(folder, steps):
    """steps: (obs, reward, next_obs, terminated, truncated) for a single environment."""
    out = []
    for obs, reward, next_obs, terminated, truncated in steps:
        ready = folder.push(np.array([[obs]], np.float32), np.array([0]), np.array([reward]),
                            np.array([[next_obs]], np.float32), np.array([terminated]), np.array([truncated]))
        if ready:
            out += [(float(o[0]), float(r), float(n[0]), float(d)) for o, r, n, d in
                    zip(ready["observations"], ready["rewards"], ready["next_observations"], ready["discounts"])]
    return out


def test_three_step_returns_with_termination():
    folder = NStepFolder(num_envs=1, n=3, gamma=0.5)
    out = push_steps(folder, [(0, 1.0, 1, False, False), (1, 2.0, 2, False, False), (2, 3.0, 3, False, False),
                              (3, 4.0, 4, True, False)])
    assert out == [
        (0, 1 + 0.5 * 2 + 0.25 * 3, 3, 0.125),  # full 3 steps: bootstrap from obs 3 with gamma^3
        (1, 2 + 0.5 * 3 + 0.25 * 4, 4, 0.0),  # the episode terminated inside the window: no bootstrap
        (2, 3 + 0.5 * 4, 4, 0.0),
        (3, 4.0, 4, 0.0),
    ]


def test_truncation_bootstraps_from_the_last_observation():
    folder = NStepFolder(num_envs=1, n=3, gamma=0.5)
    out = push_steps(folder, [(0, 1.0, 1, False, False), (1, 2.0, 2, False, True)])
    assert out == [(0, 1 + 0.5 * 2, 2, 0.25), (1, 2.0, 2, 0.5)]
    # the next episode starts from scratch
    assert push_steps(folder, [(10, 1.0, 11, False, False)]) == []


def test_one_step_is_plain_dqn_and_envs_are_independent():
    folder = NStepFolder(num_envs=2, n=1, gamma=0.9)
    ready = folder.push(np.array([[0.0], [5.0]]), np.array([1, 0]), np.array([1.0, -1.0]), np.array([[1.0], [6.0]]),
                        np.array([False, True]), np.array([False, False]))
    np.testing.assert_allclose(ready["rewards"], [1.0, -1.0])
    np.testing.assert_allclose(ready["discounts"], [0.9, 0.0])
    assert ready["actions"].tolist() == [1, 0]
    folder = NStepFolder(num_envs=2, n=2, gamma=0.9)
    first = folder.push(np.array([[0.0], [5.0]]), np.array([0, 0]), np.array([1.0, 2.0]), np.array([[1.0], [6.0]]),
                        np.array([False, True]), np.array([False, False]))
    assert first["observations"][:, 0].tolist() == [5.0]  # env 1 ended; env 0 still waits for a second step


def test_sum_tree_sums_and_prefix_search():
    tree = SegmentTree(5, np.add, 0.0)  # 8 leaves
    tree.update(np.arange(5), np.array([1.0, 2.0, 3.0, 4.0, 0.5]))
    assert tree.root == 10.5
    # prefix boundaries: [0,1) -> 0, [1,3) -> 1, [3,6) -> 2, [6,10) -> 3, [10,10.5) -> 4
    found = tree.find_prefix(np.array([0.0, 0.99, 1.0, 2.9, 3.0, 5.99, 6.0, 9.99, 10.0, 10.49]))
    assert found.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    tree.update(np.array([1, 1]), np.array([7.0, 7.0]))
    assert tree.root == 15.5
    minima = SegmentTree(5, np.minimum, np.inf)
    minima.update(np.arange(5), np.array([1.0, 2.0, 3.0, 4.0, 0.5]))
    assert minima.root == 0.5


def test_prioritized_sampling_and_importance_weights():
    buffer = PrioritizedReplayBuffer(4, (1,), np.float32, np.random.default_rng(0), alpha=1.0)
    buffer.add(transitions(0, 4))
    buffer.update_priorities(np.arange(4), np.array([1.0, 2.0, 3.0, 4.0]))
    batch = buffer.sample(20000, beta=1.0)
    frequencies = np.bincount(batch["indices"], minlength=4) / 20000
    np.testing.assert_allclose(frequencies, [0.1, 0.2, 0.3, 0.4], atol=0.01)
    # w_i = (N P_i)^-beta / max_j w_j = (p_i / p_min)^-beta: 1, 1/2, 1/3, 1/4
    by_index = {int(i): float(w) for i, w in zip(batch["indices"], batch["weights"])}
    assert by_index == pytest.approx({0: 1.0, 1: 0.5, 2: 1 / 3, 3: 0.25})
    np.testing.assert_array_equal(batch["observations"][:, 0], batch["indices"])  # rows match their slots
    # alpha and beta bend both: priorities ^ 0.5, weights ^ 0.5
    buffer = PrioritizedReplayBuffer(4, (1,), np.float32, np.random.default_rng(0), alpha=0.5)
    buffer.add(transitions(0, 2))
    buffer.update_priorities(np.array([0, 1]), np.array([1.0, 4.0]))
    assert buffer.sums.root == pytest.approx(3.0)
    batch = buffer.sample(64, beta=0.5)
    by_index = {int(i): float(w) for i, w in zip(batch["indices"], batch["weights"])}
    assert by_index == pytest.approx({0: 1.0, 1: 0.5 ** 0.5})


def test_new_transitions_get_the_largest_priority_and_state_round_trips():
    buffer = PrioritizedReplayBuffer(8, (1,), np.float32, np.random.default_rng(0), alpha=1.0)
    buffer.add(transitions(0, 2))
    buffer.update_priorities(np.array([0, 1]), np.array([0.5, 3.0]))
    buffer.add(transitions(2, 1))
    assert buffer.sums[np.arange(3)].tolist() == [0.5, 3.0, 3.0]
    copy = PrioritizedReplayBuffer(8, (1,), np.float32, np.random.default_rng(1), alpha=1.0)
    copy.load_state_dict(buffer.state_dict())
    assert copy.sums.root == buffer.sums.root == 6.5 and copy.max_priority == 3.0
    with pytest.raises(ValueError):
        buffer.update_priorities(np.array([0]), np.array([0.0]))
