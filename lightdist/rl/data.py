"""Reinforcement-learning data: environments in, replay batches and evaluation episodes out.

The Lightning way of feeding an off-policy agent. The training "dataset" is a stream:
each item costs `steps_per_batch` steps of every vectorised environment, acting with the
policy the task attached, and is a batch sampled from the replay buffer. An epoch is a
fixed number of batches, so every DDP rank makes the same number of optimizer steps.
Validation and test items are whole greedy episodes on a separate environment. Trainer,
strategies, precision, checkpoints and loggers therefore work unchanged.

Under DDP every rank collects in its own environments (seeded by seed and rank) into its
own buffer; ranks step in lockstep, so total environment steps are this rank's times the
world size.

Checkpoints hold every rank's collection state (lightdist.distributed.rank_states): counters,
replay buffer and its generator, n-step queues, the environments in flight (lightdist.rl.env_state)
and the batch served but not yet trained on, so a run resumed at any batch repeats the
uninterrupted one exactly.
"""

import logging
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from lightdist.data.base import DataModule
from lightdist.data.samplers import UnpaddedDistributedSampler
from lightdist.distributed.rank_states import gather, own
from lightdist.errors import ConfigError, DataError
from lightdist.rl.env_state import capture_vector, decode, encode, restore_vector, uncapturable
from lightdist.rl.envs import finished_episodes, make_env, make_vector_env
from lightdist.rl.recording import check_video_format, save_video
from lightdist.rl.replay import NStepFolder, PrioritizedReplayBuffer, ReplayBuffer

# explore(observations, env_steps_total) -> actions; greedy(observations) -> actions
ExplorePolicy = Callable[[np.ndarray, int], np.ndarray]
GreedyPolicy = Callable[[np.ndarray], np.ndarray]

_TRAIN, _VAL, _TEST = 0, 1, 2  # seed streams: training envs, validation episodes, test episodes

log = logging.getLogger(__name__)


def stream_seed(seed: int, *path: int) -> int:
    """An independent seed for each (seed, purpose, rank...): never the same stream twice."""
    return int(np.random.SeedSequence([seed, *path]).generate_state(1)[0])


class Collector:
    """Steps a vector environment with a policy and fills a replay buffer (one per rank)."""

    def __init__(self, envs: gym.vector.VectorEnv, replay: ReplayBuffer, folder: NStepFolder, seed: int,
                 world_size: int = 1):
        self.envs, self.replay, self.folder = envs, replay, folder
        self.seed, self.world_size = seed, world_size
        self.env_steps = 0  # this rank's, summed over its vector environments
        self.episodes = 0
        self.observations: np.ndarray | None = None
        self.finished_returns: list[float] = []
        self.finished_lengths: list[int] = []
        self.closed = False

    @property
    def num_envs(self) -> int:
        return self.envs.num_envs

    def _reset(self) -> None:
        # Seeded by where the run stands, so that a resumed run does not replay its first episodes.
        seed = stream_seed(self.seed, self.env_steps)
        self.observations, _ = self.envs.reset(seed=seed)
        self.envs.action_space.seed(seed)
        self.folder.reset()

    def step(self, policy: ExplorePolicy | None) -> None:
        """One step of every environment; `policy=None` acts uniformly at random (warm-up)."""
        if self.observations is None:
            self._reset()
        obs = self.observations
        if policy is None:
            actions = self.envs.action_space.sample()
        else:
            actions = policy(obs, self.env_steps * self.world_size)
        next_obs, rewards, terminated, truncated, infos = self.envs.step(actions)
        ended = terminated | truncated
        last_obs = next_obs
        if ended.any():
            # SAME_STEP autoreset: next_obs already starts the next episode; the ended one's last
            # observation is what its final transition leads to.
            last_obs = next_obs.copy()
            for i in np.flatnonzero(ended):
                last_obs[i] = infos["final_obs"][i]
            returns, lengths = finished_episodes(infos)
            self.finished_returns.extend(returns.tolist())
            self.finished_lengths.extend(lengths.tolist())
            self.episodes += int(ended.sum())
        transitions = self.folder.push(obs, actions, rewards, last_obs, terminated, truncated)
        if transitions:
            self.replay.add(transitions)
        self.observations = next_obs
        self.env_steps += self.num_envs

    def take_finished(self) -> tuple[list[float], list[int]]:
        returns, lengths = self.finished_returns, self.finished_lengths
        self.finished_returns, self.finished_lengths = [], []
        return returns, lengths

    def close(self) -> None:
        self.envs.close()
        self.closed = True

    def state_dict(self, replay: bool, in_flight: bool = True) -> dict[str, Any]:
        """Everything stepping and sampling depend on; the replay buffer's contents only if `replay`,
        the environments' episodes only if `in_flight`."""
        state = {"env_steps": self.env_steps, "episodes": self.episodes,
                 "finished_returns": list(self.finished_returns), "finished_lengths": list(self.finished_lengths),
                 "replay_rng": self.replay.rng.bit_generator.state}
        if replay:
            state["replay"] = self.replay.state_dict()
        if in_flight and self.observations is not None and not self.closed:
            state["episodes_in_flight"] = {"envs": capture_vector(self.envs), "observations": encode(self.observations),
                                           "n_step_queues": encode(self.folder.pending)}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> str | None:
        """Restores `state`; returns why episodes in flight could not continue (None when they do)."""
        self.env_steps, self.episodes = int(state["env_steps"]), int(state["episodes"])
        self.finished_returns = [float(r) for r in state["finished_returns"]]
        self.finished_lengths = [int(n) for n in state["finished_lengths"]]
        if "replay" in state:
            self.replay.load_state_dict(state["replay"])
        if "replay_rng" in state:  # checkpoints of earlier versions kept it in the replay state only
            self.replay.rng.bit_generator.state = state["replay_rng"]
        self.observations = None  # fresh episodes (seeded by env_steps) unless those in flight come back
        flight = state.get("episodes_in_flight")
        if flight is None:
            return None if self.env_steps == 0 else "the checkpoint holds no environment state"
        why = uncapturable(flight["envs"])
        queues = decode(flight["n_step_queues"])
        if why is None and (len(queues) != self.num_envs or any(len(q) >= self.folder.n for q in queues)):
            why = "data.num_envs or data.n_step changed"
        if why is not None:
            return why
        try:
            restore_vector(self.envs, flight["envs"])
        except ValueError as exc:  # another environment than the checkpoint's: _reset starts afresh
            return str(exc)
        self.observations = decode(flight["observations"])
        self.folder.pending = queues
        return None


