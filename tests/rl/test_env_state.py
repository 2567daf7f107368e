"""Environment state capture: a snapshot restored into fresh environments continues every episode
exactly (observations, rewards, ends, episode statistics), through a weights-only checkpoint; and
the collector and data module built on it continue collection and the training pass exactly."""

import io
from functools import partial
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

from lightdist.rl.data import Collector, EnvDataModule
from lightdist.rl.env_state import capture, capture_vector, restore, restore_vector, uncapturable
from lightdist.rl.envs import make_env, make_vector_env
from lightdist.rl.replay import NStepFolder, ReplayBuffer


def through_checkpoint(state):
    """What a checkpoint gives back: torch.save, then a weights-only load."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def play(envs: gym.vector.VectorEnv, actions: np.ndarray) -> list:
    out = []
    for a in actions:
        obs, rewards, terminated, truncated, infos = envs.step(a)
        stats = infos.get("final_info", {}).get("episode", {})
        out.append((obs.copy(), rewards.copy(), terminated.copy(), truncated.copy(),
                    infos.get("final_obs"), stats.get("r"), stats.get("l")))
    return out


def assert_same(a: list, b: list) -> None:
    def same(u, v, where: str) -> None:
        if u is None or v is None:
            assert u is None and v is None, where
        elif isinstance(u, np.ndarray) and u.dtype == object:  # final_obs: None where no episode ended
            for i, (x, y) in enumerate(zip(u, v, strict=True)):
                same(x, y, f"{where}, env {i}")
        else:
            np.testing.assert_array_equal(u, v, err_msg=where)

    assert len(a) == len(b)
    for step, (x, y) in enumerate(zip(a, b)):
        for u, v in zip(x, y):
            same(u, v, f"step {step}")


# (id, time limit, asynchronous): short limits put truncations inside the compared window
CASES = [("lightdist/GridWorld-v0", 7, False), ("CartPole-v1", 12, False), ("CartPole-v1", 12, True),
         ("Acrobot-v1", 9, False), ("MountainCar-v0", 9, False), ("ALE/Pong-v5", 30, False)]


@pytest.mark.parametrize(("env_id", "limit", "asynchronous"), CASES,
                         ids=[f"{e}-{'async' if a else 'sync'}" for e, _, a in CASES])
def test_snapshot_continues_episodes_exactly(env_id, limit, asynchronous):
    if env_id.startswith("ALE/"):
        pytest.importorskip("ale_py")
        pytest.importorskip("cv2")  # gymnasium's AtariPreprocessing
    env_fn = partial(make_env, env_id, {}, limit)
    first = make_vector_env(env_fn, 2, asynchronous)
    second = make_vector_env(env_fn, 2, asynchronous)
    try:
        first.reset(seed=3)
        first.action_space.seed(3)
        rng = np.random.default_rng(0)
        play(first, rng.integers(0, first.single_action_space.n, (11, 2)))  # mid-episode, after some ends
        state = through_checkpoint(capture_vector(first))
        actions = rng.integers(0, first.single_action_space.n, (40, 2))
        expected = play(first, actions)
        expected_random = first.action_space.sample()

        restore_vector(second, state)  # never reset: everything comes from the snapshot
        assert_same(play(second, actions), expected)
        np.testing.assert_array_equal(second.action_space.sample(), expected_random)
        # not a trivially equal continuation: a reset environment would act differently
        assert any(r[4] is not None for r in expected), "no episode ended in the window"
    finally:
        first.close()
        second.close()


def test_capture_off_diverges():
    """The comparison above can fail: without the restored state the same actions play differently."""
    env_fn = partial(make_env, "CartPole-v1", {}, 12)
    first, second = make_vector_env(env_fn, 2), make_vector_env(env_fn, 2)
    first.reset(seed=3)
    play(first, np.ones((5, 2), np.int64))
    second.reset(seed=3)  # fresh episodes from the same seed instead of the snapshot
    actions = np.random.default_rng(0).integers(0, 2, (20, 2))
    with pytest.raises(AssertionError):
        assert_same(play(second, actions), play(first, actions))


class OpaqueEnv(gym.Env):
    """An environment of unknown make: its state cannot be told from its attributes."""
    observation_space = gym.spaces.Box(0, 1, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), 0.0, False, False, {}


def test_unknown_environment_is_reported_not_captured():
    env = gym.wrappers.TimeLimit(OpaqueEnv(), 5)
    state = capture(env)
    assert "OpaqueEnv" in state["uncapturable"]
    assert uncapturable({"envs": [state]}) is not None
    with pytest.raises(ValueError, match="not captured"):
        restore(env, state)


def test_gridworld_state_methods():
    env = make_env("lightdist/GridWorld-v0", {}, 100)
    env.reset(seed=0)
    for action in (1, 1, 2):
        env.step(action)
    state = through_checkpoint(env.unwrapped.state_dict())
    other = make_env("lightdist/GridWorld-v0", {}, 100)
    other.unwrapped.load_state_dict(state)
    assert other.unwrapped.agent == env.unwrapped.agent == (1, 2)
    assert other.unwrapped.np_random.random() == env.unwrapped.np_random.random()


def test_collector_state_continues_collection():
    """Counters, n-step queues, observations, replay and its generator: two collectors, one restored from
    the other's checkpointed state, collect and sample the same transitions."""
    def collector() -> Collector:
        env_fn = partial(make_env, "CartPole-v1", {}, 15)
        replay = ReplayBuffer(64, (4,), np.float32, np.random.default_rng(1))
        return Collector(make_vector_env(env_fn, 2), replay, NStepFolder(2, 3, 0.9), seed=5)

    def policy(rng):
        return lambda obs, steps: rng.integers(0, 2, len(obs))

    first, second = collector(), collector()
    for _ in range(9):
        first.step(policy(np.random.default_rng(2)))
    state = through_checkpoint(first.state_dict(replay=True))
    assert second.load_state_dict(state) is None
    for c in (first, second):
        rng = np.random.default_rng(4)
        for _ in range(25):
            c.step(policy(rng))
    assert (first.env_steps, first.episodes) == (second.env_steps, second.episodes) == (68, first.episodes)
    assert first.take_finished() == second.take_finished()
    a, b = first.replay.sample(16), second.replay.sample(16)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    first.close()
    second.close()


