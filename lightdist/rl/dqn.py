"""Deep Q-learning (Mnih et al. 2015) as a LightningModule.

The task owns the agent: the online Q-network (given, a plain nn.Module), its target
copy, the epsilon-greedy policy and the TD loss. Experience comes from the data module
(lightdist.rl.data.EnvDataModule) as ordinary batches; the task hands it the policy to
act with. Options: Double DQN targets (van Hasselt et al. 2016), hard or Polyak target
updates, Huber or squared loss, prioritized-replay importance weights. Gradient clipping
is the Trainer's (trainer.gradient_clip_val).
"""

import copy
import math
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.aggregation import CatMetric, MeanMetric

from lightdist.distributed.rank_states import gather, own
from lightdist.errors import ConfigError
from lightdist.logging_steps import logs_step
from lightdist.tasks.base import Task


def epsilon_at(step: int, start: float, end: float, decay_steps: int,
               schedule: Literal["linear", "exponential"] = "linear") -> float:
    """Exploration rate after `step` environment steps (summed over ranks)."""
    if decay_steps <= 0:
        return end
    if schedule == "linear":
        return end + (start - end) * max(0.0, 1.0 - step / decay_steps)
    # exponential: the distance to `end` shrinks by e every decay_steps
    return end + (start - end) * math.exp(-step / decay_steps)


def td_targets(rewards: torch.Tensor, discounts: torch.Tensor, next_q_target: torch.Tensor,
               next_q_online: torch.Tensor | None = None) -> torch.Tensor:
    """reward + discount * V(next). V is the target network's max (DQN), or with the online
    network's values given, the target network's value of the online network's argmax (Double DQN).
    `discounts` already hold gamma**n, and 0 where the episode terminated."""
    if next_q_online is None:
        next_values = next_q_target.max(dim=1).values
    else:
        next_values = next_q_target.gather(1, next_q_online.argmax(dim=1, keepdim=True)).squeeze(1)
    return rewards + discounts * next_values


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- tau * online + (1 - tau) * target; tau = 1 is a hard copy."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.lerp_(o, tau)
    for t, o in zip(target.buffers(), online.buffers()):
        t.copy_(o)


