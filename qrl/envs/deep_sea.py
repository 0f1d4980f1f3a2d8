"""qrl/DeepSea-v0: bsuite's Deep Sea, the exploration benchmark of Osband et al. (2019, 2020).

The agent starts at the top-left of an N x N grid and descends one row per step, moving one column
left or right (the edges stop it). A treasure worth +1 lies at the bottom-right; every move right
costs 0.01 / N. So the best return is 0.99 (right at every step), while each right move alone
looks worse than a left one, and a random walk finds the treasure about once in 2^N episodes:
only an agent that explores on purpose finds it. Which action index means "right" differs from
cell to cell (drawn once from `mapping_seed`, the same for every instance with the same
arguments, so that all of a run's actors play the same sea).

Observation: the one-hot position on the grid (float32, N x N). Actions: 0 and 1. Episodes last
N steps and end (terminated) at the bottom row. The registered reward threshold is 0.9.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

TREASURE = 1.0
MOVE_COST = 0.01
"""The cost of all N right moves together (each costs MOVE_COST / N)."""


class DeepSea(gym.Env):
    metadata = {"render_modes": ["ansi"]}

    def __init__(self, size: int = 10, mapping_seed: int = 0, render_mode: str | None = None):
        if size < 2:
            raise ValueError(f"DeepSea: size must be >= 2, got {size}")
        self.size = size
        self.right_action = np.random.default_rng(mapping_seed).integers(0, 2, (size, size))
        self.observation_space = gym.spaces.Box(0.0, 1.0, (size, size), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.render_mode = render_mode
        self.row = self.col = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros((self.size, self.size), np.float32)
        if self.row < self.size:
            obs[self.row, self.col] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.row = self.col = 0
        return self._obs(), {}

    def step(self, action):
        right = int(action) == self.right_action[self.row, self.col]
        reward = -MOVE_COST / self.size if right else 0.0
        self.col = min(self.col + 1, self.size - 1) if right else max(self.col - 1, 0)
        self.row += 1
        done = self.row == self.size
        if done and self.col == self.size - 1:
            reward += TREASURE
        return self._obs(), reward, done, False, {}

    def render(self):
        if self.render_mode == "ansi":
            rows = [["."] * self.size for _ in range(self.size)]
            rows[-1][-1] = "$"
            if self.row < self.size:
                rows[self.row][self.col] = "@"
            return "\n".join(" ".join(r) for r in rows) + "\n"
        return None