class ExperienceStream(IterableDataset):
    """`batches` replay batches per pass, each after `steps_per_batch` vector steps of acting."""

    def __init__(self, module: "EnvDataModule", batches: int):
        self.module, self.batches = module, batches

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        return self.module.serve(self.batches)


class ExperienceLoader(DataLoader):
    """The training loader. Resumable, as Lightning asks of a loader resumed mid-epoch (it warns
    otherwise): where the pass stands and the batch served but not trained on are every rank's own,
    so they travel in the data module's per-rank state (EnvDataModule.state_dict), not here."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class EpisodeDataset(Dataset):
    """Item i is greedy episode i, played on this dataset's own environment with a fixed seed."""

    def __init__(self, module: "EnvDataModule", stage: Literal["val", "test"], episodes: int):
        self.module, self.stage, self.episodes = module, stage, episodes
        self.env: gym.Env | None = None

    def __len__(self) -> int:
        return self.episodes

    def __getitem__(self, index: int) -> dict[str, float]:
        seed, policy = self.module.episode_seed(self.stage, index), self.module.greedy_policy
        record = self.module.video_path(self.stage) if index == 0 else None
        if record is None:
            if self.env is None:
                self.env = self.module.make_env()
            total, length, _ = run_episode(self.env, policy, seed)
        else:
            # Its own rendering environment: the other episodes do not pay for frames.
            env = self.module.make_env(render_mode="rgb_array")
            total, length, frames = run_episode(env, policy, seed, render=True)
            env.close()
            save_video(frames, record, fps=env.metadata.get("render_fps") or 30)
        return {"return": total, "length": length}

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None


def run_episode(env: gym.Env, policy: GreedyPolicy, seed: int, render: bool = False
                ) -> tuple[float, int, list[np.ndarray]]:
    """Play one episode to its end (termination or truncation); returns (return, length, frames).

    The return is the environment's own (RecordEpisodeStatistics sits below reward clipping)."""
    obs, _ = env.reset(seed=seed)
    frames = [env.render()] if render else []
    while True:
        action = policy(obs[None])[0]
        obs, _, terminated, truncated, info = env.step(action)
        if render:
            frames.append(env.render())
        if terminated or truncated:
            return float(info["episode"]["r"]), int(info["episode"]["l"]), frames


