"""Observation and reward normalization as a run option (run.normalize_obs, run.normalize_reward).

The learner keeps the running statistics (updated from every batch it trains on) and ships
them to actors with the weights, as extra arrays named "_norm/..." in the weights message, and
saves them in checkpoints. Actors normalize observations before acting (items keep the raw
observations); the learner normalizes a batch's "obs" and "next_obs" fields before the
algorithm sees them, and scales its "reward" or "return" field by the running standard
deviation of that field (reward scaling; Engstrom et al. 2020 scale by the std of returns),
so algorithms need not know about either.
"""

from __future__ import annotations

import numpy as np

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
        """Update the statistics from a batch of raw items, then return it normalized."""
        out = dict(batch)
        if self.obs is not None and "obs" in batch:
            self.obs.update(batch["obs"])
            for key in ("obs", "next_obs"):
                if key in batch:
                    out[key] = self.normalize_obs(batch[key])
        if self.reward is not None:
            key = "reward" if "reward" in batch else "return" if "return" in batch else None
            if key is not None:
                self.reward.update(batch[key])
                out[key] = (batch[key] / np.sqrt(self.reward.var + self.eps)).astype(np.float32)
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
