"""GridWorld dynamics, rewards, termination and truncation, and gymnasium's own env checker."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from lightdist.rl.gridworld import ENV_ID, GridWorldEnv

UP, RIGHT, DOWN, LEFT = range(4)


def position(obs: np.ndarray, size: int) -> tuple[int, int]:
    return divmod(int(np.flatnonzero(obs)[0]), size)


@pytest.mark.parametrize("observation", ["onehot", "coordinates", "image"])
def test_check_env_passes(observation):
    # through gym.make, so that the checker also tries the other render modes from the spec
    check_env(gym.make(ENV_ID, observation=observation, render_mode="rgb_array").unwrapped)


def test_moves_edges_and_walls():
    env = GridWorldEnv(size=4, traps=[], walls=[(1, 1)])
    obs, _ = env.reset(seed=0)
    assert position(obs, 4) == (0, 0)
    obs, reward, terminated, truncated, _ = env.step(UP)  # off the grid: stays, pays the step
    assert position(obs, 4) == (0, 0) and reward == pytest.approx(-0.01) and not terminated and not truncated
    obs, *_ = env.step(LEFT)
    assert position(obs, 4) == (0, 0)
    obs, *_ = env.step(RIGHT)
    assert position(obs, 4) == (0, 1)
    obs, reward, *_ = env.step(DOWN)  # into the wall at (1, 1): blocked
    assert position(obs, 4) == (0, 1) and reward == pytest.approx(-0.01)
    obs, *_ = env.step(RIGHT)
    obs, *_ = env.step(DOWN)
    assert position(obs, 4) == (1, 2)


def test_trap_ends_the_episode_with_its_penalty():
    env = GridWorldEnv(size=3, traps=[(0, 1)], walls=[], trap_penalty=-2.0)
    env.reset()
    _, reward, terminated, truncated, info = env.step(RIGHT)
    assert (reward, terminated, truncated, info["position"]) == (-2.0, True, False, (0, 1))


def test_goal_ends_the_episode_with_its_reward():
    env = GridWorldEnv(size=2, traps=[], walls=[], goal_reward=5.0, step_penalty=-0.5)
    env.reset()
    _, reward, terminated, _, _ = env.step(RIGHT)
    assert (reward, terminated) == (-0.5, False)
    _, reward, terminated, truncated, _ = env.step(DOWN)
    assert (reward, terminated, truncated) == (5.0, True, False)


def test_truncation_at_the_step_limit_is_not_termination():
    env = gym.make(ENV_ID, max_episode_steps=3)
    env.reset(seed=1)
    flags = [env.step(UP)[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]
    assert gym.make(ENV_ID).spec.max_episode_steps == 100


def test_observations_and_rendering():
    env = GridWorldEnv(size=3, traps=[(1, 1)], walls=[(0, 2)], observation="image", render_mode="ansi")
    obs, _ = env.reset()
    assert obs.shape == (4, 3, 3) and obs[0, 0, 0] == 1 and obs[1, 2, 2] == 1 and obs[2, 1, 1] == 1 and obs[3, 0, 2] == 1
    assert env.render() == "A.#\n.X.\n..G\n"
    coords = GridWorldEnv(size=5, observation="coordinates")
    coords.reset()
    obs, *_ = coords.step(DOWN)
    np.testing.assert_allclose(obs, [0.25, 0.0])
    frame = GridWorldEnv(size=3, render_mode="rgb_array", traps=[], walls=[])
    frame.reset()
    assert frame.render().shape == (96, 96, 3)


def test_shortest_path_avoids_traps_and_walls():
    assert GridWorldEnv(size=5).shortest_path_length() == 8
    # a wall of traps across the middle row except its last cell forces a detour
    env = GridWorldEnv(size=3, traps=[(1, 0), (1, 1)], walls=[])
    assert env.shortest_path_length() == 4
    assert GridWorldEnv(size=3, traps=[(1, 0), (1, 1), (1, 2)], walls=[]).shortest_path_length() is None


def test_invalid_layouts_are_refused():
    with pytest.raises(ValueError, match="outside"):
        GridWorldEnv(size=3, traps=[(3, 0)])
    with pytest.raises(ValueError, match="start and goal"):
        GridWorldEnv(size=3, traps=[], walls=[(2, 2)])
