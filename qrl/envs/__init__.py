"""Building gymnasium environments the same way on actors, learner and evaluation.

An environment is a gymnasium id (``CartPole-v1``, ``qrl/Grid-v0``, ``ALE/Pong-v5`` with the
atari extra, ``MinAtar/Breakout-v1`` with the minatar extra) or an entry point
``package.module:Class``, plus keyword arguments and standard gymnasium wrappers by name
(``run.env_kwargs``, ``run.wrappers`` in the config). Atari ids get the usual DQN preprocessing:
no-op starts, frame skip 4, grayscale, 84x84, 4 stacked frames.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import os
import sys
from typing import Any, Iterator, Sequence

import gymnasium as gym
import numpy as np

gym.register("qrl/Grid-v0", entry_point="qrl.envs.grid:GridWorld", max_episode_steps=50, reward_threshold=0.9)
gym.register("qrl/DeepSea-v0", entry_point="qrl.envs.deep_sea:DeepSea", reward_threshold=0.9)
gym.register("qrl/CartPoleNoVel-v1", entry_point="qrl.envs.wrappers:cartpole_no_velocity", max_episode_steps=500,
             reward_threshold=475.0)
# Self-play board games (qrl/games/env.py); with an opponent the threshold is a draw against it.
gym.register("qrl/TicTacToe-v0", entry_point="qrl.games.env:BoardGameEnv", kwargs={"game": "tictactoe"},
             reward_threshold=0.0)
gym.register("qrl/ConnectFour-v0", entry_point="qrl.games.env:BoardGameEnv", kwargs={"game": "connect4"},
             reward_threshold=0.9)


class UnknownEnvironment(ValueError):
    pass


class RefusedSpec(ValueError):
    """A run spec names code the actor was not allowed to load."""


def wrapper_name(spec: Any) -> str:
    return str(spec.get("name") if isinstance(spec, dict) else spec)


def check_spec_allowed(env_id: str, wrappers: Sequence[Any], allow_envs: Sequence[str] = (),
                       allow_wrappers: Sequence[str] = ()) -> None:
    """An actor builds what a run spec (written by whoever registered the run) names only if it
    imports no code the actor did not choose: a registered gymnasium id (or an Atari id), an entry
    point ``module:Class`` only when allow_envs lists it or its module, and wrappers only when
    allow_wrappers lists them (some write files where their options say). Raises RefusedSpec."""
    if ":" in env_id:
        module = env_id.partition(":")[0]
        if env_id not in allow_envs and module not in allow_envs:
            raise RefusedSpec(f"the run names environment entry point '{env_id}', which this actor does not allow "
                              f"(allow it with --set actor.allow_envs=[{env_id}]); nothing was imported")
    elif env_id not in gym.registry and not known_namespace(env_id):
        raise RefusedSpec(f"the run names environment '{env_id}', which is not a registered gymnasium id here")
    for w in wrappers or ():
        if wrapper_name(w) not in allow_wrappers:
            raise RefusedSpec(f"the run names wrapper '{wrapper_name(w)}', which this actor does not allow "
                              f"(allow it with --set actor.allow_wrappers=[{wrapper_name(w)}])")


NAMESPACES = {  # id prefix -> (the module with its ids, the function that registers them, how to install it)
    "ALE/": ("ale_py", None, "pip install 'qrl[atari]'"),  # None: gymnasium.register_envs(module)
    "MinAtar/": ("minatar.gym", "register_envs", "pip install 'qrl[minatar]'"),
}
"""Well-known packages whose gymnasium ids qrl registers on first use (importing nothing else)."""


def is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/")


def known_namespace(env_id: str) -> tuple[str, str | None, str] | None:
    return next((v for prefix, v in NAMESPACES.items() if env_id.startswith(prefix)), None)


def _register_namespace(env_id: str) -> None:
    """Register the ids of env_id's well-known package (ale-py's, MinAtar's)."""
    module_name, register, install = known_namespace(env_id)
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise UnknownEnvironment(f"'{env_id}' needs {module_name.partition('.')[0]}: {install}") from None
    if register is None:
        gym.register_envs(module)
    else:
        getattr(module, register)()