class EnvDataModule(DataModule):
    FACTS = ("observation_shape", "num_actions")

    def __init__(
        self,
        env_id: str,
        env_kwargs: dict[str, Any] | None = None,
        max_episode_steps: int | None = None,
        num_envs: int = 1,
        asynchronous: bool = False,
        seed: int = 0,
        gamma: float = 0.99,
        n_step: int = 1,
        buffer_size: int = 100_000,
        batch_size: int = 64,
        learning_starts: int = 1000,
        steps_per_batch: int = 1,
        batches_per_epoch: int = 1000,
        prioritized: bool = False,
        priority_alpha: float = 0.6,
        priority_beta: float = 0.4,
        priority_beta_batches: int = 100_000,
        eval_episodes: int = 10,
        test_episodes: int = 20,
        record_video: Literal["none", "final", "every_eval"] = "none",
        video_format: Literal["gif", "mp4"] = "gif",
        checkpoint_replay: bool = False,
    ):
        """Environment `env_id` (gymnasium id; `env_kwargs` go to gym.make) stepped as `num_envs`
        vectorised copies per rank (in subprocesses when `asynchronous`).

        Each training batch: `steps_per_batch` steps of every environment (so steps_per_batch *
        num_envs env steps per gradient step), then `batch_size` transitions from the replay
        buffer (`buffer_size`; `prioritized` for proportional prioritized replay with
        `priority_alpha` and importance weights annealed from `priority_beta` to 1 over
        `priority_beta_batches`). Until `learning_starts` env steps (per rank) the environments
        act at random and no batch is served. Transitions carry `n_step`-step returns with
        discount `gamma`. An epoch is `batches_per_epoch` batches, followed by `eval_episodes`
        greedy episodes; the test runs `test_episodes`. `record_video` saves the first greedy
        episode of the final test (or of every evaluation too) to <run_dir>/videos.
        `checkpoint_replay` puts every rank's replay buffer into checkpoints; without it a resumed
        run refills the buffer by acting, so it does not repeat the uninterrupted run exactly.
        """
        super().__init__()
        checks = {"num_envs": num_envs, "n_step": n_step, "buffer_size": buffer_size, "batch_size": batch_size,
                  "steps_per_batch": steps_per_batch, "batches_per_epoch": batches_per_epoch}
        for name, value in checks.items():
            if value < 1:
                raise ConfigError(f"data.{name} must be at least 1, got {value}")
        if not 0.0 <= gamma <= 1.0:
            raise ConfigError(f"data.gamma must lie in [0, 1], got {gamma}")
        if learning_starts < 0 or eval_episodes < 0 or test_episodes < 0:
            raise ConfigError("data.learning_starts, data.eval_episodes and data.test_episodes cannot be negative")
        self.env_id, self.env_kwargs, self.max_episode_steps = env_id, dict(env_kwargs or {}), max_episode_steps
        self.num_envs, self.asynchronous, self.seed = num_envs, asynchronous, seed
        self.gamma, self.n_step = gamma, n_step
        self.buffer_size, self.batch_size = buffer_size, batch_size
        self.learning_starts = max(learning_starts, batch_size)
        self.steps_per_batch, self.batches_per_epoch = steps_per_batch, batches_per_epoch
        self.prioritized, self.priority_alpha = prioritized, priority_alpha
        self.priority_beta, self.priority_beta_batches = priority_beta, priority_beta_batches
        self.eval_episodes, self.test_episodes = eval_episodes, test_episodes
        self.record_video, self.video_format = record_video, video_format
        self.checkpoint_replay = checkpoint_replay
        self.collector: Collector | None = None
        self.batches = 0  # replay batches served (anneals the prioritized-replay beta)
        self._refill_steps = 0
        # Where the training pass stands: batches served in it, the last ones served (Lightning
        # fetches a batch before the checkpoint of its step start is taken), and after a resume
        # where the pass continues with what it served but the task had not trained on yet.
        self._served = 0
        self._recent: deque[dict[str, torch.Tensor]] = deque(maxlen=2)
        self._resume_at, self._resume_batches = 0, []
        self.exact_resume = True  # train.py sets the top-level `exact_resume`; false: fresh episodes on resume
        self.explore_policy: ExplorePolicy | None = None
        self.greedy_policy: GreedyPolicy | None = None
        self._episode_sets: dict[str, EpisodeDataset] = {}
        self._spaces: tuple[gym.Space, gym.Space] | None = None
        self._render_modes: list[str] = []

    # -- what train.py and preflight ask ------------------------------------------------------
    def make_env(self, render_mode: str | None = None) -> gym.Env:
        return make_env(self.env_id, self.env_kwargs, self.max_episode_steps, render_mode)

    def spaces(self) -> tuple[gym.Space, gym.Space]:
        if self._spaces is None:
            env = self.make_env()
            self._spaces = (env.observation_space, env.action_space)
            self._render_modes = list(env.metadata.get("render_modes", []))
            env.close()
        return self._spaces

    def facts(self) -> dict[str, Any]:
        observation_space, action_space = self.spaces()
        return {"observation_shape": tuple(observation_space.shape), "num_actions": int(action_space.n)}

    def check_available(self) -> None:
        observation_space, action_space = self.spaces()
        if not isinstance(action_space, gym.spaces.Discrete):
            raise DataError(f"{self.env_id} has {action_space} actions; this data module serves discrete-action "
                            "environments", hint="pick an environment with Discrete actions (CartPole-v1, ...)")
        if not isinstance(observation_space, gym.spaces.Box):
            raise DataError(f"{self.env_id} observes {observation_space}; array (Box) observations are needed",
                            hint="wrap it (e.g. FlattenObservation) in a registered environment")
        if self.record_video != "none":
            if "rgb_array" not in self._render_modes:
                raise ConfigError(f"{self.env_id} cannot render frames (render modes: {self._render_modes})",
                                  hint="data.record_video=none")
            check_video_format(self.video_format)

    # -- the policy, from the task ---------------------------------------------------------------
    def set_policy(self, explore: ExplorePolicy, greedy: GreedyPolicy) -> None:
        """The task hands in how to act: this module knows environments, not value functions."""
        self.explore_policy, self.greedy_policy = explore, greedy

    # -- Lightning hooks ---------------------------------------------------------------------------
    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def setup(self, stage: str | None = None) -> None:
        self.check_available()
        if stage in ("fit", None) and self.collector is None:
            rank, world_size = self._rank()
            observation_space, _ = self.spaces()
            rng = np.random.default_rng(stream_seed(self.seed, _TRAIN, rank, 1))
            shape, dtype = tuple(observation_space.shape), observation_space.dtype
            replay = (PrioritizedReplayBuffer(self.buffer_size, shape, dtype, rng, self.priority_alpha)
                      if self.prioritized else ReplayBuffer(self.buffer_size, shape, dtype, rng))
            # A plain function of plain values: asynchronous environments may pickle it to their processes.
            env_fn = partial(make_env, self.env_id, self.env_kwargs, self.max_episode_steps)
            envs = make_vector_env(env_fn, self.num_envs, self.asynchronous)
            self.collector = Collector(envs, replay, NStepFolder(self.num_envs, self.n_step, self.gamma),
                                       stream_seed(self.seed, _TRAIN, rank), world_size)

    def teardown(self, stage: str | None = None) -> None:
        for episodes in self._episode_sets.values():
            episodes.close()
        if stage == "fit" and self.collector is not None:
            self.collector.close()

    def train_dataloader(self) -> DataLoader:
        # batch_size=None: the stream yields whole batches; no workers: acting needs the live policy.
        return ExperienceLoader(ExperienceStream(self, self.batches_per_epoch), batch_size=None, num_workers=0)

    def _episode_loader(self, stage: Literal["val", "test"], episodes: int) -> DataLoader:
        rank, world_size = self._rank()
        if stage not in self._episode_sets:
            # At least one episode per rank: Lightning refuses a rank without evaluation batches.
            self._episode_sets[stage] = EpisodeDataset(self, stage, max(episodes, world_size) if episodes else 0)
        dataset = self._episode_sets[stage]
        # Episodes are split over ranks, each played once (no padding with repeats).
        sampler = UnpaddedDistributedSampler(dataset, world_size, rank) if world_size > 1 else None
        return DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return self._episode_loader("val", self.eval_episodes)

    def test_dataloader(self) -> DataLoader:
        return self._episode_loader("test", self.test_episodes)

    # -- what the loaders serve ----------------------------------------------------------------------
    def serve(self, batches: int):
        """One training pass of `batches` batches (the rest of it, after a resume mid-pass)."""
        start, pending = self._resume_at, self._resume_batches
        self._resume_at, self._resume_batches = 0, []
        self._served = start
        while self._served < batches:
            batch = pending.pop(0) if pending else self.next_batch()
            self._recent.append(batch)
            self._served += 1
            yield batch

    def next_batch(self) -> dict[str, torch.Tensor]:
        collector = self.collector
        if self.explore_policy is None:
            raise RuntimeError("no policy attached: the task must call set_policy() before training")
        while collector.env_steps < self.learning_starts:
            collector.step(policy=None)
        while self._refill_steps > 0:  # resumed without the buffer: refill it by acting, not at random
            collector.step(self.explore_policy)
            self._refill_steps -= collector.num_envs
        for _ in range(self.steps_per_batch):
            collector.step(self.explore_policy)
        if self.prioritized:
            progress = min(1.0, self.batches / max(1, self.priority_beta_batches))
            batch = collector.replay.sample(self.batch_size, beta=self.priority_beta + (1 - self.priority_beta)
                                            * progress)
        else:
            batch = collector.replay.sample(self.batch_size)
        self.batches += 1
        returns, lengths = collector.take_finished()
        out = {name: torch.from_numpy(values) for name, values in batch.items()}
        out["env_steps"] = torch.tensor(collector.env_steps)
        out["episode_returns"] = torch.tensor(returns, dtype=torch.float32)
        out["episode_lengths"] = torch.tensor(lengths, dtype=torch.float32)
        return out

    def update_priorities(self, indices: torch.Tensor, priorities: torch.Tensor) -> None:
        self.collector.replay.update_priorities(indices.cpu().numpy(), priorities.detach().float().cpu().numpy())

    def episode_seed(self, stage: Literal["val", "test"], index: int) -> int:
        # The same episodes at every evaluation, and test episodes distinct from validation ones.
        return stream_seed(self.seed, _VAL if stage == "val" else _TEST, index)

    def video_path(self, stage: Literal["val", "test"]) -> Path | None:
        trainer = self.trainer
        if trainer is None or not trainer.is_global_zero or trainer.sanity_checking or self.record_video == "none":
            return None
        if stage == "val" and self.record_video != "every_eval":
            return None
        name = "final" if stage == "test" else f"eval-step{trainer.global_step:07d}"
        return Path(trainer.default_root_dir) / "videos" / f"{name}.{self.video_format}"

    # -- checkpoints -----------------------------------------------------------------------------------
    def _fitting(self) -> bool:
        return self.trainer is not None and self.trainer.state.fn == "fit"

    def _trained_in_pass(self) -> int:
        """Batches of the current training pass the task has trained on (Lightning's count)."""
        if not self._fitting():
            return self._served
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def state_dict(self) -> dict[str, Any]:
        """Rank 0's counters (readable at a glance) and every rank's whole collection state. Called on
        every rank (Lightning's dump_checkpoint), as rank_states.gather needs."""
        collector = self.collector
        if collector is None:
            return {}
        trained = self._trained_in_pass()
        untrained = self._served - trained
        mine = collector.state_dict(replay=self.checkpoint_replay, in_flight=self.exact_resume)
        mine["batches"] = self.batches
        mine["pass"] = {"trained": trained, "untrained": list(self._recent)[len(self._recent) - untrained:]
                        if 0 < untrained <= len(self._recent) and self.exact_resume else []}
        return {"env_steps": collector.env_steps, "episodes": collector.episodes, "batches": self.batches,
                "ranks": gather(mine)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        collector = self.collector
        if collector is None or not state or not self._fitting():
            return  # a test after fit loads the best checkpoint's weights, not the collection
        ranks = state.get("ranks") or [state]
        mine = own(ranks, "the environments and replay buffer")
        if mine is None:
            # Another world size: counters as rank 0 had them, a buffer from the rank of the same
            # index modulo the old world size, and fresh episodes.
            rank, _ = self._rank()
            mine = {k: v for k, v in ranks[rank % len(ranks)].items() if k not in ("episodes_in_flight", "pass")}
            mine.update(env_steps=state["env_steps"], episodes=state["episodes"], batches=state["batches"])
        self.batches = int(mine["batches"])
        why = collector.load_state_dict({"finished_returns": [], "finished_lengths": [], **mine})
        notes = []
        if why is not None and collector.env_steps:
            notes.append(f"episodes in flight restart ({why})")
        if "replay" not in mine:
            # Counted in env steps, not transitions, so every rank refills alike and stays in lockstep.
            self._refill_steps = self.learning_starts
            notes.append("the replay buffer is refilled (data.checkpoint_replay=false)")
        trained = int((mine.get("pass") or ranks[0].get("pass") or {}).get("trained", 0))  # equal on every rank
        within = trained < self.batches_per_epoch  # else the checkpoint ended a pass: the next starts afresh
        self._resume_at = trained if within else 0
        self._resume_batches = list(mine.get("pass", {}).get("untrained", [])) if within else []
        if notes and self.exact_resume and self._rank()[0] == 0:
            log.warning("resuming the environments: " + "; ".join(notes) + ". The run continues at the right "
                        "step but does not repeat the uninterrupted one exactly")
