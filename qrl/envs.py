"""Building gymnasium environments the same way on actors and learner."""

from __future__ import annotations

import difflib
from typing import Any

import gymnasium as gym
import numpy as np


class UnknownEnvironment(ValueError):
    pass


def check_env_id(env_id: str) -> None:
    """Raise UnknownEnvironment with close matches when gymnasium does not know env_id."""
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownEnvironment(f"unknown environment '{env_id}'{hint}")


def make_vector_env(env_id: str, num_envs: int, env_kwargs: dict[str, Any] | None = None) -> gym.vector.VectorEnv:
    """A synchronous vector env that resets finished episodes in the same step.

    Same-step autoreset keeps step t's transition whole: the observation after a
    finished episode is in info["final_obs"] and the returned obs is already
    the next episode's first (see next_observations). No render mode unless
    asked for: LunarLander keeps particle bodies and steps ~3x slower with one.
    """
    check_env_id(env_id)
    return gym.make_vec(
        env_id,
        num_envs=num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
        **(env_kwargs or {}),
    )


def next_observations(obs: np.ndarray, done: np.ndarray, info: dict) -> np.ndarray:
    """The true successor observation of each env's last step: final_obs where an episode ended."""
    if not done.any():
        return obs
    nxt = obs.copy()
    for i in np.flatnonzero(done):
        nxt[i] = info["final_obs"][i]
    return nxt


def spaces(env_id: str, env_kwargs: dict[str, Any] | None = None) -> tuple[gym.Space, gym.Space]:
    env = make_vector_env(env_id, 1, env_kwargs)
    try:
        return env.single_observation_space, env.single_action_space
    finally:
        env.close()
