"""Building gymnasium environments by id: plain, vectorised, and for Atari with the standard wrappers.

Ids: gymnasium's own (CartPole-v1, Acrobot-v1, MountainCar-v0, ...), lightdist's GridWorld
(`lightdist/GridWorld-v0`) and, with the `atari` extra (ale-py), `ALE/<Game>-v5`.
"""

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

import lightdist.rl.gridworld  # noqa: F401  (registers lightdist/GridWorld-v0)
from lightdist.errors import DataError
from lightdist.rl.env_state import ResumableEnv


def is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/")


def _register_atari() -> None:
    try:
        import ale_py
    except ImportError as exc:
        raise DataError("Atari environments need ale-py", hint='pip install "lightdist[atari]"') from exc
    gym.register_envs(ale_py)


def atari_wrappers(env: gym.Env, frame_stack: int = 4) -> gym.Env:
    """The DQN preprocessing of Mnih et al. (2015) with gymnasium's wrappers: up to 30 no-op
    starts, 4-frame skip with max-pooling over the last two, 84x84 grayscale, rewards clipped
    to [-1, 1], the last 4 frames stacked (uint8 4 x 84 x 84)."""
    env = gym.wrappers.AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84, grayscale_obs=True,
                                          terminal_on_life_loss=False, scale_obs=False)
    env = gym.wrappers.ClipReward(env, -1.0, 1.0)
    return gym.wrappers.FrameStackObservation(env, frame_stack)


def make_env(env_id: str, env_kwargs: dict[str, Any] | None = None, max_episode_steps: int | None = None,
             render_mode: str | None = None) -> gym.Env:
    """One environment. Episode statistics (return and length, before any reward clipping) are
    recorded by gymnasium's RecordEpisodeStatistics and reported in `info["episode"]`; it sits
    below the Atari wrappers, so Atari returns are game scores and lengths count emulator frames.
    The outermost wrapper, ResumableEnv, reads and sets the whole chain's state for checkpoints."""
    kwargs = dict(env_kwargs or {})
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = max_episode_steps
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    if is_atari(env_id):
        _register_atari()
        kwargs.setdefault("frameskip", 1)  # AtariPreprocessing skips frames itself
    try:
        env = gym.make(env_id, **kwargs)
    except gym.error.Error as exc:
        raise DataError(f"cannot make environment {env_id!r}: {exc}",
                        hint="use a gymnasium id such as CartPole-v1, Acrobot-v1, MountainCar-v0, "
                             "lightdist/GridWorld-v0 or ALE/Pong-v5") from exc
    except TypeError as exc:
        raise DataError(f"environment {env_id!r} rejects its arguments: {exc}",
                        hint="check data.env_kwargs") from exc
    env = gym.wrappers.RecordEpisodeStatistics(env)
    if is_atari(env_id):
        env = atari_wrappers(env)
    return ResumableEnv(env)


def make_vector_env(env_fn: Callable[[], gym.Env], num_envs: int, asynchronous: bool = False) -> gym.vector.VectorEnv:
    """`num_envs` copies stepped together. Sub-environments reset in the same step as they end
    (SAME_STEP autoreset): the step returns the first observation of the next episode and the
    last one of the ended episode in `info["final_obs"]`, so no step is wasted on resets."""
    cls = gym.vector.AsyncVectorEnv if asynchronous else gym.vector.SyncVectorEnv
    return cls([env_fn] * num_envs, autoreset_mode=AutoresetMode.SAME_STEP)


def finished_episodes(infos: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(returns, lengths) of the episodes that ended in this vector step, from RecordEpisodeStatistics."""
    final = infos.get("final_info")
    if not final or "episode" not in final:
        return np.zeros(0), np.zeros(0, np.int64)
    ended = final["_episode"]
    return final["episode"]["r"][ended].astype(np.float64), final["episode"]["l"][ended].astype(np.int64)
