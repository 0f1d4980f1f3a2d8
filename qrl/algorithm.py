"""What an algorithm provides to the runtime, and the registry that finds it.

An algorithm is one module under algorithms/ (installed as qrl.algorithms)
that reads top to bottom. The actor runtime and the learner runtime call it
through these names only:

    Args                      frozen dataclass of hyperparameters (config section "algo")
    RUN_DEFAULTS (optional)   run-config defaults the algorithm needs, e.g. {"publish_every": 1}
    table_config(args)        how the broker should store items (capacity, rate limiter)
    make_policy(obs_space, action_space, args) -> torch.nn.Module
    rollout_overlap(args)     steps of history an item may need past a segment's end
    init_actor(index, count, num_envs, args, seed) -> actor state (exploration, rng)
    act(net, obs, actor_state, args) -> (actions, extras)     # exploring, on actors
    greedy_act(net, obs) -> actions                           # deterministic evaluation
    action_values(net, obs) -> [B, num_actions] (optional)    # shown by `qrl evaluate --render terminal`
    make_items(rollout, num_steps, args) -> {field: array}    # items pushed to the broker
                                          # ("_priority": optional initial priorities)
    sample_options(args, updates) -> dict (optional)         # extra sample-request fields, e.g. beta
    Learner(obs_space, action_space, args, device)
        .net                  the policy network actors run
        .update(batch) -> metrics  (metrics["_priorities"]: new priorities of batch["_id"], optional)
        .policy_state() -> {name: np.ndarray}                 # published as weights
        .state_dict() / .load_state_dict(state)               # checkpoints

Usage loop on an actor (qrl/actor.py):

    net = algo.make_policy(obs_space, act_space, args)
    state = algo.init_actor(i, n, num_envs, args, seed)
    actions, extras = algo.act(net, obs, state, args)   # every step
    items = algo.make_items(rollout, T, args)            # every T steps, then push
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

# name -> module. The runtime imports algorithms only through this table.
REGISTRY: dict[str, str] = {
    "dqn": "qrl.algorithms.dqn",
    "ql": "qrl.algorithms.ql",
    "apex": "qrl.algorithms.apex",
    "ppo": "qrl.algorithms.ppo",
    "impala": "qrl.algorithms.impala",
    "ddpg": "qrl.algorithms.ddpg",
    "td3": "qrl.algorithms.td3",
    "sac": "qrl.algorithms.sac",
}


class UnknownAlgorithm(ValueError):
    pass


def load(name: str) -> ModuleType:
    if name not in REGISTRY:
        raise UnknownAlgorithm(f"unknown algorithm '{name}'; available: {', '.join(sorted(REGISTRY))}")
    return importlib.import_module(REGISTRY[name])


@dataclass
class Rollout:
    """Consecutive steps of a vector env; index [t, b] is step t of env b.

    obs[t] -> actions[t] -> rewards[t], terminated[t], truncated[t], next_obs[t].
    next_obs[t] is the true successor of obs[t] (the final observation when the
    episode ended at t), so obs[t + 1] != next_obs[t] across episode ends.
    """

    obs: np.ndarray  # [L, B, *obs_shape]
    actions: np.ndarray  # [L, B, *action_shape]
    rewards: np.ndarray  # [L, B] float32
    terminated: np.ndarray  # [L, B] bool
    truncated: np.ndarray  # [L, B] bool
    next_obs: np.ndarray  # [L, B, *obs_shape]
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # [L, B, ...] from act()


def item_schema(algo: ModuleType, net, obs_space, action_space, args, num_envs: int, num_steps: int):
    """The broker's item schema for this algorithm (sent with `register`), found by running its own
    actor path once on sampled observations: init_actor, act, make_items. Also how many env frames
    one item covers, so the broker can check each segment's `frames`."""
    from qrl.brokers.tables import ItemSchema

    state = algo.init_actor(0, 1, num_envs, args, 0)
    obs = np.stack([obs_space.sample() for _ in range(num_envs)])
    actions, extras = algo.act(net, obs, state, args)  # one step, repeated: only shapes and dtypes matter
    length = num_steps + algo.rollout_overlap(args)
    repeat = lambda a: np.stack([a] * length)
    done = np.zeros((length, num_envs), dtype=bool)
    rollout = Rollout(obs=repeat(obs), actions=repeat(actions), rewards=np.zeros((length, num_envs), dtype=np.float32),
                      terminated=done, truncated=done.copy(), next_obs=repeat(obs),
                      extras={k: repeat(v) for k, v in extras.items()})
    items = algo.make_items(rollout, num_steps, args)
    items.pop("_priority", None)
    n_items = len(next(iter(items.values())))
    if (num_steps * num_envs) % n_items:
        raise ValueError(f"{algo.__name__}.make_items made {n_items} items from {num_steps * num_envs} frames: "
                         "an item must cover a whole number of env frames")
    return ItemSchema.of(items, (num_steps * num_envs) // n_items)