def resolve(env_id: str) -> str:
    """The gymnasium id to build env_id with: a registered id as it is, an Atari id once ale-py
    (or MinAtar) has registered its envs, an entry point ``package.module:Class`` registered on first use
    (as ``entry/package.module.Class``: gymnasium reads "module:id" in make() its own way).
    Anything else raises UnknownEnvironment with close matches."""
    if env_id in gym.registry:
        return env_id
    if known_namespace(env_id):
        _register_namespace(env_id)
        if env_id in gym.registry:
            return env_id
    if ":" in env_id:
        module_name, _, attr = env_id.partition(":")
        try:
            cls = getattr(import_user_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise UnknownEnvironment(f"cannot load environment entry point '{env_id}': {exc}") from None
        if not (isinstance(cls, type) and issubclass(cls, gym.Env)):
            raise UnknownEnvironment(f"entry point '{env_id}' is not a gymnasium.Env subclass")
        registered = f"entry/{module_name}.{attr}"
        if registered not in gym.registry:
            gym.register(registered, entry_point=cls)
        return registered
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownEnvironment(f"unknown environment '{env_id}'{hint}")


def import_user_module(name: str) -> Any:
    """A user's environment module, found as `python -m` finds modules: the current directory
    first, then sys.path (PYTHONPATH, installed packages). The one rule for every command (run,
    learner, actor, inference, evaluate) and the Python API: a `qrl` console script, unlike
    `python -m qrl`, does not put the current directory on sys.path by itself."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)
    return importlib.import_module(name)


def check_env_id(env_id: str) -> None:
    resolve(env_id)


def spec(env_id: str) -> gym.envs.registration.EnvSpec:
    return gym.spec(resolve(env_id))


def _wrapper(spec: str | dict[str, Any]):
    """'FlattenObservation' or {'name': 'ClipReward', 'min_reward': -1, 'max_reward': 1} -> env -> env.
    Names are qrl's own wrappers (qrl/envs/wrappers.py) or gymnasium.wrappers'."""
    from qrl.envs.wrappers import LAZY_WRAPPERS, WRAPPERS

    if isinstance(spec, dict):
        # Lists as tuples: a config (YAML, JSON, msgpack) has no tuples, and wrappers check for them
        # (ResizeObservation's shape).
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
        name = kwargs.pop("name", None)
    else:
        name, kwargs = spec, {}
    cls = WRAPPERS.get(str(name)) or getattr(gym.wrappers, str(name), None)
    if str(name) in LAZY_WRAPPERS:
        module, _, attr = LAZY_WRAPPERS[str(name)].partition(":")
        cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, gym.Wrapper)):
        known = sorted([*WRAPPERS, *LAZY_WRAPPERS] + [
            n for n in dir(gym.wrappers) if isinstance(getattr(gym.wrappers, n), type)
            and issubclass(getattr(gym.wrappers, n), gym.Wrapper)])
        close = difflib.get_close_matches(str(name), known, n=3)
        raise UnknownEnvironment(f"unknown wrapper '{name}'" + (f"; did you mean {', '.join(close)}?" if close
                                                                else f"; gymnasium.wrappers has {', '.join(known)}"))
    return lambda env: cls(env, **kwargs)


# Atari preprocessing, the same in both vector backends (qrl/envs/ale_vector.py reads these too).
ATARI_NOOP_MAX = 30  # random no-op actions at the start of each episode
ATARI_FRAME_SKIP = 4  # with max-pooling over the last two frames
ATARI_SCREEN = 84  # grayscale, 84x84
ATARI_STACK = 4  # frames per observation
VECTOR_BACKENDS = ("gymnasium", "ale")


def _atari_preprocessing(env: gym.Env) -> gym.Env:
    env = gym.wrappers.AtariPreprocessing(env, noop_max=ATARI_NOOP_MAX, frame_skip=ATARI_FRAME_SKIP,
                                          screen_size=ATARI_SCREEN, grayscale_obs=True)
    return gym.wrappers.FrameStackObservation(env, ATARI_STACK)


def _make_args(env_id: str, env_kwargs: dict[str, Any] | None, wrappers: Sequence[Any]):
    gym_id = resolve(env_id)
    kwargs = dict(env_kwargs or {})
    fns = [_wrapper(w) for w in wrappers]
    if is_atari(env_id):
        kwargs.setdefault("frameskip", 1)  # AtariPreprocessing does the skipping (with max-pooling)
        fns.insert(0, _atari_preprocessing)
    # Last, after the user's wrappers (which see the env's own observations): Dict and Tuple
    # observations become one vector, which every algorithm, the wire and the tables take.
    from qrl.envs.wrappers import flatten_structured

    fns.append(flatten_structured)
    return gym_id, kwargs, fns


def make_env(env_id: str, env_kwargs: dict[str, Any] | None = None, wrappers: Sequence[Any] = (),
             render_mode: str | None = None) -> gym.Env:
    """One environment, built like the vector envs' members (for rendering and GIFs)."""
    gym_id, kwargs, fns = _make_args(env_id, env_kwargs, wrappers)
    if render_mode is not None:  # only then: a user's env need not take render_mode
        kwargs["render_mode"] = render_mode
    env = gym.make(gym_id, **kwargs)
    for fn in fns:
        env = fn(env)
    return env


def make_vector_env(env_id: str, num_envs: int, env_kwargs: dict[str, Any] | None = None,
                    wrappers: Sequence[Any] = (), backend: str = "gymnasium", threads: int = 1) -> gym.vector.VectorEnv:
    """A vector env that resets finished episodes in the same step.

    Same-step autoreset keeps step t's transition whole: the observation after a
    finished episode is in info["final_obs"] and the returned obs is already
    the next episode's first (see next_observations). No render mode unless
    asked for: LunarLander keeps particle bodies and steps ~3x slower with one.
    backend "gymnasium": gymnasium's SyncVectorEnv; "ale": Atari games stepped by
    ale-py's C++ vector env on `threads` threads (qrl/envs/ale_vector.py).
    """
    if backend not in VECTOR_BACKENDS:
        raise ValueError(f"actor.vector_env must be one of {', '.join(VECTOR_BACKENDS)}, got {backend!r}")
    if backend == "ale":
        from qrl.envs.ale_vector import ALEVectorEnv

        resolve(env_id)  # ale-py installed, ids registered
        return ALEVectorEnv(env_id, num_envs, env_kwargs, wrappers, threads)
    gym_id, kwargs, fns = _make_args(env_id, env_kwargs, wrappers)
    return gym.make_vec(
        gym_id,
        num_envs=num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
        wrappers=fns or None,
        **kwargs,
    )


def next_observations(obs: np.ndarray, done: np.ndarray, info: dict) -> np.ndarray:
    """The true successor observation of each env's last step: final_obs where an episode ended."""
    if not done.any():
        return obs
    nxt = obs.copy()
    for i in np.flatnonzero(done):
        nxt[i] = info["final_obs"][i]
    return nxt


@contextlib.contextmanager
def single_env(env_id: str, env_kwargs: dict[str, Any] | None = None,
               wrappers: Sequence[Any] = ()) -> Iterator[gym.vector.VectorEnv]:
    """A vector env of one, closed on the way out: to look at what the env is like."""
    env = make_vector_env(env_id, 1, env_kwargs, wrappers)
    try:
        yield env
    finally:
        env.close()


def reports_lives(env_id: str, env_kwargs: dict[str, Any] | None = None, wrappers: Sequence[Any] = ()) -> bool:
    """Whether the env's reset info holds 'lives' (ALE games): what run.episodic_life needs."""
    with single_env(env_id, env_kwargs, wrappers) as env:
        return "lives" in env.reset(seed=0)[1]


def spaces(env_id: str, env_kwargs: dict[str, Any] | None = None,
           wrappers: Sequence[Any] = ()) -> tuple[gym.Space, gym.Space]:
    with single_env(env_id, env_kwargs, wrappers) as env:
        return env.single_observation_space, env.single_action_space
