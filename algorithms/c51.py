"""C51: each action's return is a categorical distribution on evenly spaced atoms in
[v_min, v_max]; the learner minimizes the cross-entropy to the n-step target distribution projected
back onto the atoms (double DQN picks the next action), and actors act on its mean. Dueling,
n-step, noisy nets and Ape-X exploration as in dqn.
Reference: Bellemare et al. 2017.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

from qrl import ops
from qrl.algorithm import Batch
from qrl.algorithms import dqn


@dataclass(frozen=True)
class Args(dqn.Args):
    atoms: int = 51
    """Atoms of the categorical return distribution on [v_min, v_max]."""
    v_min: float = -10.0
    v_max: float = 10.0


class CategoricalQNetwork(dqn.QNetwork):
    """The dueling head gives each action's logits over the atoms; Q is the distribution's mean."""

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, args: Args):
        super().__init__(obs_shape, num_actions, args, outputs=args.atoms)
        self.register_buffer("support", torch.linspace(args.v_min, args.v_max, args.atoms))

    def distribution(self, obs: torch.Tensor) -> torch.Tensor:
        """[B, *obs_shape] -> the logits [B, num_actions, atoms]."""
        return self.head(self.features(obs))

    def q_from(self, logits: torch.Tensor) -> torch.Tensor:
        return (torch.softmax(logits, dim=2) * self.support).sum(2)

    def numpy_q_from(self, logits: np.ndarray) -> np.ndarray:
        p = np.exp(logits - logits.max(axis=2, keepdims=True))
        return (p * self.support.numpy()).sum(2) / p.sum(2)


def make_policy(obs_space: gym.Space, action_space: gym.Space, args: Args) -> CategoricalQNetwork:
    if args.atoms < 2 or not args.v_min < args.v_max:
        raise ValueError(f"c51 needs algo.atoms >= 2 and algo.v_min below algo.v_max, got {args.atoms} atoms "
                         f"on [{args.v_min}, {args.v_max}]")
    return dqn.discrete_policy(CategoricalQNetwork, obs_space, action_space, args)


class Learner(dqn.Learner):
    make_policy = staticmethod(make_policy)

    def loss(self, t: Batch):
        """Cross-entropy between the projected target distribution and the predicted one; the
        cross-entropy also serves as the priority (as Rainbow's KL)."""
        n = len(t["obs"])
        rows = torch.arange(n, device=self.device)
        support = self.net.support
        double = self.args.double
        logits = self.net.distribution(torch.cat([t["obs"], t["next_obs"]]) if double else t["obs"])
        log_p = F.log_softmax(logits[rows, t["action"]], dim=1)  # [B, atoms]
        with torch.no_grad():
            target_probs = torch.softmax(self.target.distribution(t["next_obs"]), dim=2)  # [B, A, atoms]
            chooser = torch.softmax(logits[n:], dim=2) if double else target_probs
            best_next = (chooser * support).sum(2).argmax(dim=1)
            projected = ops.categorical_projection(t["return"], t["discount"], target_probs[rows, best_next], support)
        per_item = -(projected * log_p).sum(1)
        return per_item, (log_p.exp() * support).sum(1), per_item


AGENT = dataclasses.replace(dqn.AGENT, name="c51", Args=Args, make_policy=make_policy, Learner=Learner)
