"""Demonstrations as Minari datasets (the Farama Foundation's offline-RL format, the `minari`
package): `qrl record` writes a trained policy's episodes as one, and `load` reads a dataset made
by anyone, checked against the spaces of the run that will learn from it.

A dataset is named by an id (`namespace/name-v0`, kept under $MINARI_DATASETS_PATH, by default
~/.minari/datasets) or by a path: the dataset's directory or its `data` directory. Whatever is
wrong with it (missing, unreadable or truncated file, other spaces, no episodes) is a DemoError of
one line before anything trains on it.

    path = record("runs/dqn", "cartpole/qrl-dqn-v0", episodes=10)
    demos = load("cartpole/qrl-dqn-v0", obs_space, action_space)
    demos.obs, demos.action, demos.reward, demos.next_obs, demos.terminated, demos.truncated
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np


class DemoError(ValueError):
    """A dataset that cannot be used, in one line."""


@dataclass
class Demonstrations:
    """A dataset's steps as transitions, episodes concatenated: obs and next_obs [N, *obs_shape],
    action [N, ...], reward, terminated, truncated [N]; returns: each episode's return."""

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    returns: list[float]
    env_id: str | None

    def __len__(self) -> int:
        return len(self.reward)


def record(path: str | Path, dataset_id: str, episodes: int, seed: int = 0, data_dir: str | Path | None = None,
           description: str | None = None, stochastic: bool = False) -> tuple[Path, list[float]]:
    """The deterministic episodes (reset with seed + i) of the policy in a run directory or
    checkpoint, written as the Minari dataset `dataset_id` (under data_dir, else Minari's root);
    returns the dataset's directory and the episodes' returns. Observations are the environment's
    own (not normalized), actions what the environment was given. stochastic: the policy's sampled
    actions, as it explores after its warm-up (no random first frames, epsilon annealed): an expert
    that is a distribution, as AIRL's maximum-entropy model assumes, rather than a function."""
    minari = _minari()
    from minari.data_collector import EpisodeBuffer

    from qrl import envs
    from qrl.evaluation import load_policy

    policy = load_policy(path)
    env = envs.make_env(policy.env, policy.run.env_kwargs, policy.run.wrappers)
    core = policy.make_core(1, seed)
    buffers, returns = [], []
    try:
        for i in range(episodes):
            steps = _episode(env, core, policy, seed + i, stochastic)
            returns.append(float(np.sum(steps["rewards"])))
            buffers.append(EpisodeBuffer(id=i, seed=seed + i, **steps))
    finally:
        env.close()
    with datasets_root(data_dir), warnings.catch_warnings():  # minari asks for an author, an e-mail, a code link
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers(
            dataset_id, buffers, env=env.spec if not policy.run.wrappers else None,
            observation_space=env.observation_space, action_space=env.action_space,
            algorithm_name=f"qrl {policy.algo_name}",
            description=description or (f"{episodes} {'stochastic' if stochastic else 'deterministic'} episodes "
                                        f"of qrl's {policy.algo_name} on {policy.env}"))
        return minari.storage.get_dataset_path(dataset_id), returns


@contextlib.contextmanager
def datasets_root(data_dir: str | Path | None):
    """Minari's dataset root ($MINARI_DATASETS_PATH) set to data_dir for the block (None: as it is)."""
    before = os.environ.get("MINARI_DATASETS_PATH")
    if data_dir is not None:
        os.environ["MINARI_DATASETS_PATH"] = str(Path(data_dir).resolve())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = before


def _minari():
    try:
        import minari
    except ImportError:
        raise DemoError("demonstrations need the minari package: pip install 'qrl[demos]'") from None
    return minari


