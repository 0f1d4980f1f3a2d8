"""Environments with Dict and Tuple observations for the tests (entry points tests.structured_envs:...)."""

import gymnasium as gym
import numpy as np


class GoalCorridor(gym.Env):
    """Reach a goal cell: the observation is a Dict of the position (a vector) and the goal (Discrete),
    with a Tuple variant; actions discrete (left, right) or continuous (a step in [-1, 1])."""

    def __init__(self, continuous: bool = False, as_tuple: bool = False, image: bool = False):
        self.continuous, self.as_tuple, self.image = continuous, as_tuple, image
        parts = {"position": gym.spaces.Box(0.0, 4.0, (1,), np.float32), "goal": gym.spaces.Discrete(5)}
        if image:
            parts["view"] = gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)
        self.observation_space = gym.spaces.Tuple(tuple(parts.values())) if as_tuple else gym.spaces.Dict(parts)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32) if continuous else gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos, self.goal, self.steps = 2.0, int(self.np_random.choice([0, 4])), 0
        return self._obs(), {}

    def step(self, action):
        if self.continuous:
            move = float(np.clip(np.asarray(action).reshape(-1)[0], -1, 1))
        else:
            move = 1.0 if action else -1.0
        self.pos = float(np.clip(self.pos + move, 0.0, 4.0))
        self.steps += 1
        reached = abs(self.pos - self.goal) < 0.5
        return self._obs(), float(reached), reached, self.steps >= 20, {}

    def _obs(self):
        position = np.array([self.pos], np.float32)
        parts = {"position": position, "goal": self.goal}
        if self.image:
            parts["view"] = np.zeros((8, 8, 3), np.uint8)
        return tuple(parts.values()) if self.as_tuple else parts
