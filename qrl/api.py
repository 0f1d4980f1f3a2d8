"""The Python API: the same processes as `qrl run` (broker, actors, learner), started from Python.

    import qrl
    result = qrl.train("dqn", "CartPole-v1", actors=4, steps=100_000, config={"algo.lr": 1e-3})
    result.summary["final_eval_mean"], result.checkpoint, result.metrics[-1]
    qrl.evaluate(result.run_dir, episodes=10)          # {"mean": ..., "std": ..., "returns": [...]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from qrl.config import ConfigError


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict[str, Any]
    """summary.json: stop reason, frames, updates, final and best evaluation, elapsed seconds."""
    metrics: list[dict[str, Any]]
    """Every record of metrics.jsonl ("train" and "eval" kinds)."""
    checkpoint: Path


def _overrides(config: Mapping[str, Any] | None) -> list[str]:
    """{"algo.lr": 1e-3} or {"algo": {"lr": 1e-3}, "run": {...}} -> ["algo.lr=0.001", ...]."""
    out = []
    for key, value in (config or {}).items():
        if isinstance(value, Mapping) and "." not in key:
            out += [f"{key}.{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in value.items()]
        elif "." in key:
            out.append(f"{key}={json.dumps(value) if isinstance(value, (dict, list)) else value}")
        else:
            raise ConfigError(f"config key '{key}' must be 'section.key' or a section map (run, algo)")
    return out


def train(algo: str = "dqn", env: str = "CartPole-v1", actors: int = 4, steps: int | None = None,
          config: Mapping[str, Any] | None = None, run_dir: str | Path | None = None, seed: int | None = None,
          target_return: float | None = None, config_file: str | Path | None = None,
          progress: bool = False, inference: bool = False, local: bool = False) -> TrainResult:
    """Train with a local cluster of separate processes; return the run's summary, metrics and checkpoint.

    inference=True: central inference (`qrl run --inference`): one inference server acts for
    env-only actors. local=True: everything in this process, no sockets (`qrl run --local`; see
    qrl/local.py): the same agent, table and learner loop, with the actors taking turns with the
    learner. Raises ConfigError (bad key, algorithm or env) before anything starts, RuntimeError
    if the learner fails."""
    from qrl import cli
    from qrl.cluster import actor_permissions, learner_args, run_local
    from qrl.metrics import read

    sets = tuple(_overrides(config))
    resolved = cli._resolve(str(config_file) if config_file else None, algo, env, sets, seed=seed,
                            total_steps=steps, target_return=target_return)
    run_dir = Path(run_dir or cli._default_run_dir(resolved.algo, resolved.env))
    if local:
        from qrl.learner import LearnerOptions
        from qrl.local import run_in_process

        opts = LearnerOptions(algo=resolved.algo, env=resolved.env, run_dir=str(run_dir), progress=progress)
        summary = run_in_process(opts, resolved.run, resolved.algo_values, actors)
        return TrainResult(run_dir, summary, read(run_dir), Path(summary["checkpoint"]))
    passed_on = learner_args(sets, config=config_file, seed=seed, total_steps=steps, target_return=target_return,
                             no_progress=not progress)
    code = run_local(resolved.algo, resolved.env, actors, run_dir, passed_on,
                     actor_args=actor_permissions(resolved.env, resolved.run.wrappers), inference=inference,
                     inference_args=cli._inference_sets(sets, resolved.env, resolved.run.wrappers))
    if code != 0:
        raise RuntimeError(f"the learner exited with code {code}; see {run_dir}")
    summary = json.loads((run_dir / "summary.json").read_text())
    return TrainResult(run_dir, summary, read(run_dir), Path(summary["checkpoint"]))


def evaluate(path: str | Path, episodes: int = 10, seed: int = 0, render: str | None = None,
             gif: str | Path | None = None) -> dict[str, Any]:
    """Deterministic evaluation of a run directory or checkpoint (see `qrl evaluate`)."""
    from qrl.evaluation import evaluate as run_evaluation

    return run_evaluation(path, episodes=episodes, seed=seed, render=render, gif=gif)


