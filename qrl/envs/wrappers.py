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


WRAPPERS = {"MaskVelocity": MaskVelocity}
