"""A trained policy in plain Python, without any qrl process: `qrl.load(RUN_DIR)`.

    policy = qrl.load("runs/ppo-CartPole-v1-...")
    action, state = policy.predict(obs)                      # one observation
    actions, state = policy.predict(batch, state, episode_start)  # a batch; recurrent state carried
    policy.export_onnx("policy.onnx")                         # `qrl export RUN_DIR --onnx FILE`

predict() follows stable-baselines3's: observations with or without a batch axis, a recurrent
state passed back in, episode_start marking the first observation of an episode (the state
resets there). The state is the agent's own (a dict of arrays; {} for feed-forward policies).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from qrl import envs
from qrl.envs.wrappers import FlattenStructured
from qrl.evaluation import LoadedPolicy, load_policy


class Policy:
    """The deterministic (or exploring) policy of a checkpoint, with the spaces it acts in."""

    def __init__(self, loaded: LoadedPolicy):
        self.loaded = loaded
        self.algo, self.env_id = loaded.algo_name, loaded.env
        self.observation_space, self.action_space = envs.spaces(loaded.env, loaded.run.env_kwargs,
                                                                loaded.run.wrappers)
        self.cores: dict[tuple[bool, int], Any] = {}

    def _core(self, deterministic: bool, n: int):
        """One core per batch size: an exploring core keeps its generators and schedules across calls.
        It explores as after its warm-up (no uniformly random first frames, epsilon annealed)."""
        key = (deterministic, n)
        if key not in self.cores:
            self.cores[key] = self.loaded.make_core(n, self.loaded.run.seed)
        return self.cores[key]

    def predict(self, obs: Any, state: dict[str, np.ndarray] | None = None, episode_start: Any = None,
                deterministic: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(actions, next state) for observations with or without a batch axis. state None: the
        initial state (episodes start here); episode_start[b]: obs[b] begins an episode. Dict and
        Tuple observations come as the env gives them (one, or a list of them)."""
        obs = self._flattened(obs)
        obs = np.asarray(obs, dtype=self.observation_space.dtype)
        single = obs.shape == self.observation_space.shape
        batch = obs[None] if single else obs
        if batch.shape[1:] != self.observation_space.shape:
            raise ValueError(f"observations of shape {obs.shape} do not fit the policy's observation space "
                             f"{self.observation_space} (with or without a batch axis)")
        n = len(batch)
        core = self._core(deterministic, n)
        if state is None:
            state = core.initial_state(n)
            episode_start = np.ones(n, dtype=bool) if episode_start is None else episode_start
        starts = np.zeros(n, dtype=bool) if episode_start is None else np.asarray(episode_start, bool).reshape(n)
        inputs = self.loaded.normalize_obs(batch)
        if deterministic:
            actions, state = core.greedy(self.loaded.net, inputs, state, starts)
        else:
            actions, state, _ = core.act(self.loaded.net, inputs, state, starts)
        actions = np.asarray(actions)
        return (actions[0] if single else actions), state

    def _flattened(self, obs: Any) -> Any:
        """Dict or Tuple observations as the vector the policy acts on (qrl/envs/wrappers.py)."""
        if not isinstance(obs, (dict, tuple, list)) or isinstance(obs, list) and not isinstance(obs[0], (dict, tuple)):
            return obs
        if not hasattr(self, "structured_space"):
            env = envs.make_env(self.env_id, self.loaded.run.env_kwargs, self.loaded.run.wrappers)
            self.structured_space = env.env.observation_space if isinstance(env, FlattenStructured) else None
            env.close()
        if self.structured_space is None:
            raise ValueError(f"{self.env_id}'s observations are not a Dict or Tuple")
        flat = lambda o: gym.spaces.flatten(self.structured_space, o).astype(np.float32)
        return np.stack([flat(o) for o in obs]) if isinstance(obs, list) else flat(obs)

    def export_onnx(self, path: str | Path, opset: int = 17) -> Path:
        """An ONNX model of the deterministic policy: input "obs" [batch, *obs_shape], output
        "action" [batch, ...]; observation normalization, when the run used it, is inside."""
        module = _Deterministic(self.loaded).eval()
        example = torch.as_tensor(np.stack([self.observation_space.sample() for _ in range(2)]))
        path = Path(path)
        with torch.no_grad():
            torch.onnx.export(module, (example,), str(path), input_names=["obs"], output_names=["action"],
                              dynamic_axes={"obs": {0: "batch"}, "action": {0: "batch"}}, opset_version=opset,
                              dynamo=False)
        return path


class _Deterministic(torch.nn.Module):
    """obs -> action in torch: the run's observation normalization, then the network's
    deterministic(); one that has none (a recurrent policy) is refused in one line."""

    def __init__(self, loaded: LoadedPolicy):
        super().__init__()
        net = loaded.net
        if not hasattr(net, "deterministic") or getattr(net, "recurrent", False):  # r2d2 has none; rppo is ppo's
            raise ValueError(f"{loaded.algo_name}'s policy ({type(net).__name__}) cannot be exported to ONNX: "
                             f"only feed-forward policies can (a recurrent one needs its state as input)")
        self.net = net
        normalizer = loaded.normalizer
        self.normalize = loaded.run.normalize_obs
        if self.normalize:  # normalize.standardize, in torch
            std = np.sqrt(normalizer.obs.var + normalizer.eps)
            self.register_buffer("mean", torch.as_tensor(normalizer.obs.mean, dtype=torch.float32))
            self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
            self.clip = normalizer.clip

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            obs = torch.clamp((obs.float() - self.mean) / self.std, -self.clip, self.clip)
        return self.net.deterministic(obs)


def load(path: str | Path) -> Policy:
    """The policy of a run directory or checkpoint file (see Policy.predict)."""
    return Policy(load_policy(path))