def _episode(env: gym.Env, core: Any, policy: Any, seed: int, stochastic: bool = False) -> dict[str, Any]:
    """One episode's observations (one more than steps), actions, rewards and ends: the policy's
    greedy actions, or (stochastic) its sampled ones."""
    obs, _ = env.reset(seed=seed)
    state, start = core.initial_state(1), np.ones(1, bool)
    steps: dict[str, list] = {"observations": [obs], "actions": [], "rewards": [], "terminations": [],
                              "truncations": []}
    while True:
        inputs = policy.normalize_obs(np.asarray(obs)[None])
        if stochastic:
            action, state, _ = core.act(policy.net, inputs, state, start)
        else:
            action, state = core.greedy(policy.net, inputs, state, start)
        obs, reward, terminated, truncated, _ = env.step(action[0])
        for key, value in zip(("observations", "actions", "rewards", "terminations", "truncations"),
                              (obs, action[0], float(reward), bool(terminated), bool(truncated))):
            steps[key].append(value)
        start = np.zeros(1, bool)
        if terminated or truncated:
            return {k: np.asarray(v) if k in ("observations", "actions") else v for k, v in steps.items()}


def load(source: str | Path, obs_space: gym.Space | None = None, action_space: gym.Space | None = None,
         episodes: int = 0) -> Demonstrations:
    """The dataset at a path or with a local id, as transitions (its first `episodes`, 0: all);
    checked against the spaces given. Every episode ends in a termination or a truncation (a
    dataset's episode cut off without either is taken as truncated)."""
    dataset = _open(source)
    spec = dataset.spec
    for name, expected, got in (("observation", obs_space, spec.observation_space),
                                ("action", action_space, spec.action_space)):
        if expected is not None and not _same_space(expected, got):
            raise DemoError(f"demonstrations {source}: their {name} space {got} is not the run's {expected}")
    parts: dict[str, list] = {k: [] for k in ("obs", "action", "reward", "next_obs", "terminated", "truncated")}
    returns = []
    try:
        for episode in dataset.iterate_episodes():
            if episodes and len(returns) == episodes:
                break
            _check_episode(source, episode)
            parts["obs"].append(episode.observations[:-1])
            parts["next_obs"].append(episode.observations[1:])
            parts["action"].append(episode.actions)
            parts["reward"].append(np.asarray(episode.rewards, np.float32))
            parts["terminated"].append(np.asarray(episode.terminations, bool))
            truncated = np.array(episode.truncations, bool)
            truncated[-1] |= not episode.terminations[-1]
            parts["truncated"].append(truncated)
            returns.append(float(np.sum(episode.rewards)))
    except DemoError:
        raise
    except (OSError, KeyError, ValueError) as exc:  # what minari's storage backend (h5py) raises
        raise DemoError(f"demonstrations {source}: unreadable ({type(exc).__name__}: {exc})") from None
    if not returns:
        raise DemoError(f"demonstrations {source}: the dataset has no episodes")
    env_id = spec.env_spec.id if spec.env_spec is not None else None
    return Demonstrations(**{k: np.concatenate(v) for k, v in parts.items()}, returns=returns, env_id=env_id)


def _open(source: str | Path):
    """The MinariDataset at a path (its directory or its data directory) or with a local id."""
    _minari()
    from minari.dataset.minari_dataset import MinariDataset
    from minari.storage import get_dataset_path

    path = Path(source)
    if not path.exists():
        path = get_dataset_path(str(source))
    if (path / "data").is_dir():
        path = path / "data"
    if not (path / "metadata.json").is_file():
        raise DemoError(f"demonstrations {source}: no Minari dataset there (no metadata.json in {path})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return MinariDataset(path)
    except Exception as exc:  # minari raises what its storage backend raises: h5py's OSError, KeyError ...
        raise DemoError(f"demonstrations {source}: unreadable ({type(exc).__name__}: {exc})") from None


def _check_episode(source: str | Path, episode: Any) -> None:
    steps = len(episode.rewards)
    if not steps or len(episode.observations) != steps + 1 or len(episode.actions) != steps:
        raise DemoError(f"demonstrations {source}: episode {episode.id} has {len(episode.observations)} "
                        f"observations and {len(episode.actions)} actions for {steps} rewards")


def _same_space(a: gym.Space, b: gym.Space) -> bool:
    """Equal spaces, or Boxes of the same shape and dtype (bounds may be written differently)."""
    if isinstance(a, gym.spaces.Box) and isinstance(b, gym.spaces.Box):
        return a.shape == b.shape and a.dtype == b.dtype
    return a == b
