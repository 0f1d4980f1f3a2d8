"""qrl's own observation wrappers, usable by name in run.wrappers like gymnasium's.

MaskVelocity hides the velocity components of classic-control observations (zeroes them), which
makes the task partially observable: a policy must infer velocities from what it remembers.
`qrl/CartPoleNoVel-v1` is CartPole-v1 through it (as rl-baselines3-zoo's CartPoleNoVel-v1, the
task sb3-contrib's RecurrentPPO is benchmarked on)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

# Observation indices that are velocities, by the environment's gymnasium id prefix.
VELOCITY_INDICES = {
    "CartPole": [1, 3],  # cart velocity, pole angular velocity
    "Pendulum": [2],  # angular velocity
    "MountainCar": [1],  # velocity (MountainCar and MountainCarContinuous)
    "LunarLander": [2, 3, 5],  # x velocity, y velocity, angular velocity
    "Acrobot": [4, 5],  # angular velocities of the two links
}


class MaskVelocity(gym.ObservationWrapper):
    """Zero the velocity components of the observation (see VELOCITY_INDICES)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        name = env.spec.id.split("/")[-1] if env.spec else type(env.unwrapped).__name__
        indices = next((v for k, v in VELOCITY_INDICES.items() if name.startswith(k)), None)
        if indices is None:
            raise ValueError(f"MaskVelocity knows no velocity components of {name}; "
                             f"it covers {', '.join(VELOCITY_INDICES)}")
        self.mask = np.ones(env.observation_space.shape, dtype=env.observation_space.dtype)
        self.mask[indices] = 0

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation * self.mask


def cartpole_no_velocity(**kwargs) -> gym.Env:
    from gymnasium.envs.classic_control import CartPoleEnv

    env = CartPoleEnv(**kwargs)
    env.spec = gym.spec("CartPole-v1")  # so MaskVelocity finds its velocity indices
    return MaskVelocity(env)


STRUCTURED = (gym.spaces.Dict, gym.spaces.Tuple)


def _leaves(space: gym.Space, path: str = "") -> list[tuple[str, gym.Space]]:
    """(name, space) of every part of a Dict or Tuple space, nested ones included."""
    if isinstance(space, gym.spaces.Dict):
        return [leaf for key, part in space.spaces.items() for leaf in _leaves(part, f"{path}{key}.")]
    if isinstance(space, gym.spaces.Tuple):
        return [leaf for i, part in enumerate(space.spaces) for leaf in _leaves(part, f"{path}{i}.")]
    return [(path.rstrip("."), space)]


def _is_image(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3


class PartsBox(gym.spaces.Box):
    """The flattened vector of a Dict or Tuple observation that has image parts, with where each
    part lies in it (name, shape, start, size in the vector, is_image): the networks give the
    image parts a convolutional torso each (qrl/networks.py PartsTorso)."""

    def __init__(self, low: np.ndarray, high: np.ndarray, parts: tuple):
        super().__init__(low, high, dtype=np.float32)
        self.parts = parts


class FlattenStructured(gym.ObservationWrapper):
    """Dict and Tuple observations as one float32 vector: every part flattened (a Discrete part
    one-hot), in the space's order, then concatenated; one vector is what every algorithm, the
    wire and the tables take. Vector parts then go into the MLP together, as stable-baselines3's
    MultiInputPolicy (CombinedExtractor) does; image parts (uint8, 3 axes) keep their place in a
    PartsBox, and the networks give each a convolutional torso. (Images inside a Dict travel as
    float32, not as frames: docs/frames.md covers image observations on their own.)"""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.observation_space
        try:
            flat = gym.spaces.flatten_space(space)
        except NotImplementedError:
            raise ValueError(f"cannot flatten the observation space {space} into one vector") from None
        low, high = flat.low.astype(np.float32), flat.high.astype(np.float32)
        parts, start = [], 0
        for name, part in _leaves(space):
            size = gym.spaces.flatdim(part)  # a Discrete part: n (one-hot), not its shape's ()
            parts.append((name, tuple(part.shape or ()), start, size, _is_image(part)))
            start += size
        if any(image for *_, image in parts):
            self.observation_space = PartsBox(low, high, tuple(parts))
        else:
            self.observation_space = gym.spaces.Box(low, high, dtype=np.float32)

    def observation(self, observation) -> np.ndarray:
        return gym.spaces.flatten(self.env.observation_space, observation).astype(np.float32)


def flatten_structured(env: gym.Env) -> gym.Env:
    """The env as it is, or through FlattenStructured when its observations are a Dict or Tuple."""
    return FlattenStructured(env) if isinstance(env.observation_space, STRUCTURED) else env


WRAPPERS = {"MaskVelocity": MaskVelocity}
LAZY_WRAPPERS = {"RecoveredReward": "qrl.algorithms.gail:RecoveredReward"}
"""Wrappers that need torch, imported only when a config names them."""
