"""Deterministic evaluation, the one place it lives: the learner's periodic evaluation
(run_episodes), and `qrl evaluate`, which loads a run's checkpoint and plays episodes, optionally
rendered in the terminal (environments with an "ansi" render mode, with the value of each action
at every step) or saved as a GIF (from "rgb_array" frames, via imageio). Stateful (recurrent)
policies carry their state from step to step, reset where an episode starts."""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from qrl import algorithm, checkpoint, eager, envs
from qrl.config import ConfigError, RunConfig, build
from qrl.normalize import Normalizer


def run_episodes(agent: algorithm.Agent, args: Any, net: torch.nn.Module, env_id: str, episodes: int, seed: int,
                 env_kwargs: dict | None = None, wrappers: list | tuple = (),
                 normalize_obs=None) -> tuple[float, float, list[float]]:
    """Mean and std of the return of ``episodes`` deterministic episodes, stepped as one vector env
    (observations through normalize_obs first when the run normalizes them)."""
    normalize_obs = normalize_obs or (lambda o: o)
    core = agent.make_core(args, 0, 1, episodes, seed)
    env = envs.make_vector_env(env_id, episodes, env_kwargs, wrappers)
    try:
        obs, _ = env.reset(seed=seed)
        state, episode_start = core.initial_state(episodes), np.ones(episodes, dtype=bool)
        returns = np.zeros(episodes)
        finished = np.zeros(episodes, dtype=bool)
        while not finished.all():
            actions, state = core.greedy(net, normalize_obs(obs), state, episode_start)
            obs, reward, terminated, truncated, _ = env.step(actions)
            returns += np.where(finished, 0.0, reward)  # count each env's first episode only
            episode_start = terminated | truncated
            finished |= episode_start
    finally:
        env.close()
    return float(returns.mean()), float(returns.std()), returns.tolist()


@dataclass
class LoadedPolicy:
    algo_name: str
    agent: algorithm.Agent
    args: Any
    env: str
    run: RunConfig
    net: torch.nn.Module
    normalizer: Normalizer  # the run's observation statistics (normalize_obs: its standardization)

    def normalize_obs(self, obs: np.ndarray) -> np.ndarray:
        return self.normalizer.normalize_obs(obs)

    def make_core(self, n: int, seed: int) -> Any:
        """An acting core for n envs that explores as after its warm-up (no uniformly random first
        frames, epsilon annealed); its greedy actions are the policy's own either way."""
        warmed = {k: 0 for k in ("random_frames", "eps_anneal_frames") if hasattr(self.args, k)}
        return self.agent.make_core(dataclasses.replace(self.args, **warmed), 0, 1, n, seed)


def load_policy(path: str | Path) -> LoadedPolicy:
    """The policy network of a run directory or checkpoint file, with the config it was trained with."""
    saved = checkpoint.load(path)
    config = json.loads(saved["config"])
    agent = algorithm.load(config["algo"])
    args = build(agent.Args, config["args"], "algo")
    run = build(RunConfig, config["run"], "run")
    obs_space, action_space = envs.spaces(config["env"], run.env_kwargs, run.wrappers)
    eager.skip_compiler_import()  # the learner's optimizer, built only to load the checkpoint
    learner = agent.Learner(obs_space, action_space, args, torch.device("cpu"))
    learner.load_state_dict(saved["learner"])
    learner.net.eval()
    normalizer = Normalizer(obs_space.shape, run.normalize_obs, run.normalize_reward)
    normalizer.load_state(saved.get("normalizer") or {})
    return LoadedPolicy(config["algo"], agent, args, config["env"], run, learner.net, normalizer)


def _describe_values(policy: LoadedPolicy, core: algorithm.ActorCore, env, obs, state, episode_start) -> str:
    if not core.has_action_values:
        return ""
    outputs, _ = core.evaluation_outputs(policy.net, policy.normalize_obs(np.asarray([obs])), state, episode_start)
    values = core.action_values(outputs)[0]
    names = getattr(env.unwrapped, "action_names", None) or [str(i) for i in range(len(values))]
    best = int(values.argmax())
    return "  ".join(f"{n} {v:+.3f}{'*' if i == best else ' '}" for i, (n, v) in enumerate(zip(names, values)))


