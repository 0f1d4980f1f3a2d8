"""Ape-X DQN: the distributed DQN of algorithms/dqn.py (double, dueling, n-step, per-actor
epsilon) with prioritized replay in the broker. Actors compute each item's initial priority
from their own Q values; the learner corrects the sampling bias with importance weights
(beta annealed to 1) and sends back |TD error| as the sampled items' new priorities.
References: Horgan et al. 2018 (Ape-X); Schaul et al. 2016 (prioritized experience replay).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from qrl import ops
from qrl.algorithm import Rollout
from qrl.algorithms import dqn
from qrl.algorithms.dqn import Learner, action_values, greedy_act, make_policy  # noqa: F401  (the interface)
from qrl.brokers.tables import TableConfig


@dataclass(frozen=True)
class Args(dqn.Args):
    priority_exponent: float = 0.6
    """alpha: P(i) ~ priority_i ** alpha."""
    importance_exponent: float = 0.4
    """beta at the start; annealed linearly to 1 over importance_anneal_updates learner updates."""
    importance_anneal_updates: int = 20_000
    actor_priorities: bool = True
    """Actors send |n-step TD error| under their own Q values as initial priorities
    (otherwise new items get the largest priority seen so far)."""


def table_config(args: Args) -> TableConfig:
    return TableConfig(
        capacity=args.buffer_size,
        sampler="prioritized",
        min_size=args.learning_starts,
        samples_per_insert=args.samples_per_insert,
        tolerance=max(args.batch_size, 64 * args.samples_per_insert) if args.samples_per_insert else 0.0,
        priority_exponent=args.priority_exponent,
    )


def sample_options(args: Args, updates: int) -> dict[str, Any]:
    """Sent with every sample request: the importance-sampling exponent for this point of training."""
    return {"beta": ops.linear_schedule(args.importance_exponent, 1.0, args.importance_anneal_updates, updates)}


# -- actor side -------------------------------------------------------------------------------

def rollout_overlap(args: Args) -> int:
    # One step more than DQN: the initial priority of the last item needs max Q of the
    # observation after its n-step window.
    return args.n_step


init_actor = dqn.init_actor


def act(net: dqn.QNetwork, obs: np.ndarray, state: dqn.ActorState, args: Args) -> tuple[np.ndarray, dict[str, Any]]:
    eps = ops.linear_schedule(1.0, state.epsilon, args.eps_anneal_frames, state.frames)
    state.frames += len(obs)
    with torch.inference_mode():
        q = net(torch.as_tensor(obs)).numpy()
    actions = q.argmax(axis=1)
    explore = state.rng.random(len(obs)) < eps
    if explore.any():
        actions[explore] = state.rng.integers(0, q.shape[1], size=int(explore.sum()))
    return actions, {"q_taken": q[np.arange(len(q)), actions].astype(np.float32), "q_max": q.max(axis=1)}


def make_items(rollout: Rollout, num_steps: int, args: Args) -> dict[str, np.ndarray]:
    items = dqn.make_items(rollout, num_steps, args)
    if args.actor_priorities:
        returns, discounts, last = ops.nstep_targets(
            rollout.rewards, rollout.terminated, rollout.truncated, args.gamma, args.n_step, num_steps)
        envs = np.arange(rollout.rewards.shape[1])[None, :]
        # max Q at the bootstrap observation = max Q at the step after `last` (exact unless the
        # episode was truncated there; the learner replaces this estimate after the first sample).
        bootstrap = rollout.extras["q_max"][last + 1, envs]
        td = returns + discounts * bootstrap - rollout.extras["q_taken"][:num_steps]
        items["_priority"] = (np.abs(td) + dqn.PRIORITY_FLOOR).reshape(-1)
    return items
