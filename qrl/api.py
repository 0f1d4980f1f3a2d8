"""The Python API: the same processes as `qrl run` (broker, actors, learner), started from Python.

    import qrl
    result = qrl.train("dqn", "CartPole-v1", actors=4, steps=100_000, config={"algo.lr": 1e-3})
    result.summary["final_eval_mean"], result.checkpoint, result.metrics[-1]
    qrl.evaluate(result.run_dir, episodes=10)          # {"mean": ..., "std": ..., "returns": [...]}
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from qrl.callbacks import Callback, Dispatcher, request_stop
from qrl.config import ConfigError, FileConfig, RunConfig, parse_overrides, to_dict


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict[str, Any]
    """summary.json: stop reason, frames, updates, final and best evaluation, elapsed seconds."""
    metrics: list[dict[str, Any]]
    """Every record of metrics.jsonl ("train" and "eval" kinds)."""
    checkpoint: Path


# -- a run's settings, checked before anything starts ------------------------------------------

@dataclass
class Resolved:
    """A run's settings, checked: what `qrl run`, `qrl learner` and train() start from."""

    algo: str
    env: str
    run: RunConfig
    algo_values: dict
    actors: int | None


def names_and_run(file: FileConfig, algo: str | None, env: str | None, run_overrides: dict, run_defaults: dict,
                   **run_options) -> tuple[str, str, RunConfig]:
    """The algorithm and env names, and the checked run settings. Imports no torch.
    Precedence: defaults (RunConfig's, then the agent's run_defaults) < config file <
    command-line flags < --set."""
    from qrl.config import build

    run_values = {**run_defaults, **file.run, **{k: v for k, v in run_options.items() if v is not None},
                  **run_overrides}
    return algo or file.algorithm or "dqn", env or file.env or "CartPole-v1", build(RunConfig, run_values, "run")


def resolve(config: str | None, algo: str | None, env: str | None, sets: tuple[str, ...],
            resume_dir: str | Path | None = None, **run_options) -> Resolved:
    """Check config file, algorithm, env and overrides before anything starts. resume_dir: the
    settings are that run's own (qrl/resume.py), and the options may change only some of them."""
    from qrl import algorithm, resume
    from qrl.config import build, load_file

    file = load_file(config)
    if resume_dir is not None:
        file, saved = resume.resumed_file(resume_dir, file, algo, env)
    agent = algorithm.load(algo or file.algorithm or "dqn")
    overrides = parse_overrides(sets, {"run": RunConfig, "algo": agent.Args})
    algo, env, run_cfg = names_and_run(file, algo, env, overrides["run"], agent.run_defaults, **run_options)
    if run_cfg.sync_actors and run_cfg.publish_every != 1:  # actors would wait for weights never sent
        raise ConfigError("run.sync_actors needs run.publish_every=1 (actors wait for every update's weights)")
    algo_values = {**file.algo, **overrides["algo"]}
    args = build(agent.Args, algo_values, "algo")  # type- and range-check now, not in a child process
    if resume_dir is not None:
        resume.refuse_changes(saved, to_dict(run_cfg), to_dict(args))
    obs_space, action_space = _check_env(env, run_cfg)
    try:  # an algorithm that cannot act in these spaces (ql: Discrete observations; ddpg: Box actions)
        agent.make_policy(obs_space, action_space, args)
    except ValueError as exc:
        raise ConfigError(f"{algo} on {env}: {exc}") from None
    _check_table(agent, args, run_cfg)
    return Resolved(algo, env, run_cfg, algo_values, file.actors)


