"""qrl/Grid-v0: a 5x5 grid world small enough to learn with a table in seconds.

    S . . . .      S start, G goal (+1, ends the episode), X pit (-1, ends it),
    . # # . .      # wall (bumping into it or the edge leaves the agent in place).
    . . X # .      Every other step costs 0.01, so the best return is 0.93 (8 moves);
    # . . . .      the registered reward threshold is 0.9. Episodes last at most 50 steps.
    . . # . G

Observation: the cell index row * 5 + col (Discrete(25)). Actions: 0 up, 1 right, 2 down, 3 left.
Render modes: "ansi" (text, for `qrl evaluate --render terminal`) and "rgb_array" (for GIFs).
"""

from __future__ import annotations

import numpy as np
import gymnasium as gym

LAYOUT = ("S....",
          ".##..",
          "..X#.",
          "#....",
          "..#.G")
ACTIONS = ("up", "right", "down", "left")
MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))
STEP_COST, GOAL_REWARD, PIT_REWARD = -0.01, 1.0, -1.0
COLOURS = {".": (235, 235, 235), "#": (60, 60, 60), "X": (200, 50, 50), "G": (60, 170, 75), "S": (235, 235, 235)}


class GridWorld(gym.Env):
    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def __init__(self, render_mode: str | None = None):
        self.grid = np.array([list(row) for row in LAYOUT])
        self.rows, self.cols = self.grid.shape
        self.start = tuple(int(x) for x in np.argwhere(self.grid == "S")[0])
        self.observation_space = gym.spaces.Discrete(self.rows * self.cols)
        self.action_space = gym.spaces.Discrete(len(MOVES))
        self.render_mode = render_mode
        self.action_names = ACTIONS  # shown beside each action's value by `qrl evaluate --render terminal`
        self.pos = self.start

    def _obs(self) -> int:
        return self.pos[0] * self.cols + self.pos[1]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.pos = self.start
        return self._obs(), {}

    def step(self, action):
        dr, dc = MOVES[int(action)]
        r, c = self.pos[0] + dr, self.pos[1] + dc
        if 0 <= r < self.rows and 0 <= c < self.cols and self.grid[r, c] != "#":
            self.pos = (r, c)
        cell = self.grid[self.pos]
        if cell == "G":
            return self._obs(), GOAL_REWARD, True, False, {}
        if cell == "X":
            return self._obs(), PIT_REWARD, True, False, {}
        return self._obs(), STEP_COST, False, False, {}

    def render(self):
        if self.render_mode == "ansi":
            rows = []
            for r in range(self.rows):
                rows.append(" ".join("A" if (r, c) == self.pos else self.grid[r, c] for c in range(self.cols)))
            return "\n".join(rows)
        if self.render_mode == "rgb_array":
            cell = 32
            image = np.zeros((self.rows * cell, self.cols * cell, 3), dtype=np.uint8)
            for r in range(self.rows):
                for c in range(self.cols):
                    image[r * cell + 1:(r + 1) * cell - 1, c * cell + 1:(c + 1) * cell - 1] = COLOURS[self.grid[r, c]]
            r, c = self.pos
            yy, xx = np.ogrid[:cell, :cell]
            disc = (yy - cell / 2 + 0.5) ** 2 + (xx - cell / 2 + 0.5) ** 2 <= (cell / 3) ** 2
            image[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell][disc] = (40, 90, 220)
            return image
        return None