class DQNTask(Task):
    def __init__(
        self,
        model: nn.Module,
        num_actions: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., dict] | None = None,
        double_dqn: bool = True,
        target_update_interval: int = 500,
        tau: float = 1.0,
        loss: Literal["huber", "mse"] = "huber",
        huber_delta: float = 1.0,
        epsilon_start: float = 1.0,
        epsilon_end: float = 0.05,
        epsilon_decay_steps: int = 10_000,
        epsilon_schedule: Literal["linear", "exponential"] = "linear",
        priority_epsilon: float = 1e-6,
    ):
        """`target_update_interval`: optimizer steps between target updates, each moving the target
        network `tau` of the way to the online one (1.0: hard copy; e.g. 0.005 every step: Polyak).
        Epsilon goes from `epsilon_start` to `epsilon_end` over `epsilon_decay_steps` environment
        steps summed over ranks. `priority_epsilon` keeps replay priorities above zero."""
        super().__init__(optimizer, scheduler)
        if target_update_interval < 1:
            raise ConfigError(f"task.target_update_interval must be at least 1, got {target_update_interval}")
        if not 0.0 < tau <= 1.0:
            raise ConfigError(f"task.tau must lie in (0, 1], got {tau}")
        for name, value in (("epsilon_start", epsilon_start), ("epsilon_end", epsilon_end)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"task.{name} must lie in [0, 1], got {value}")
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"])
        self.q_net = model
        self.target_net = copy.deepcopy(model).requires_grad_(False).eval()
        self.num_actions = num_actions
        self.env_steps_total = 0  # as of the last batch trained on (restored from checkpoints)
        self.train_episode_return = MeanMetric()
        self.train_episode_length = MeanMetric()
        # Greedy episodes of an evaluation, gathered from every rank when computed.
        self.returns = nn.ModuleDict({"val": CatMetric(), "test": CatMetric()})
        self.lengths = nn.ModuleDict({"val": CatMetric(), "test": CatMetric()})
        self._rng: np.random.Generator | None = None
        # Read by Lightning's ThroughputMonitor (FLOP/s); measured on the first batch.
        self.flops_per_batch: int | None = None

    # -- acting ---------------------------------------------------------------------------------
    def epsilon(self, env_steps_total: int) -> float:
        h = self.hparams
        return epsilon_at(env_steps_total, h.epsilon_start, h.epsilon_end, h.epsilon_decay_steps,
                          h.epsilon_schedule)

    @torch.no_grad()
    def act_greedy(self, observations: np.ndarray) -> np.ndarray:
        obs = torch.as_tensor(observations, device=self.device)
        if obs.is_floating_point():  # as the precision plugin converts training batches (64-true: float64)
            obs = obs.to(self.dtype)
        return self.q_net(obs).argmax(dim=1).cpu().numpy()

    def act(self, observations: np.ndarray, env_steps_total: int) -> np.ndarray:
        """Epsilon-greedy: each environment acts at random with probability epsilon."""
        actions = self.act_greedy(observations)
        explore = self._rng.random(len(actions)) < self.epsilon(env_steps_total)
        actions[explore] = self._rng.integers(0, self.num_actions, int(explore.sum()))
        return actions

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.q_net(observations)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if not hasattr(datamodule, "set_policy"):
            raise ConfigError("the DQN task needs an environment data module",
                              hint="use an RL experiment, e.g. +experiment=rl_dqn_cartpole, or data=cartpole")
        datamodule.set_policy(self.act, self.act_greedy)
        # Exploration draws differ between ranks and follow the run's seed.
        self._rng = np.random.default_rng([torch.initial_seed(), self.global_rank])

    # -- learning ---------------------------------------------------------------------------------
    def td_errors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        q = self.q_net(batch["observations"]).gather(1, batch["actions"].long().unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            next_obs = batch["next_observations"]
            online_next = self.q_net(next_obs) if self.hparams.double_dqn else None
            target = td_targets(batch["rewards"], batch["discounts"], self.target_net(next_obs), online_next)
        self._q_mean = q.detach().mean()
        return q - target.to(q.dtype)

    def loss(self, td: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        zeros = torch.zeros_like(td)
        if self.hparams.loss == "huber":
            per_sample = F.huber_loss(td, zeros, reduction="none", delta=self.hparams.huber_delta)
        else:
            per_sample = F.mse_loss(td, zeros, reduction="none")
        if weights is not None:  # prioritized replay: importance weights undo the sampling bias
            per_sample = per_sample * weights
        return per_sample.mean()

    def on_train_batch_start(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if self.flops_per_batch is None:
            from torch.utils.flop_counter import FlopCounterMode

            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                self.q_net(batch["observations"])
            # forward and backward (3x) on the batch, plus the target's (and Double DQN's) forward
            self.flops_per_batch = (4 + int(self.hparams.double_dqn)) * counter.get_total_flops()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        td = self.td_errors(batch)
        weights = batch.get("weights")
        loss = self.training_loss(batch, td, self.loss(td, weights))  # plus terms added by callbacks
        if weights is not None:
            self.trainer.datamodule.update_priorities(batch["indices"], td.detach().abs() + self.hparams.priority_epsilon)
        self.env_steps_total = int(batch["env_steps"]) * self.trainer.world_size
        if logs_step(self.trainer, self.global_step + 1):
            # Only on the steps the loggers write: each self.log costs about a millisecond, as much
            # as the whole update of a small Q-network.
            size = len(td)
            self.log_dict({"train/loss": loss, "train/q_mean": self._q_mean,
                           "train/epsilon": self.epsilon(self.env_steps_total),
                           "train/env_steps": batch["env_steps"].float()}, batch_size=size)
            # Each rank's own count, summed: the environment steps of the whole run so far.
            self.log("train/env_steps_total", batch["env_steps"].float(), reduce_fx="sum", sync_dist=True,
                     batch_size=size)
        returns, lengths = batch["episode_returns"], batch["episode_lengths"]
        if len(returns):
            self.train_episode_return.update(returns)
            self.train_episode_length.update(lengths)
        return loss

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Here rather than at batch end: once per optimizer step however many batches it accumulated,
        # and before the callbacks' on_train_batch_end, where periodic checkpoints are written (a
        # checkpoint taken before the update would resume without it). Lightning counts this step
        # in global_step once the hook returns.
        if (self.global_step + 1) % self.hparams.target_update_interval == 0:
            polyak_update(self.target_net, self.q_net, self.hparams.tau)

    def on_train_epoch_end(self) -> None:
        # Means over the training episodes that ended this epoch, on every rank.
        self._log_synced_mean("train/episode_return", self.train_episode_return)
        self._log_synced_mean("train/episode_length", self.train_episode_length)

    def _log_synced_mean(self, name: str, metric: MeanMetric) -> None:
        value = metric.compute()  # synced over ranks; nan when no episode ended anywhere
        if not torch.isnan(value):
            self.log(name, value, sync_dist=True)  # already equal on every rank
        metric.reset()

    # -- evaluation: greedy episodes served by the data module ----------------------------------------
    def _gather_q_net(self, gathered: bool) -> None:
        """Under strategy=fsdp2 every forward gathers the parameters from all ranks, but greedy
        episodes differ in number and length between ranks: the Q-network is gathered once, on
        every rank together, for the whole evaluation, and acts locally until released."""
        from torch.distributed.fsdp import FSDPModule

        units = [m for m in self.q_net.modules() if isinstance(m, FSDPModule)]
        if not units:
            return
        keep = gathered or not getattr(self.trainer.strategy, "reshard_after_forward", True)
        self.q_net.set_reshard_after_forward(not keep)  # recursive
        for unit in units:
            if gathered:
                unit.unshard()
            else:
                unit.reshard()

    def on_validation_epoch_start(self) -> None:
        self._gather_q_net(True)

    def on_test_epoch_start(self) -> None:
        self._gather_q_net(True)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.returns["val"].update(batch["return"].float())
        self.lengths["val"].update(batch["length"].float())

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.returns["test"].update(batch["return"].float())
        self.lengths["test"].update(batch["length"].float())

    def _log_episodes(self, stage: Literal["val", "test"]) -> None:
        returns = self.returns[stage].compute().reshape(-1)  # gathered from every rank
        lengths = self.lengths[stage].compute().reshape(-1)
        self.returns[stage].reset()
        self.lengths[stage].reset()
        values = {
            f"{stage}/return_mean": returns.mean(),
            f"{stage}/return_std": returns.std(unbiased=False),
            f"{stage}/return_min": returns.min(),
            f"{stage}/length_mean": lengths.mean(),
            f"{stage}/episodes": float(len(returns)),
            f"{stage}/env_steps_total": float(self.env_steps_total),
        }
        # Already equal on every rank (gathered above); sync_dist only tells Lightning so.
        self.log_dict(values, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._gather_q_net(False)
        if self.trainer.sanity_checking:
            self.returns["val"].reset()
            self.lengths["val"].reset()
            return
        self._log_episodes("val")

    def on_test_epoch_end(self) -> None:
        self._gather_q_net(False)
        self._log_episodes("test")

    # -- optimizer and checkpoints -------------------------------------------------------------------------
    def optimized_module(self) -> nn.Module:
        return self.q_net  # the target network follows it by copies, not by gradients

    def networks(self) -> list[nn.Module]:
        # sharded alike, so that target updates pair shards of the same placements
        return [self.q_net, self.target_net]

    def _episode_metrics(self) -> dict[str, MeanMetric]:
        return {"return": self.train_episode_return, "length": self.train_episode_length}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Per rank (called on every rank): the exploration draws and this epoch's training episodes so far.
        mine = {"rng": self._rng.bit_generator.state if self._rng is not None else None,
                "episodes": {name: {k: v.detach().clone() for k, v in metric.metric_state.items()}
                             for name, metric in self._episode_metrics().items()}}
        checkpoint["exploration"] = {"env_steps_total": self.env_steps_total,
                                     "epsilon": self.epsilon(self.env_steps_total), "ranks": gather(mine)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        exploration = checkpoint.get("exploration", {})
        self.env_steps_total = int(exploration.get("env_steps_total", 0))
        if self._rng is None or self.trainer.state.fn != "fit":  # no trainer yet, or a test after fit
            return
        mine = own(exploration.get("ranks"), "the exploration state")
        if mine is None:
            return
        if mine["rng"] is not None:
            self._rng.bit_generator.state = mine["rng"]
        for name, metric in self._episode_metrics().items():
            for key, value in mine["episodes"][name].items():
                setattr(metric, key, value.to(getattr(metric, key).device))