def _check_table(agent: Any, args: Any, run_cfg: RunConfig) -> None:
    """Settings that only together make a table the broker can serve, and a budget that reaches
    the first update."""
    table = agent.table_config(args)
    try:  # e.g. the rate limiter's
        table.validate(args.batch_size)
    except ValueError as exc:
        raise ConfigError(f"algo: {exc}") from None
    if table.min_size >= run_cfg.total_steps:  # an item holds at least one frame
        raise ConfigError(f"the run would end before its first update: the replay needs {table.min_size:,} items "
                          f"(algo.learning_starts) and run.total_steps={run_cfg.total_steps:,} frames cannot fill "
                          f"it; raise run.total_steps or lower algo.learning_starts")


def _check_env(env: str, run_cfg: RunConfig) -> tuple[Any, Any]:
    """Make the environment once, as the run will: a bad id, env_kwargs or wrapper, a missing
    dependency (Box2D, ALE) or episodic_life without lives is one line now. Its spaces."""
    from qrl import envs

    envs.check_env_id(env)
    for w in run_cfg.wrappers:
        envs._wrapper(w)
    try:
        spaces = envs.spaces(env, run_cfg.env_kwargs, run_cfg.wrappers)
    except Exception as exc:
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"cannot make environment {env!r} with run.env_kwargs={run_cfg.env_kwargs} and "
                          f"run.wrappers={run_cfg.wrappers}: {type(exc).__name__}: {detail}") from None
    if run_cfg.eval_env_kwargs:
        try:
            envs.spaces(env, run_cfg.eval_kwargs, run_cfg.wrappers)
        except Exception as exc:
            detail = (str(exc).strip().splitlines() or [""])[0][:200]
            raise ConfigError(f"cannot make the evaluation environment {env!r} with run.eval_env_kwargs="
                              f"{run_cfg.eval_env_kwargs}: {type(exc).__name__}: {detail}") from None
    if run_cfg.episodic_life and not envs.reports_lives(env, run_cfg.env_kwargs, run_cfg.wrappers):
        raise ConfigError(f"run.episodic_life needs an environment that reports info['lives'] (ALE games do); "
                          f"{env} does not")
    return spaces


def inference_sets(sets: tuple[str, ...], env: str, wrappers: list) -> tuple[str, ...]:
    """The `qrl inference` flags of a local cluster: its --set inference.* overrides and permissions."""
    from qrl.cluster import actor_permissions

    own = tuple(f"--set={s}" for s in sets if s.strip().startswith("inference."))
    return own + actor_permissions(env, wrappers, section="inference")


def actor_sets(sets: tuple[str, ...], env: str, wrappers: list) -> tuple[str, ...]:
    """The `qrl actor` flags of a local cluster: its --set actor.* overrides (e.g. actor.vector_env=ale)
    and permissions."""
    from qrl.cluster import actor_permissions

    own = tuple(f"--set={s}" for s in sets if s.strip().startswith("actor."))
    return own + actor_permissions(env, wrappers)


def learner_sets(sets: tuple[str, ...]) -> tuple[str, ...]:
    """The overrides the learner takes: all but the inference server's and the actors' own."""
    return tuple(s for s in sets if not s.strip().startswith(("inference.", "actor.")))


