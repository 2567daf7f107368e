"""Experience replay: n-step folding, a uniform buffer and a prioritized one.

Written here rather than taken from a library because each is a few lines of numpy over
preallocated arrays, and the RL libraries that have them (SB3, TorchRL) would bring their
own training loops, env wrappers and tensor containers with them.

A stored transition is (observation, action, reward, next_observation, discount) where
`reward` is the discounted sum of the n rewards that followed the action and `discount`
is gamma**m for the m steps folded in, or 0 when the episode terminated within them: the
TD target is then simply `reward + discount * V(next_observation)`, whatever n was.
"""

from collections import deque
from typing import Any

import numpy as np
import torch


class NStepFolder:
    """Turns each environment's step stream into n-step transitions.

    A transition leaves once n further steps are known, or when its episode ends: at
    termination with discount 0 (no bootstrap), at truncation with gamma**m and the
    episode's last observation to bootstrap from (the episode was cut, not finished).
    """

    def __init__(self, num_envs: int, n: int, gamma: float):
        if n < 1:
            raise ValueError(f"n_step must be at least 1, got {n}")
        self.n, self.gamma = n, gamma
        self.pending: list[deque] = [deque() for _ in range(num_envs)]

    def reset(self) -> None:
        for queue in self.pending:
            queue.clear()

    def _fold(self, queue: deque, count: int) -> tuple[float, float]:
        reward = sum(self.gamma ** k * queue[k][2] for k in range(count))
        return reward, self.gamma ** count

    def push(self, observations: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
             next_observations: np.ndarray, terminated: np.ndarray, truncated: np.ndarray) -> dict[str, np.ndarray]:
        """One vector step. `next_observations` must hold each ended episode's last observation
        (not the first of the next episode). Returns the transitions completed by this step."""
        out: dict[str, list] = {"observations": [], "actions": [], "rewards": [], "next_observations": [],
                                "discounts": []}

        def emit(queue: deque, count: int, next_obs: np.ndarray, bootstrap: bool) -> None:
            obs, action, _ = queue[0]
            reward, discount = self._fold(queue, count)
            out["observations"].append(obs)
            out["actions"].append(action)
            out["rewards"].append(reward)
            out["next_observations"].append(next_obs)
            out["discounts"].append(discount if bootstrap else 0.0)
            queue.popleft()

        for i, queue in enumerate(self.pending):
            queue.append((observations[i], actions[i], float(rewards[i])))
            if terminated[i] or truncated[i]:
                while queue:
                    emit(queue, len(queue), next_observations[i], bootstrap=not terminated[i])
            elif len(queue) == self.n:
                emit(queue, self.n, next_observations[i], bootstrap=True)
        if not out["observations"]:
            return {}
        return {
            "observations": np.stack(out["observations"]),
            "actions": np.asarray(out["actions"], np.int64),
            "rewards": np.asarray(out["rewards"], np.float32),
            "next_observations": np.stack(out["next_observations"]),
            "discounts": np.asarray(out["discounts"], np.float32),
        }


