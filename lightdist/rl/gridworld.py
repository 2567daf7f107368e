"""GridWorld: an N x N grid with traps and walls, as a gymnasium environment.

The agent starts in the top-left corner (0, 0) and must reach the goal in the bottom-right
corner (N-1, N-1). Actions: 0 up, 1 right, 2 down, 3 left. A move into a wall or off the
grid leaves the agent where it is (the step still counts).

Rewards (the shaping is a constant step cost, so the shortest safe path has the highest return):
- `goal_reward` (+1.0) for entering the goal; the episode terminates.
- `trap_penalty` (-1.0) for entering a trap; the episode terminates.
- `step_penalty` (-0.01) for every other step, bumps into walls and edges included.

An episode is truncated after `max_episode_steps` (registered default 100; gymnasium's
TimeLimit adds it) without reaching the goal or a trap: truncation is not termination,
so value estimates bootstrap from the last state. The optimal return is therefore
`goal_reward + step_penalty * (L - 1)` where L is the length of the shortest path that
avoids walls and traps.

Observations (`observation`):
- "onehot": float32 vector of N*N, 1 at the agent's cell (row-major);
- "coordinates": float32 (row, col) scaled to [0, 1];
- "image": float32 4 x N x N planes: agent, goal, traps, walls.

Registered as `lightdist/GridWorld-v0`; importing this module registers it.
"""

from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces

Cell = tuple[int, int]
# The default 5 x 5 layout: two traps and two walls force a detour from the diagonal.
DEFAULT_TRAPS: tuple[Cell, ...] = ((1, 3), (3, 1))
DEFAULT_WALLS: tuple[Cell, ...] = ((1, 1), (2, 3))
MOVES = np.array([(-1, 0), (0, 1), (1, 0), (0, -1)])  # up, right, down, left as (d_row, d_col)

ENV_ID = "lightdist/GridWorld-v0"


class GridWorldEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array", "ansi"], "render_fps": 4}

    def __init__(
        self,
        size: int = 5,
        traps: list[Cell] | tuple[Cell, ...] | None = DEFAULT_TRAPS,
        walls: list[Cell] | tuple[Cell, ...] | None = DEFAULT_WALLS,
        goal_reward: float = 1.0,
        trap_penalty: float = -1.0,
        step_penalty: float = -0.01,
        observation: Literal["onehot", "coordinates", "image"] = "onehot",
        render_mode: str | None = None,
    ):
        if size < 2:
            raise ValueError(f"GridWorld size must be at least 2, got {size}")
        self.size = size
        self.start: Cell = (0, 0)
        self.goal: Cell = (size - 1, size - 1)
        self.traps = {tuple(int(v) for v in c) for c in (traps or ())}
        self.walls = {tuple(int(v) for v in c) for c in (walls or ())}
        for cell in self.traps | self.walls:
            if not all(0 <= v < size for v in cell):
                raise ValueError(f"GridWorld cell {cell} lies outside the {size} x {size} grid")
            if cell in (self.start, self.goal):
                raise ValueError(f"GridWorld start and goal cannot be traps or walls ({cell})")
        if self.traps & self.walls:
            raise ValueError(f"GridWorld cells cannot be both trap and wall: {sorted(self.traps & self.walls)}")
        self.goal_reward, self.trap_penalty, self.step_penalty = goal_reward, trap_penalty, step_penalty
        self.observation_mode = observation
        self.render_mode = render_mode
        self.action_space = spaces.Discrete(4)
        if observation == "onehot":
            self.observation_space = spaces.Box(0.0, 1.0, (size * size,), np.float32)
        elif observation == "coordinates":
            self.observation_space = spaces.Box(0.0, 1.0, (2,), np.float32)
        elif observation == "image":
            self.observation_space = spaces.Box(0.0, 1.0, (4, size, size), np.float32)
        else:
            raise ValueError(f"unknown GridWorld observation {observation!r}")
        self._static = self._static_planes()
        self.agent: Cell = self.start

    def _static_planes(self) -> np.ndarray:
        planes = np.zeros((4, self.size, self.size), np.float32)
        planes[1][self.goal] = 1.0
        for cell in self.traps:
            planes[2][cell] = 1.0
        for cell in self.walls:
            planes[3][cell] = 1.0
        return planes

    def _observation(self) -> np.ndarray:
        row, col = self.agent
        if self.observation_mode == "onehot":
            obs = np.zeros(self.size * self.size, np.float32)
            obs[row * self.size + col] = 1.0
            return obs
        if self.observation_mode == "coordinates":
            return np.array([row, col], np.float32) / (self.size - 1)
        obs = self._static.copy()
        obs[0][self.agent] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)  # the start is fixed; seeding only sets np_random for wrappers that use it
        self.agent = self.start
        return self._observation(), {"position": self.agent}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"GridWorld action must be 0..3, got {action!r}")
        target = (self.agent[0] + int(MOVES[action][0]), self.agent[1] + int(MOVES[action][1]))
        if all(0 <= v < self.size for v in target) and target not in self.walls:
            self.agent = target
        if self.agent == self.goal:
            reward, terminated = self.goal_reward, True
        elif self.agent in self.traps:
            reward, terminated = self.trap_penalty, True
        else:
            reward, terminated = self.step_penalty, False
        return self._observation(), float(reward), terminated, False, {"position": self.agent}

    def state_dict(self) -> dict[str, Any]:
        """What changes during an episode (the layout is the constructor's): where the agent
        stands and the random generator that wrappers may draw from. Plain values only."""
        return {"agent": list(self.agent), "np_random": self.np_random.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent = (int(state["agent"][0]), int(state["agent"][1]))
        self.np_random.bit_generator.state = state["np_random"]

    def shortest_path_length(self) -> int | None:
        """Moves on the shortest start-to-goal path avoiding walls and traps (None if there is none)."""
        blocked = self.walls | self.traps
        frontier, seen, steps = [self.start], {self.start}, 0
        while frontier:
            if self.goal in frontier:
                return steps
            nxt = []
            for row, col in frontier:
                for d_row, d_col in MOVES:
                    cell = (row + int(d_row), col + int(d_col))
                    if all(0 <= v < self.size for v in cell) and cell not in blocked and cell not in seen:
                        seen.add(cell)
                        nxt.append(cell)
            frontier, steps = nxt, steps + 1
        return None

    def render(self):
        if self.render_mode == "ansi":
            rows = []
            for r in range(self.size):
                line = ""
                for c in range(self.size):
                    cell = (r, c)
                    line += ("A" if cell == self.agent else "G" if cell == self.goal else "X" if cell in self.traps
                             else "#" if cell in self.walls else ".")
                rows.append(line)
            return "\n".join(rows) + "\n"
        if self.render_mode == "rgb_array":
            return self._draw()
        return None

    def _draw(self, cell_px: int = 32) -> np.ndarray:
        colours = {"free": (235, 235, 235), "wall": (60, 60, 60), "trap": (200, 50, 50), "goal": (50, 170, 80),
                   "agent": (40, 90, 220)}
        image = np.empty((self.size * cell_px, self.size * cell_px, 3), np.uint8)
        for r in range(self.size):
            for c in range(self.size):
                cell = (r, c)
                kind = ("agent" if cell == self.agent else "goal" if cell == self.goal else "trap" if cell in self.traps
                        else "wall" if cell in self.walls else "free")
                block = image[r * cell_px:(r + 1) * cell_px, c * cell_px:(c + 1) * cell_px]
                block[:] = colours[kind]
                block[0, :] = block[:, 0] = (180, 180, 180)  # grid lines
        return image


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=GridWorldEnv, max_episode_steps=100)
