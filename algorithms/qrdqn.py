"""QR-DQN: the network gives N quantiles of each action's return at the fixed fractions
(2i + 1) / 2N, trained toward the n-step target quantiles with the quantile Huber loss; actors act
on their mean. Double, dueling, n-step, noisy nets and Ape-X exploration as in dqn; with
`algo.munchausen` the target is Munchausen's (mdqn.py) in its quantile form.
This file's learner is also IQN's (iqn.py), which draws its fractions instead.
Reference: Dabney et al. 2018 (distributional RL with quantile regression).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import torch

from qrl import ops
from qrl.algorithm import Batch
from qrl.algorithms import dqn, mdqn


@dataclass(frozen=True)
class Args(mdqn.MunchausenOptions, dqn.Args):
    quantiles: int = 50
    """Quantiles of the return distribution, at fractions (2i + 1) / 2N."""
    kappa: float = 1.0
    """The quantile Huber loss's threshold."""
    munchausen: bool = False
    """Munchausen's target (mdqn.py) on the quantiles; needs algo.double=false."""


class QuantileNetwork(dqn.QNetwork):
    """The dueling head gives each action's quantiles; Q is their mean."""

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, args: Args):
        super().__init__(obs_shape, num_actions, args, outputs=args.quantiles)

    def distribution(self, obs: torch.Tensor, taus: None = None) -> torch.Tensor:
        """[B, *obs_shape] -> the quantiles [B, num_actions, N] at the fixed fractions."""
        return self.head(self.features(obs))

    def q_from(self, quantiles):
        return quantiles.mean(2)

    numpy_q_from = q_from


def check_munchausen(args: Any) -> None:
    if args.munchausen:
        mdqn.check_not_double(args)


def make_policy(obs_space: gym.Space, action_space: gym.Space, args: Args) -> QuantileNetwork:
    check_munchausen(args)
    return dqn.discrete_policy(QuantileNetwork, obs_space, action_space, args)


class Learner(dqn.Learner):
    """The quantile Huber loss between the taken action's quantiles and the target quantiles
    return + discount * theta_target(next, a*) (or Munchausen's target); the loss also serves as
    the priority. Subclasses draw fractions (`taus`)."""

    make_policy = staticmethod(make_policy)

    def taus(self, rows: int, target: bool) -> torch.Tensor | None:
        """The fractions [rows, count] the quantiles are taken at; None: the network's fixed ones."""
        return None

    def loss(self, t: Batch):
        a = self.args
        n = len(t["obs"])
        rows = torch.arange(n, device=self.device)
        inputs = torch.cat([t["obs"], t["next_obs"]]) if a.double else t["obs"]
        taus = self.taus(len(inputs), target=False)
        out = self.net.distribution(inputs, taus)  # [n or 2n, A, N]
        taken = out[rows, t["action"]]  # [B, N]
        with torch.no_grad():
            if a.munchausen:
                both = self.target.distribution(torch.cat([t["obs"], t["next_obs"]]), self.taus(2 * n, target=True))
                target = mdqn.soft_target(a, t, both[:n].mean(2), both[n:].mean(2), both[n:])
            else:
                next_target = self.target.distribution(t["next_obs"], self.taus(n, target=True))  # [B, A, N']
                best_next = (out[n:] if a.double else next_target).mean(2).argmax(dim=1)
                target = t["return"].unsqueeze(1) + t["discount"].unsqueeze(1) * next_target[rows, best_next]
        per_item = ops.quantile_huber_loss(taken, target, a.kappa, None if taus is None else taus[:n])
        return per_item, taken.mean(1), per_item


AGENT = dataclasses.replace(dqn.AGENT, name="qrdqn", Args=Args, make_policy=make_policy, Learner=Learner)
