"""Run configuration: frozen dataclasses, and `--set section.key=value` overrides.

A run has two sections: ``run`` (RunConfig, the same for every algorithm) and
``algo`` (the algorithm's own Args). Every key is checked: an unknown key or a
value of the wrong type is one error naming the key and the allowed keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
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
    store_frames: bool = True
    """Image observations (uint8, 3 or more axes) travel and are stored one frame at a time, items
    pointing at them (docs/frames.md); false: every item carries its observations' pixels."""
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
    eval_env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments that evaluations (the learner's, `qrl evaluate`) take over env_kwargs: a
    self-play game evaluated against a fixed opponent, {opponent: minimax} (SB3's separate eval env)."""
    max_policy_lag: int = 32
    """Off-policy staleness bound: the broker drops (and counts) segments made by weights more than
    this many versions older than the newest. Credits (docs/protocol.md, "Flow control") keep an
    actor from collecting before the table has room, so a run that follows them drops none.
    On-policy algorithms state their own bound (algo.max_policy_lag)."""
    sync_actors: bool = False
    """On-policy flow control: an actor acts on with the same weights for at most sync_lead more
    segments, then waits for weights that the learner made after it was done with the segment
    sync_lead before (trained on it, or the broker dropped it). No stale unrolls, no idle learner."""
    sync_lead: int = 1
    """With sync_actors: segments an actor collects while the learner trains on its last one.
    1: acting overlaps learning, each unroll is about one round of updates old (corrected by the
    behaviour log-probabilities PPO carries, or by V-trace); 0: strictly on-policy, the actor waits
    for newer weights after every segment and idles while the learner trains."""
    value_limit: float = 1e6
    """The largest magnitude of an item value (observations, rewards, returns) the broker stores where
    the observation or action space gives no tighter bound; episode returns may reach 1000 times it.
    A segment with a value outside is refused and counted (out_of_bounds): a finite but absurd value
    poisons a learner as surely as a NaN."""
    normalize_obs: bool = False
    """Normalize observations by running mean and std (kept by the learner, shipped with the weights)."""
    normalize_reward: bool = False
    """Scale rewards (or n-step returns) on the learner by the running root mean square of discounted
    returns (qrl/normalize.py)."""
    clip_rewards: bool = False
    """Learn from the sign of each reward (DQN's Atari setting: -1, 0 or +1); episode returns and
    evaluations stay the environment's own."""
    episodic_life: bool = False
    """A lost life ends the episode for learning (no bootstrapping across it: DQN's Atari setting)
    while the game goes on; episode returns and evaluations stay whole games. Needs an env that
    reports info['lives'] (ALE games)."""
    wrappers: list[Any] = field(default_factory=list)
    """gymnasium.wrappers by name, applied in order: 'FlattenObservation' or
    {name: ClipReward, min_reward: -1, max_reward: 1}."""
    demos: str | None = None
    """Demonstrations to learn from: a Minari dataset's path or local id (`qrl record` writes one).
    The learner reads it before anything starts and the broker serves it as a demonstration table
    beside the agent's (algorithm.DemoUse: bc, gail and airl need one; dqn's demo_ratio uses one)."""
    demo_episodes: int = 0
    """Learn from the dataset's first this many episodes (0: all of them)."""

    @property
    def eval_kwargs(self) -> dict[str, Any]:
        """The evaluation environment's keyword arguments: env_kwargs with eval_env_kwargs over them."""
        return {**self.env_kwargs, **self.eval_env_kwargs}


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


# -- ranges ----------------------------------------------------------------------------------------
# Allowed values by field name. A name means the same thing in every section and every algorithm
# (batch_size is always a count of items, gamma always a discount), so one table covers RunConfig,
# each algorithm's Args and the broker and actor settings; tests/test_config.py fails when a
# registered config has a numeric field with no rule here. Every float must also be finite.

@dataclass(frozen=True)
class Range:
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    """True: low itself is not allowed (lr > 0), False: it is (learning_starts >= 0)."""

    def check(self, key: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            raise ConfigError(f"{key} must be {'>' if self.low_open else '>='} {self.low:g}, got {value!r}")
        if self.high is not None and value > self.high:
            raise ConfigError(f"{key} must be <= {self.high:g}, got {value!r}")


COUNT, NON_NEGATIVE, POSITIVE, FRACTION = Range(1), Range(0), Range(0, low_open=True), Range(0, 1)
ANY = Range()

RANGES: dict[str, Range] = {
    # run
    "seed": Range(0, 2**32 - 1), "total_steps": COUNT, "target_return": ANY, "num_envs": Range(1, 4096),
    "segment_length": Range(1, 1 << 20), "eval_every_frames": NON_NEGATIVE, "eval_every_s": POSITIVE,
    "eval_episodes": Range(1, 100_000), "publish_every": COUNT, "checkpoint_every_s": POSITIVE,
    "samples_in_flight": Range(1, 64), "sync_lead": Range(0, 64), "learner_threads": Range(1, 1024),
    "max_seconds": POSITIVE, "value_limit": POSITIVE, "demo_episodes": NON_NEGATIVE,
    # algorithms
    "hidden": COUNT, "n_step": Range(1, 1000), "gamma": FRACTION, "lr": POSITIVE, "batch_size": COUNT,
    "buffer_size": COUNT, "learning_starts": NON_NEGATIVE, "samples_per_insert": NON_NEGATIVE,
    "target_tau": Range(0, 1, low_open=True), "target_update_every": COUNT, "max_grad_norm": NON_NEGATIVE,
    "demo_ratio": FRACTION, "demo_margin": NON_NEGATIVE, "demo_loss_coef": NON_NEGATIVE, "demo_batch": COUNT,
    "disc_hidden": COUNT, "disc_lr": POSITIVE, "disc_epochs": COUNT, "disc_minibatches": COUNT, "l2_coef": NON_NEGATIVE,
    "disc_grad_penalty": NON_NEGATIVE,
    "actor_table": COUNT,
    "eps_base": FRACTION, "eps_alpha": NON_NEGATIVE, "eps_anneal_frames": NON_NEGATIVE,
    "priority_exponent": Range(0, 10), "importance_exponent": FRACTION, "importance_anneal_updates": NON_NEGATIVE,
    "updates_per_step": NON_NEGATIVE, "tau": Range(0, 1, low_open=True), "exploration_noise": NON_NEGATIVE,
    "random_frames": NON_NEGATIVE, "policy_delay": COUNT, "target_noise": NON_NEGATIVE,
    "target_noise_clip": NON_NEGATIVE, "ent_coef": NON_NEGATIVE, "vf_coef": NON_NEGATIVE,
    "queue_capacity": COUNT, "max_policy_lag": NON_NEGATIVE, "rho_bar": POSITIVE, "c_bar": POSITIVE,
    "anneal_updates": NON_NEGATIVE, "lr_final": NON_NEGATIVE, "gae_lambda": FRACTION, "clip_range": POSITIVE,
    "clip_value": NON_NEGATIVE,
    "epochs": COUNT, "minibatches": COUNT, "log_std_init": Range(-20, 20), "sde_sample_freq": COUNT,
    "init_alpha": POSITIVE, "target_entropy_scale": ANY, "entropic_index": POSITIVE,
    "int_gamma": FRACTION, "ext_coef": NON_NEGATIVE, "int_coef": NON_NEGATIVE, "rnd_embedding": Range(1, 1 << 16),
    "rnd_update_proportion": Range(0, 1, low_open=True), "rnd_obs_clip": POSITIVE,
    "policy_iterations": COUNT, "aux_epochs": Range(0, 1000), "aux_minibatches": COUNT, "clone_coef": NON_NEGATIVE,
    "value_epochs": Range(0, 1000), "value_every": COUNT, "adv_coef": NON_NEGATIVE,
    "retrace_lambda": FRACTION, "loo_beta_max": POSITIVE,
    "lstm": Range(0, 1 << 16), "burn_in": Range(0, 1 << 16),
    "attention_memory": Range(1, 4096), "attention_heads": Range(1, 256), "attention_layers": Range(1, 64),
    "sequence_length": Range(1, 1 << 16), "adam_eps": POSITIVE, "rescale_eps": POSITIVE, "priority_eta": FRACTION,
    "atoms": Range(2, 4096), "v_min": ANY, "v_max": ANY, "quantiles": Range(1, 4096), "kappa": POSITIVE,
    "huber_delta": POSITIVE,
    "iqn_n": Range(1, 4096), "iqn_n_target": Range(1, 4096), "iqn_k": Range(1, 4096), "iqn_embedding": Range(1, 4096),
    "iqn_cvar": Range(0, 1, low_open=True), "fraction_lr": POSITIVE, "noisy_std": NON_NEGATIVE,
    "munchausen_alpha": NON_NEGATIVE,
    "entropy_tau": POSITIVE, "log_policy_clip": Range(-1e6, 0),
    "channels": Range(1, 4096), "blocks": Range(0, 256), "latent": Range(1, 1 << 16), "support": Range(1, 1000),
    "unroll": Range(1, 1000), "td_steps": Range(1, 10_000), "simulations": Range(1, 1 << 16), "c_puct": POSITIVE,
    "dirichlet_alpha": POSITIVE, "noise_fraction": FRACTION, "temperature_moves": NON_NEGATIVE,
    "temperature": POSITIVE, "weight_decay": NON_NEGATIVE, "value_coef": NON_NEGATIVE,
    # broker and actors
    "port": Range(0, 65535), "max_message_bytes": Range(1024), "ingest_hwm": COUNT, "ingest_buffer": NON_NEGATIVE,
    "stats_interval_s": POSITIVE, "snapshot_every_s": POSITIVE, "max_table_bytes": NON_NEGATIVE,
    "run_lease_s": POSITIVE, "n": Range(1, 1024),
    "vector_threads": Range(1, 256),
    "first_id": NON_NEGATIVE,
    "total": COUNT, "send_hwm": COUNT, "send_buffer": NON_NEGATIVE, "give_up_after": NON_NEGATIVE,
    # central inference
    "inference_timeout_s": POSITIVE, "batch_envs": COUNT, "deadline_ms": NON_NEGATIVE, "idle_timeout_s": POSITIVE,
    "max_streams": Range(1, 1 << 20),
}


def check_range(key: str, value: Any) -> None:
    """Raise ConfigError when a value is outside what its field name allows (lists: every element)."""
    name = key.rpartition(".")[2]
    for v in value if isinstance(value, (list, tuple)) else (value,):
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{key} must be a finite number, got {v!r}")
        RANGES.get(name, ANY).check(key, v)


def build(cls: type, values: Mapping[str, Any], section: str) -> Any:
    """Instantiate a frozen config dataclass from a mapping, checking every key, type and range."""
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            names = ", ".join(f"{section}.{a}" for a in allowed)
            raise ConfigError(f"unknown config key '{section}.{key}'; allowed: {names}")
        kwargs[key] = _check_value(f"{section}.{key}", value, hints[key])
        check_range(f"{section}.{key}", kwargs[key])
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
