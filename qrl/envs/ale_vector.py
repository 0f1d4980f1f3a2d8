"""Atari on ale-py's C++ vector environment (`actor.vector_env=ale`), with the preprocessing of
qrl's gymnasium Atari pipeline (qrl/envs/__init__.py: AtariPreprocessing + 4 stacked frames).

ale-py's AtariVectorEnv steps all of an actor's games in C++ threads and does the preprocessing
there (no-op starts, frame skip 4 with max-pooling, grayscale, 84x84, a stack of 4), so a step
costs one call instead of a Python wrapper chain per game. It is the same as the gymnasium
pipeline step for step (tests/test_ale_vector.py checks equal frames and rewards), except that
it fills a new episode's first stacks with zeros where gymnasium's FrameStackObservation repeats
the first frame; this wrapper repeats it too, so a stack never mixes episodes and both backends
give a learner the same observations.

It is an actor's choice, not the run's: the run's spec names the environment (`ALE/Pong-v5`
with its env_kwargs), and each actor steps it with the backend it has.
"""

from __future__ import annotations

import re
from typing import Any

import gymnasium as gym
import numpy as np

from qrl import envs

STACK = envs.ATARI_STACK
V5_DEFAULTS = {"repeat_action_probability": 0.25, "full_action_space": False, "max_num_frames_per_episode": 108_000}
"""gymnasium's ALE/...-v5 settings, which the ale backend takes from env_kwargs too."""


def game_name(env_id: str) -> str:
    """'ALE/SpaceInvaders-v5' -> 'space_invaders' (ale-py's ROM name)."""
    match = re.fullmatch(r"ALE/([A-Za-z0-9]+)-v5", env_id)
    if match is None:
        raise ValueError(f"actor.vector_env=ale steps ALE/<Game>-v5 ids, not '{env_id}'")
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", match.group(1)).lower()


def options(env_id: str, env_kwargs: dict[str, Any] | None, wrappers) -> dict[str, Any]:
    """AtariVectorEnv's keyword arguments for this run's environment; one line for what it cannot do."""
    if wrappers:
        raise ValueError("actor.vector_env=ale cannot apply run.wrappers (the games are stepped in C++): "
                         "use actor.vector_env=gymnasium")
    unknown = sorted(set(env_kwargs or {}) - set(V5_DEFAULTS))
    if unknown:
        raise ValueError(f"actor.vector_env=ale takes env_kwargs {', '.join(V5_DEFAULTS)}, not {', '.join(unknown)}")
    return {**V5_DEFAULTS, **(env_kwargs or {})}


class ALEVectorEnv(gym.vector.VectorWrapper):
    """AtariVectorEnv with same-step autoreset (final_obs in info, as qrl's vector envs), no reward
    clipping, no fire on reset, and new episodes' stacks filled with their first frame."""

    def __init__(self, env_id: str, num_envs: int, env_kwargs: dict[str, Any] | None = None, wrappers=(),
                 threads: int = 1):
        from ale_py.vector_env import AtariVectorEnv

        super().__init__(AtariVectorEnv(
            game_name(env_id), num_envs, num_threads=threads, autoreset_mode="SameStep",
            img_height=envs.ATARI_SCREEN, img_width=envs.ATARI_SCREEN, grayscale=True, stack_num=STACK,
            frameskip=envs.ATARI_FRAME_SKIP, maxpool=True, noop_max=envs.ATARI_NOOP_MAX,
            episodic_life=False, reward_clipping=False, use_fire_reset=False,
            **options(env_id, env_kwargs, wrappers)))
        self.steps = np.zeros(num_envs, dtype=np.int64)  # steps since each game's episode began

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.steps[:] = 0
        return fill_first_frames(obs, self.steps), info

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        self.steps += 1
        done = terminated | truncated
        if done.any() and "final_obs" in info:
            info = {**info, "final_obs": fill_first_frames(np.asarray(info["final_obs"]), self.steps)}
        self.steps[done] = 0
        return fill_first_frames(obs, self.steps), reward, terminated, truncated, info


def fill_first_frames(stacks: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Stacks [N, 4, H, W] of games `steps` steps into their episodes: the slots before the
    episode's first frame (the 3 - steps oldest) hold that first frame, as FrameStackObservation
    fills them (padding_type 'reset'), not zeros."""
    young = np.flatnonzero(steps < STACK - 1)
    if len(young) == 0:
        return stacks
    stacks = stacks.copy()
    for i in young:
        first = STACK - 1 - int(steps[i])
        stacks[i, :first] = stacks[i, first]
    return stacks
