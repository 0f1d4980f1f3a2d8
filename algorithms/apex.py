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

from qrl import ops
from qrl.algorithm import Agent, History, Rollout, replay_table
from qrl.algorithms import dqn


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


def table_config(args: Args):
    return replay_table(args, args.samples_per_insert, sampler="prioritized",
                        priority_exponent=args.priority_exponent)


def sample_options(args: Args, updates: int) -> dict[str, Any]:
    """Sent with every sample request: the importance-sampling exponent for this point of training."""
    return {"beta": ops.linear_schedule(args.importance_exponent, 1.0, args.importance_anneal_updates, updates)}


# -- actor side -------------------------------------------------------------------------------

def history(args: Args) -> History:
    # One step more than DQN: the initial priority of the last item needs max Q of the
    # observation after its n-step window.
    return History(after=args.n_step)


class EpsilonGreedy(dqn.EpsilonGreedy):
    """DQN's exploration; also records the Q values the initial priorities are computed from."""

    def select(self, net, q: np.ndarray):
        actions = self.explore(q.argmax(axis=1), q.shape[1])
        return actions, {"q_taken": q[np.arange(len(q)), actions].astype(np.float32), "q_max": q.max(axis=1)}


def initial_priorities(rollout: Rollout, args: Args) -> np.ndarray | None:
    """The actor's estimate of each item's priority, |n-step TD error| from the Q values it acted
    on (Ape-X); None: the broker gives new items the largest priority seen so far."""
    if not args.actor_priorities:
        return None
    T = rollout.num_steps
    returns, discounts, last = ops.nstep_targets(
        rollout.rewards, rollout.terminated, rollout.truncated, args.gamma, args.n_step, T)
    envs = np.arange(rollout.rewards.shape[1])[None, :]
    # max Q at the bootstrap observation = max Q at the step after `last` (exact unless the
    # episode was truncated there; the learner replaces this estimate after the first sample).
    bootstrap = rollout.extras["q_max"][last + 1, envs]
    td = returns + discounts * bootstrap - rollout.extras["q_taken"][:T]
    return (np.abs(td) + dqn.PRIORITY_FLOOR).reshape(-1)


AGENT = Agent(name="apex", Args=Args, make_policy=dqn.make_policy, make_core=EpsilonGreedy, make_items=dqn.make_items,
              Learner=dqn.Learner, table_config=table_config, history=history, sample_options=sample_options,
              initial_priorities=initial_priorities, demonstrations=dqn.DEMONSTRATIONS)