class ReplayBuffer:
    """Uniform replay: a ring of the last `capacity` transitions, sampled with replacement."""

    FIELDS = ("observations", "actions", "rewards", "next_observations", "discounts")

    def __init__(self, capacity: int, observation_shape: tuple[int, ...], observation_dtype: Any,
                 rng: np.random.Generator):
        if capacity < 1:
            raise ValueError(f"buffer_size must be at least 1, got {capacity}")
        self.capacity = capacity
        self.rng = rng
        # np.empty does not touch the memory: a large Atari buffer costs only what is filled.
        self.data = {
            "observations": np.empty((capacity, *observation_shape), observation_dtype),
            "actions": np.empty(capacity, np.int64),
            "rewards": np.empty(capacity, np.float32),
            "next_observations": np.empty((capacity, *observation_shape), observation_dtype),
            "discounts": np.empty(capacity, np.float32),
        }
        self.position = 0  # where the next transition goes
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, transitions: dict[str, np.ndarray]) -> np.ndarray:
        """Store a batch of transitions; returns the slots they went to."""
        count = len(transitions.get("actions", ()))
        slots = (self.position + np.arange(count)) % self.capacity
        for name in self.FIELDS:
            self.data[name][slots] = transitions[name]
        self.position = int((self.position + count) % self.capacity)
        self.size = min(self.capacity, self.size + count)
        return slots

    def _gather(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        return {name: self.data[name][slots] for name in self.FIELDS}

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        slots = self.rng.integers(0, self.size, batch_size)
        return self._gather(slots)

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only, so checkpoints load with torch.load(weights_only=True)."""
        return {
            "data": {name: torch.from_numpy(np.ascontiguousarray(a[: self.size])) for name, a in self.data.items()},
            "position": self.position,
            "size": self.size,
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        size = int(state["size"])
        if size > self.capacity:
            raise ValueError(f"the checkpoint's replay holds {size} transitions, more than buffer_size={self.capacity}")
        for name, values in state["data"].items():
            self.data[name][:size] = values.numpy()
        self.position, self.size = int(state["position"]), size
        self.rng.bit_generator.state = state["rng"]


class SegmentTree:
    """A binary tree over `capacity` leaves whose nodes hold op(children): sums or minima.

    Updates and prefix-sum searches are O(log n) and vectorised over a batch of leaves.
    """

    def __init__(self, capacity: int, op: np.ufunc, neutral: float):
        self.leaves = 1 << max(0, (capacity - 1).bit_length())
        self.op = op
        self.tree = np.full(2 * self.leaves, neutral, np.float64)

    def update(self, slots: np.ndarray, values: np.ndarray) -> None:
        nodes = np.asarray(slots) + self.leaves
        self.tree[nodes] = values
        nodes = np.unique(nodes // 2)
        while nodes.size and nodes[0] >= 1:
            self.tree[nodes] = self.op(self.tree[2 * nodes], self.tree[2 * nodes + 1])
            nodes = np.unique(nodes[nodes > 1] // 2)

    @property
    def root(self) -> float:
        return float(self.tree[1])

    def __getitem__(self, slots: np.ndarray) -> np.ndarray:
        return self.tree[np.asarray(slots) + self.leaves]

    def find_prefix(self, masses: np.ndarray) -> np.ndarray:
        """For a sum tree: the leaf i with sum(leaves[:i]) <= mass < sum(leaves[:i+1]), per mass."""
        nodes = np.ones(len(masses), np.int64)
        masses = np.asarray(masses, np.float64).copy()
        while nodes[0] < self.leaves:
            left = 2 * nodes
            go_right = masses >= self.tree[left]
            masses = np.where(go_right, masses - self.tree[left], masses)
            nodes = np.where(go_right, left + 1, left)
        return nodes - self.leaves


class PrioritizedReplayBuffer(ReplayBuffer):
    """Proportional prioritized replay (Schaul et al. 2016).

    Transition i is drawn with probability p_i^alpha / sum_k p_k^alpha, where p_i is its last
    |TD error| (new transitions get the largest priority seen, so each is replayed soon).
    Importance weights (N P(i))^-beta, divided by their largest possible value, correct the
    bias of the non-uniform sampling; beta is annealed towards 1 by the caller.
    """

    def __init__(self, capacity: int, observation_shape: tuple[int, ...], observation_dtype: Any,
                 rng: np.random.Generator, alpha: float = 0.6):
        super().__init__(capacity, observation_shape, observation_dtype, rng)
        self.alpha = alpha
        self.sums = SegmentTree(capacity, np.add, 0.0)
        self.minima = SegmentTree(capacity, np.minimum, np.inf)
        self.max_priority = 1.0

    def add(self, transitions: dict[str, np.ndarray]) -> np.ndarray:
        slots = super().add(transitions)
        scaled = np.full(len(slots), self.max_priority ** self.alpha)
        self.sums.update(slots, scaled)
        self.minima.update(slots, scaled)
        return slots

    def sample(self, batch_size: int, beta: float = 0.4) -> dict[str, np.ndarray]:
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        total = self.sums.root
        # Stratified: one draw from each of batch_size equal slices of the total mass.
        masses = (np.arange(batch_size) + self.rng.random(batch_size)) * (total / batch_size)
        slots = np.minimum(self.sums.find_prefix(masses), self.size - 1)  # float round-off at the very end
        probabilities = self.sums[slots] / total
        min_probability = self.minima.root / total
        weights = (probabilities / min_probability) ** (-beta)
        batch = self._gather(slots)
        batch["weights"] = weights.astype(np.float32)
        batch["indices"] = slots.astype(np.int64)
        return batch

    def update_priorities(self, slots: np.ndarray, priorities: np.ndarray) -> None:
        priorities = np.asarray(priorities, np.float64)
        if np.any(priorities <= 0) or not np.all(np.isfinite(priorities)):
            raise ValueError("priorities must be positive and finite")
        self.max_priority = max(self.max_priority, float(priorities.max()))
        scaled = priorities ** self.alpha
        self.sums.update(slots, scaled)
        self.minima.update(slots, scaled)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["priorities"] = torch.from_numpy(self.sums[np.arange(self.size)].copy())
        state["max_priority"] = self.max_priority
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        scaled = state["priorities"].numpy()
        slots = np.arange(self.size)
        self.sums.update(slots, scaled)
        self.minima.update(slots, scaled)
        self.max_priority = float(state["max_priority"])
