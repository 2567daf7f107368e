"""Q-networks: observation in, one value per action out. Plain nn.Modules.

- MLPQNetwork for vector observations (any observation is flattened first);
- NatureCNN, the network of Mnih et al. (2015), for stacks of 84 x 84 uint8 frames.
Both end in a QHead: a linear layer, or the dueling head of Wang et al. (2016).
"""

import math
from typing import Literal

import torch
from torch import nn

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def _dtype(module: nn.Module) -> torch.dtype:
    """The parameters' floating dtype (float64 under trainer.precision=64-true): observations go in as it."""
    return next(module.parameters()).dtype


class QHead(nn.Module):
    """Linear action values, or dueling: Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a')."""

    def __init__(self, in_features: int, num_actions: int, dueling: bool = False, hidden: int = 0):
        super().__init__()
        self.dueling = dueling

        def branch(out_features: int) -> nn.Module:
            if hidden > 0:
                return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features))
            return nn.Linear(in_features, out_features)

        self.advantage = branch(num_actions)
        self.value = branch(1) if dueling else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        advantage = self.advantage(features)
        if self.value is None:
            return advantage
        # Subtracting the mean makes V and A identifiable (the paper's choice over the max).
        return self.value(features) + advantage - advantage.mean(dim=1, keepdim=True)


class MLPQNetwork(nn.Module):
    def __init__(
        self,
        observation_shape: tuple[int, ...],
        num_actions: int,
        hidden: tuple[int, ...] = (256, 256),
        activation: Literal["relu", "tanh", "gelu"] = "relu",
        dueling: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(observation_shape)
        for size in hidden[:-1] if dueling else hidden:
            layers += [nn.Linear(width, size), _ACTIVATIONS[activation]()]
            width = size
        self.body = nn.Sequential(*layers)
        # Dueling: the last hidden width becomes each stream's own hidden layer.
        self.head = QHead(width, num_actions, dueling, hidden[-1] if dueling and hidden else 0)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        # In the parameters' dtype: float64 under trainer.precision=64-true.
        return self.head(self.body(observations.to(_dtype(self))))


class NatureCNN(nn.Module):
    """Three convolutions (32 8x8/4, 64 4x4/2, 64 3x3/1) and a 512-unit layer; pixels scaled from uint8."""

    def __init__(self, observation_shape: tuple[int, ...], num_actions: int, hidden: int = 512,
                 dueling: bool = False):
        super().__init__()
        if len(observation_shape) != 3:
            raise ValueError(f"NatureCNN needs C x H x W observations, got shape {tuple(observation_shape)}")
        channels = observation_shape[0]
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            features = self.body(torch.zeros(1, *observation_shape)).shape[1]
        if dueling:
            self.trunk = nn.Identity()
            self.head = QHead(features, num_actions, dueling=True, hidden=hidden)
        else:
            self.trunk = nn.Sequential(nn.Linear(features, hidden), nn.ReLU())
            self.head = QHead(hidden, num_actions)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(self.body(observations.to(_dtype(self)) / 255.0)))
