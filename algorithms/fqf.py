"""FQF: IQN (iqn.py) whose quantile fractions are not drawn but proposed per state: a fraction
proposal layer on the torso's features gives iqn_n fractions 0 < tau_1 < ... < 1 (a softmax,
summed up), the quantile network is evaluated at their midpoints, and Q is the mean of that
staircase. The quantile network learns by the quantile Huber loss toward the target's quantiles at
the same fractions; the proposal layer (its own RMSprop, at `algo.fraction_lr`) by the
1-Wasserstein error's gradient with respect to the fractions. Double, dueling, n-step and Ape-X
exploration as in dqn; actors run the network in torch.
Reference: Yang et al. 2019 (fully parameterized quantile function).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import gymnasium as gym
import torch
import torch.nn.functional as F
from torch import nn

from qrl import ops
from qrl.algorithm import Batch
from qrl.algorithms import dqn, iqn


@dataclass(frozen=True)
class Args(dqn.Args):
    iqn_n: int = 32
    """Fractions proposed per state."""
    iqn_embedding: int = 64
    """Cosines in the fraction embedding."""
    kappa: float = 1.0
    """The quantile Huber loss's threshold."""
    fraction_lr: float = 2.5e-9
    """Learning rate of the fraction proposal layer (RMSprop, as in the paper)."""


class FractionProposalNetwork(iqn.QuantileFunction):
    """IQN's network with a fraction proposal layer on the torso's features (detached: it does
    not shape them). Small initial weights, as in the authors' code: proposals start near-uniform
    instead of following random logits that grow with the features (peaked proposals overestimate Q)."""

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, args: Args):
        super().__init__(obs_shape, num_actions, args)
        self.fractions = nn.Linear(self.embedding.linear.out_features, args.iqn_n)
        nn.init.xavier_uniform_(self.fractions.weight, gain=0.01)
        nn.init.zeros_(self.fractions.bias)

    def propose(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The fractions 0 = tau_0 < ... < tau_N = 1 [B, N + 1] proposed for features h, and the
        midpoints tau_hat [B, N] the quantiles are taken at."""
        taus = F.pad(torch.softmax(self.fractions(h.detach()), dim=1).cumsum(dim=1), (1, 0))
        taus = torch.cat([taus[:, :-1], torch.ones_like(taus[:, -1:])], dim=1)  # exactly 1, not 1 - rounding
        return taus, (taus[:, :-1] + taus[:, 1:]) / 2

    def staircase_mean(self, h: torch.Tensor) -> torch.Tensor:
        """Q [B, num_actions], the mean of the quantile staircase on the proposed fractions."""
        taus, tau_hats = self.propose(h)
        return (self.quantiles_at(h, tau_hats) * (taus[:, 1:] - taus[:, :-1]).unsqueeze(1)).sum(2)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.staircase_mean(self.features(obs))

    def _compile_numpy(self):
        return None  # no numpy twin for the proposal layer: actors run it in torch


def make_policy(obs_space: gym.Space, action_space: gym.Space, args: Args) -> FractionProposalNetwork:
    return dqn.discrete_policy(FractionProposalNetwork, obs_space, action_space, args)


class Learner(dqn.Learner):
    """The quantile network and the proposal layer learn by their own losses, at their own rates."""

    checkpointed = (*dqn.Learner.checkpointed, "fraction_optimizer")
    make_policy = staticmethod(make_policy)

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, args: Args, device: torch.device):
        super().__init__(obs_space, action_space, args, device)
        self.fraction_optimizer = torch.optim.RMSprop(self.net.fractions.parameters(), lr=args.fraction_lr,
                                                      alpha=0.95, eps=1e-5)

    def trained_parameters(self) -> list[torch.Tensor]:
        proposal = set(self.net.fractions.parameters())
        return [p for p in self.net.parameters() if p not in proposal]

    def loss(self, t: Batch):
        """The quantile Huber loss at the fractions proposed for each item's state (the target's
        quantiles at the same fractions, for the next action of the staircase means), and one step
        of the fraction proposal layer down the 1-Wasserstein error's gradient with respect to its
        fractions (ops.fraction_gradient; Yang et al. 2019)."""
        n = len(t["obs"])
        rows = torch.arange(n, device=self.device)
        h = self.net.features(torch.cat([t["obs"], t["next_obs"]]) if self.args.double else t["obs"])
        taus, tau_hats = self.net.propose(h[:n])
        taken = self.net.quantiles_at(h[:n], tau_hats.detach())[rows, t["action"]]  # [B, N]
        with torch.no_grad():
            target_h = self.target.features(t["next_obs"])
            chooser = self.net.staircase_mean(h[n:]) if self.args.double else self.target.staircase_mean(target_h)
            next_target = self.target.quantiles_at(target_h, tau_hats)[rows, chooser.argmax(1)]  # [B, N]
            target = t["return"].unsqueeze(1) + t["discount"].unsqueeze(1) * next_target
            at_taus = self.net.quantiles_at(h[:n], taus[:, 1:-1])[rows, t["action"]]  # F(tau_1..tau_(N-1))
            w1_gradient = ops.fraction_gradient(at_taus, taken.detach())
        fraction_loss = t.weighted_mean((w1_gradient * taus[:, 1:-1]).sum(1))
        self.fraction_optimizer.zero_grad(set_to_none=True)
        fraction_loss.backward()
        self.fraction_optimizer.step()
        per_item = ops.quantile_huber_loss(taken, target, self.args.kappa, tau_hats.detach())
        return per_item, taken.mean(1), per_item


AGENT = dataclasses.replace(dqn.AGENT, name="fqf", Args=Args, make_policy=make_policy, Learner=Learner)
