"""Run configuration: frozen dataclasses, and `--set section.key=value` overrides.

A run has two sections: ``run`` (RunConfig, the same for every algorithm) and
``algo`` (the algorithm's own Args). Every key is checked: an unknown key or a
value of the wrong type is one error naming the key and the allowed keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class RunConfig:
    """What every run has, whatever the algorithm."""

    seed: int = 0
    """Seeds derive from it: actor i uses seed + 1000 * (i + 1), evaluation seed + 7."""
    total_steps: int = 100_000
    """Stop when actors have stepped this many environment frames in total."""
    target_return: float | None = None
    """Stop as soon as a deterministic evaluation reaches this mean return (None: the env's reward threshold)."""
    num_envs: int = 8
    """Environments per actor process, stepped as one synchronous vector env so inference is batched."""
    segment_length: int = 32
    """Steps per environment in one segment an actor pushes."""
    eval_every_frames: int = 5_000
    """Env frames between deterministic evaluations on the learner (0: off). Counted in frames,
    not seconds, so that when a run is judged solved does not depend on the machine's speed."""
    eval_every_s: float | None = None
    """Also (or instead) evaluate every this many seconds of wall time (None: off)."""
    eval_episodes: int = 10
    publish_every: int = 50
    """Learner updates between weight publications."""
    checkpoint_every_s: float = 60.0
    samples_in_flight: int = 4
    """Sample requests the learner keeps outstanding so it rarely waits on the network."""
    learner_threads: int = 1
    """torch intra-op threads on the learner. One by default: actors share the cores, and
    oversubscribed OpenMP threads spin and collapse throughput on a small machine."""
    max_seconds: float | None = None
    """Wall-clock limit for the learner (None: no limit)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for gymnasium.make, e.g. {continuous: true} (--set run.env_kwargs='{...}')."""
    sync_actors: bool = False
    """Each actor waits for newer weights after pushing a segment (synchronous on-policy training:
    no stale unrolls). The algorithm's batch must not exceed actors x num_envs unrolls."""
    normalize_obs: bool = False
    """Normalize observations by running mean and std (kept by the learner, shipped with the weights)."""
    normalize_reward: bool = False
    """Scale rewards (or n-step returns) by their running standard deviation on the learner."""
    wrappers: list[Any] = field(default_factory=list)
    """gymnasium.wrappers by name, applied in order: 'FlattenObservation' or
    {name: ClipReward, min_reward: -1, max_reward: 1}."""


def _parse_value(key: str, text: str, hint: Any) -> Any:
    """Convert an override string to the field's annotated type."""
    if typing.get_origin(hint) in (dict, list):  # a YAML (or JSON) value: '{continuous: true}', '[A, B]'
        try:
            return _check_value(key, yaml.safe_load(text), hint)
        except yaml.YAMLError:
            raise ConfigError(f"{key}: cannot read {text!r} as YAML") from None
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if type(None) in options and text.lower() in ("none", "null"):
        return None
    for t in options:
        try:
            if t is bool:
                if text.lower() in ("true", "1", "yes", "on"):
                    return True
                if text.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError
            if t is int:
                return int(text.replace("_", ""))
            if t is float:
                return float(text)
            if t is str:
                return text
        except ValueError:
            continue
    names = " or ".join(getattr(t, "__name__", str(t)) for t in options)
    raise ConfigError(f"{key}: cannot read {text!r} as {names}")


def _check_value(key: str, value: Any, hint: Any) -> Any:
    """Type-check a value that came already typed (e.g. from JSON of a saved config)."""
    origin = typing.get_origin(hint)
    if origin in (dict, list):
        if value is None:
            return origin()
        if not isinstance(value, origin):
            raise ConfigError(f"{key}: {value!r} is not a {origin.__name__}")
        return value
    if isinstance(value, str):
        return _parse_value(key, value, hint)
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for t in options:
        if t is type(None) and value is None:
            return None
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t in (int, bool) and type(value) is t:
            return value
    raise ConfigError(f"{key}: {value!r} is not a {hint}")


def build(cls: type, values: Mapping[str, Any], section: str) -> Any:
    """Instantiate a frozen config dataclass from a mapping, checking every key and type."""
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"unknown config key '{section}.{key}'; allowed: {', '.join(section + '.' + a for a in allowed)}")
        kwargs[key] = _check_value(f"{section}.{key}", value, hints[key])
    return cls(**kwargs)


def parse_overrides(items: Iterable[str], sections: Mapping[str, type]) -> dict[str, dict[str, Any]]:
    """['algo.lr=1e-3', 'run.seed=2'] -> {'algo': {'lr': 0.001}, 'run': {'seed': 2}}."""
    out: dict[str, dict[str, Any]] = {name: {} for name in sections}
    for item in items:
        key, sep, text = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise ConfigError(f"override {item!r} must look like section.key=value (sections: {', '.join(sections)})")
        if section not in sections:
            raise ConfigError(f"unknown config section '{section}' in {item!r}; sections: {', '.join(sections)}")
        hints = typing.get_type_hints(sections[section])
        if name not in hints:
            allowed = ", ".join(f"{section}.{f.name}" for f in dataclasses.fields(sections[section]))
            raise ConfigError(f"unknown config key '{section}.{name}'; allowed: {allowed}")
        out[section][name] = _parse_value(key, text.strip(), hints[name])
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# -- config files --------------------------------------------------------------------------------

FILE_KEYS = ("algorithm", "env", "actors", "run", "algo")


@dataclass(frozen=True)
class FileConfig:
    """A YAML preset (configs/*.yaml): which algorithm on which environment, and overrides.

        algorithm: dqn
        env: CartPole-v1
        actors: 4            # used by `qrl run`
        run: {total_steps: 100000}
        algo: {lr: 0.001}
    """

    algorithm: str | None = None
    env: str | None = None
    actors: int | None = None
    run: dict[str, Any] = field(default_factory=dict)
    algo: dict[str, Any] = field(default_factory=dict)


def load_file(path: str | Path | None) -> FileConfig:
    """Read a preset; unknown top-level keys and non-map sections are one-line errors.
    Keys inside run/algo are checked against the dataclasses when the run is built."""
    if path is None:
        return FileConfig()
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    doc = doc or {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a map with keys {', '.join(FILE_KEYS)}")
    for key in doc:
        if key not in FILE_KEYS:
            close = difflib.get_close_matches(str(key), FILE_KEYS, n=1)
            raise ConfigError(f"{path}: unknown key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else "")
                              + f"; allowed: {', '.join(FILE_KEYS)}")
    for section in ("run", "algo"):
        if not isinstance(doc.get(section) or {}, dict):
            raise ConfigError(f"{path}: '{section}' must be a map of key: value")
    actors = doc.get("actors")
    if actors is not None and (not isinstance(actors, int) or isinstance(actors, bool) or actors < 1):
        raise ConfigError(f"{path}: 'actors' must be a positive integer")
    return FileConfig(algorithm=doc.get("algorithm"), env=doc.get("env"), actors=actors,
                      run=dict(doc.get("run") or {}), algo=dict(doc.get("algo") or {}))


def to_yaml(algorithm: str, env: str, run: Any, algo: Any, actors: int | None = None) -> str:
    """The resolved config in the preset format, so `--config RUN_DIR/config.yaml` reruns it."""
    doc: dict[str, Any] = {"algorithm": algorithm, "env": env}
    if actors is not None:
        doc["actors"] = actors
    doc.update(run=to_dict(run), algo=to_dict(algo))
    return yaml.safe_dump(doc, sort_keys=False)