def _rendering_env(policy: Any, mode: str) -> Any:
    """The policy's env rendering in mode ("ansi": text, "rgb_array": frames), or one line saying
    that it has no such mode."""
    modes = envs.spec(policy.env).kwargs.get("render_modes") or []
    with warnings.catch_warnings():  # gymnasium warns of a mode the env lacks: the line below says it
        warnings.simplefilter("ignore")
        env = envs.make_env(policy.env, policy.run.eval_kwargs, policy.run.wrappers, render_mode=mode)
    available = env.metadata.get("render_modes", modes)
    if mode not in available:
        env.close()
        what = "text rendering for --render terminal" if mode == "ansi" else "rgb_array frames for --gif"
        raise ConfigError(f"{policy.env} has no {what} (its render modes: {', '.join(available) or 'none'})")
    return env


def evaluate(path: str | Path, episodes: int = 10, seed: int = 0, render: str | None = None,
             gif: str | Path | None = None, fps: int = 30, out: Callable[[str], Any] = print,
             env_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Deterministic evaluation: mean, std and each episode's return.

    render="terminal" prints every step of every episode (text rendering); gif=PATH saves the
    first episode as an animated GIF. Without either, episodes run as one vector env. env_kwargs
    go over the run's evaluation keyword arguments (a board game's opponent)."""
    if render not in (None, "terminal"):
        raise ConfigError(f"unknown render mode '{render}'; use --render terminal or --gif PATH")
    if gif is not None and Path(gif).suffix.lower() != ".gif":  # checked before any episode runs
        raise ConfigError(f"--gif writes an animated GIF: give a file name that ends in .gif, not {gif}")
    policy = load_policy(path)
    if env_kwargs:
        policy.run = dataclasses.replace(policy.run, eval_env_kwargs={**policy.run.eval_env_kwargs, **env_kwargs})
    if render is None and gif is None:
        mean, std, returns = run_episodes(policy.agent, policy.args, policy.net, policy.env, episodes, seed,
                                          policy.run.eval_kwargs, policy.run.wrappers, policy.normalize_obs)
        return {"env": policy.env, "algo": policy.algo_name, "episodes": episodes, "mean": mean, "std": std,
                "returns": returns}

    env = _rendering_env(policy, "ansi" if render == "terminal" else "rgb_array")
    frames, returns = [], []
    core = policy.agent.make_core(policy.args, 0, 1, 1, seed)
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            state, start = core.initial_state(1), np.ones(1, dtype=bool)
            total, step, done = 0.0, 0, False
            while not done:
                if render == "terminal":
                    out(f"episode {episode + 1} step {step}  return {total:+.3f}\n{env.render()}\n"
                        f"{_describe_values(policy, core, env, obs, state, start)}\n")
                elif episode == 0:
                    frames.append(env.render())
                actions, state = core.greedy(policy.net, policy.normalize_obs(np.asarray([obs])), state, start)
                action, start = actions[0], np.zeros(1, dtype=bool)
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                step += 1
                done = terminated or truncated
            if render == "terminal":
                out(f"episode {episode + 1} ended after {step} steps with return {total:+.3f}\n{env.render()}\n")
            elif episode == 0:
                frames.append(env.render())
            returns.append(total)
    finally:
        env.close()
    if gif is not None:
        try:
            import imageio.v2 as imageio
        except ImportError:
            raise ConfigError("--gif needs imageio: pip install 'qrl[gif]'") from None
        imageio.mimsave(str(gif), frames, duration=1000 / fps, loop=0)
    return {"env": policy.env, "algo": policy.algo_name, "episodes": episodes, "mean": float(np.mean(returns)),
            "std": float(np.std(returns)), "returns": returns, "gif": str(gif) if gif else None}