def fitting_module(trained: list[int]) -> EnvDataModule:
    """A data module as Lightning drives it in fit on one process; `trained[0]` plays Lightning's
    count of the batches of the pass the task has trained on."""
    module = EnvDataModule("CartPole-v1", num_envs=2, n_step=3, batch_size=8, learning_starts=16, buffer_size=40,
                           batches_per_epoch=6, checkpoint_replay=True, max_episode_steps=15)
    class Progress:
        @property
        def current(self):
            return SimpleNamespace(processed=trained[0])

    progress = Progress()
    module.trainer = SimpleNamespace(state=SimpleNamespace(fn="fit"), global_rank=0, world_size=1,
                                     fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)))
    module.setup("fit")
    # pushes the cart towards the side the pole leans to: a policy that depends on observations only
    module.set_policy(lambda obs, steps: (obs[:, 2] > 0).astype(np.int64), None)
    return module


def assert_batches_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_data_module_resumes_the_pass_with_the_batch_not_trained_on(caplog):
    trained = [0]
    first = fitting_module(trained)
    stream = first.serve(6)
    for _ in range(3):
        next(stream)
    trained[0] = 2  # the third batch is fetched, its step not taken: the preemption checkpoint's moment
    state = through_checkpoint(first.state_dict())
    assert state["ranks"][0]["pass"]["trained"] == 2 and len(state["ranks"][0]["pass"]["untrained"]) == 1

    second = fitting_module([0])
    second.load_state_dict(state)
    resumed = list(second.serve(6))
    assert len(resumed) == 4  # the rest of the pass, the untrained batch first
    assert_batches_equal(resumed[0], state["ranks"][0]["pass"]["untrained"][0])
    # the batches after it, produced from the restored environments, replay and generators
    for batch in resumed[1:]:
        assert_batches_equal(batch, next(stream))
    first.collector.close()
    second.collector.close()

    # saved by two ranks, resumed on one: counters and a buffer, fresh episodes, a warning
    other = fitting_module([0])
    with caplog.at_level("WARNING"):
        other.load_state_dict({**state, "ranks": state["ranks"] * 2})
    assert other.collector.env_steps == state["env_steps"] == 22  # 16 warm-up + 3 batches x 2 envs
    assert len(other.collector.replay) == state["ranks"][0]["replay"]["size"] > 0
    assert other.collector.observations is None and other._resume_batches == []
    assert "saved by 2 ranks" in caplog.text and "episodes in flight restart" in caplog.text
    other.collector.close()
