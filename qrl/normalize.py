"""Observation and reward normalization as a run option (run.normalize_obs, run.normalize_reward).

The learner keeps the running statistics (updated from every batch it trains on) and ships
them to actors with the weights, as extra arrays named "_norm/..." in the weights message, and
saves them in checkpoints. Actors normalize observations before acting (items keep the raw
observations); the learner normalizes a batch's "obs" and "next_obs" fields before the
algorithm sees them, and divides its "reward" or "return" field by the running root mean
square of discounted returns (an unroll's discounted sums so far; a replay item's reward or
n-step return as it is), so algorithms need not know about either. Reward scaling after
Engstrom et al. 2020 and stable-baselines3's VecNormalize, which divide by the standard deviation
of returns; the root mean square also counts their mean, so that a constant reward (-1 or +1 per
step, whose one-step deviation is 0) is not divided by almost nothing.
"""

from __future__ import annotations

import numpy as np

from qrl import ops
from qrl.brokers.tables import DEMO_PREFIX

PREFIX = "_norm/"


def standardize(obs: np.ndarray, mean: np.ndarray, var: np.ndarray, clip: float, eps: float) -> np.ndarray:
    """(obs - mean) / std, clipped to [-clip, clip]: the same on learner, actors and evaluation."""
    return np.clip((np.asarray(obs, np.float64) - mean) / np.sqrt(var + eps), -clip, clip).astype(np.float32)


class RunningMeanStd:
    """Mean and variance of everything seen so far, merged batch by batch (Chan et al. 1979)."""

    def __init__(self, shape: tuple[int, ...] = ()):
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = 1e-4

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64).reshape((-1,) + self.mean.shape)
        n = len(x)
        if n == 0:
            return
        mean, var = x.mean(axis=0), x.var(axis=0)
        delta, total = mean - self.mean, self.count + n
        self.mean = self.mean + delta * n / total
        self.var = (self.var * self.count + var * n + delta**2 * self.count * n / total) / total
        self.count = total


RETURN_GAMMA = 0.99
"""The discount of the returns whose scale rewards are divided by (stable-baselines3's VecNormalize's)."""


def discounted_sums(rewards: np.ndarray, gamma: float = RETURN_GAMMA) -> np.ndarray:
    """Unrolls' rewards [N, T] -> each step's discounted sum of the unroll's rewards so far; a replay
    batch's rewards or n-step returns [B] as they are (each item is already one return)."""
    rewards = np.asarray(rewards, np.float64)
    return rewards if rewards.ndim < 2 else ops.running_discounted_sums(rewards, gamma)


class Normalizer:
    def __init__(self, obs_shape: tuple[int, ...], obs: bool, reward: bool, clip: float = 10.0, eps: float = 1e-8):
        self.obs = RunningMeanStd(obs_shape) if obs else None
        self.reward = RunningMeanStd() if reward else None
        self.clip, self.eps = clip, eps

    def normalize_obs(self, obs: np.ndarray) -> np.ndarray:
        if self.obs is None:
            return obs
        return standardize(obs, self.obs.mean, self.obs.var, self.clip, self.eps)

    def process_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Update the statistics from a batch of raw items, then return it normalized. Demonstration
        items (DEMO_PREFIX) are normalized alike, their observations counted in the statistics too."""
        out = dict(batch)
        if self.obs is not None:
            for prefix in ("", DEMO_PREFIX):
                if prefix + "obs" in batch:
                    self.obs.update(batch[prefix + "obs"])
            for key in ("obs", "next_obs"):
                for name in (key, DEMO_PREFIX + key):
                    if name in batch:
                        out[name] = self.normalize_obs(batch[name])
        if self.reward is not None:
            key = "reward" if "reward" in batch else "return" if "return" in batch else None
            if key is not None:
                self.reward.update(discounted_sums(batch[key]))
                scale = np.sqrt(self.reward.var + self.reward.mean ** 2 + self.eps)
                for name in (key, DEMO_PREFIX + key):
                    if name in batch:
                        out[name] = (batch[name] / scale).astype(np.float32)
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """The statistics actors need (observations only: rewards matter to the learner alone)."""
        if self.obs is None:
            return {}
        return {PREFIX + "obs_mean": self.obs.mean.astype(np.float32),
                PREFIX + "obs_var": self.obs.var.astype(np.float32)}

    def state(self) -> dict[str, list | float]:
        """Plain lists and floats: checkpoints load with torch's weights_only=True."""
        out = {}
        for name, rms in (("obs", self.obs), ("reward", self.reward)):
            if rms is not None:
                out.update({f"{name}_mean": rms.mean.tolist(), f"{name}_var": rms.var.tolist(),
                            f"{name}_count": float(rms.count)})
        return out

    def load_state(self, state: dict[str, list | float]) -> None:
        for name, rms in (("obs", self.obs), ("reward", self.reward)):
            if rms is not None and f"{name}_mean" in state:
                rms.mean, rms.var = np.asarray(state[f"{name}_mean"]), np.asarray(state[f"{name}_var"])
                rms.count = float(state[f"{name}_count"])


class ActorNormalizer:
    """The actors' side: observation statistics as last shipped with the weights."""

    def __init__(self, clip: float = 10.0, eps: float = 1e-8):
        self.mean = self.var = None
        self.clip, self.eps = clip, eps

    def split(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Take the statistics out of a weights message; return the network's own arrays."""
        if PREFIX + "obs_mean" in arrays:
            self.mean = np.array(arrays[PREFIX + "obs_mean"], np.float64)
            self.var = np.array(arrays[PREFIX + "obs_var"], np.float64)
        return {k: v for k, v in arrays.items() if not k.startswith(PREFIX)}

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if self.mean is None:
            return obs
        return standardize(obs, self.mean, self.var, self.clip, self.eps)