def default_run_dir(algo: str, env_id: str) -> str:
    return str(Path("runs") / f"{algo}-{env_id}-{time.strftime('%Y%m%d-%H%M%S')}")


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
          progress: bool = False, inference: bool = False, local: bool = False, resume: bool = False,
          max_seconds: float | None = None, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Train with a local cluster of separate processes; return the run's summary, metrics and checkpoint.

    inference=True: central inference (`qrl run --inference`): one inference server acts for
    env-only actors. local=True: everything in this process, no sockets (`qrl run --local`; see
    qrl/local.py): the same agent, table and learner loop, with the actors taking turns with the
    learner. Raises ConfigError (bad key, algorithm or env) before anything starts, RuntimeError
    if the learner fails. resume=True continues the run in run_dir with its own settings (algo and
    env are then taken from it); steps, max_seconds and the run.* keys of qrl/resume.py may extend it.
    callbacks: qrl.Callback objects (qrl/callbacks.py), called in this process as the run goes."""
    from qrl.cluster import learner_args, run_local
    from qrl.metrics import read

    if resume and run_dir is None:
        raise ConfigError("resume=True needs the run_dir of the run to continue")
    sets = tuple(_overrides(config))
    options = dict(seed=seed, total_steps=steps, max_seconds=max_seconds, target_return=target_return)
    resolved = resolve(str(config_file) if config_file else None, None if resume else algo, None if resume else env,
                       learner_sets(sets), resume_dir=run_dir if resume else None, **options)
    run_dir = Path(run_dir or default_run_dir(resolved.algo, resolved.env))
    run_dir.mkdir(parents=True, exist_ok=True)
    dispatcher = Dispatcher(run_dir, callbacks) if callbacks else None
    on_tick = dispatcher.tick if dispatcher else None
    summary = None
    try:
        if local:
            summary = train_in_process(resolved, actors, run_dir, resume=resume, progress=progress, on_tick=on_tick)
        else:
            passed_on = learner_args(learner_sets(sets), config=config_file, no_progress=not progress, resume=resume,
                                     **options)
            code = run_local(resolved.algo, resolved.env, actors, run_dir, passed_on,
                             actor_args=actor_sets(sets, resolved.env, resolved.run.wrappers), inference=inference,
                             inference_args=inference_sets(sets, resolved.env, resolved.run.wrappers), on_tick=on_tick)
            if code != 0:
                raise RuntimeError(f"the learner exited with code {code}; see {run_dir}")
            summary = json.loads((run_dir / "summary.json").read_text())
    finally:
        if dispatcher:
            dispatcher.finish(summary)
    return TrainResult(run_dir, summary, read(run_dir), Path(summary["checkpoint"]))


def training(*args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """train() as an iterator: yields the run's metrics records ("train" about once a second,
    "eval", "checkpoint") while it trains, and returns its TrainResult (StopIteration.value).
    Leaving the loop early (break) stops the run as a callback would, and waits for its end."""
    records: queue.Queue = queue.Queue()
    feed = _Feed(records)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = train(*args, **{**kwargs, "callbacks": [*kwargs.get("callbacks", ()), feed]})
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="qrl.training", daemon=True)
    thread.start()
    try:
        while thread.is_alive() or not records.empty():
            try:
                yield records.get(timeout=0.1)
            except queue.Empty:
                continue
    finally:
        if thread.is_alive() and feed.run_dir is not None:  # the caller left early: stop the run
            request_stop(feed.run_dir, "the training iterator was closed")
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


class _Feed(Callback):
    """qrl.training's callback: every record into a queue."""

    every_s = 1.0

    def __init__(self, records: queue.Queue):
        self.records, self.run_dir = records, None

    def on_start(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_eval(self, record: dict[str, Any]) -> None:
        self.records.put(record)

    on_checkpoint = on_metrics = on_eval


def train_in_process(resolved: Resolved, actors: int, run_dir: str | Path, resume: bool = False,
                     progress: bool = False, tensorboard: bool = False,
                     on_tick: Callable[[], None] | None = None) -> dict[str, Any]:
    """The run in this process, no sockets (qrl/local.py); its summary (summary.json)."""
    from qrl.learner import LearnerOptions
    from qrl.local import run_in_process

    opts = LearnerOptions(algo=resolved.algo, env=resolved.env, run_dir=str(run_dir), resume=resume, progress=progress,
                          tensorboard=tensorboard)
    return run_in_process(opts, resolved.run, resolved.algo_values, actors, on_tick)


def evaluate(path: str | Path, episodes: int = 10, seed: int = 0, render: str | None = None,
             gif: str | Path | None = None) -> dict[str, Any]:
    """Deterministic evaluation of a run directory or checkpoint (see `qrl evaluate`)."""
    from qrl.evaluation import evaluate as run_evaluation

    return run_evaluation(path, episodes=episodes, seed=seed, render=render, gif=gif)


