"""IQN: the network maps an observation and any quantile fraction tau to that quantile of each
action's return (the torso's features times a cosine embedding of tau, then the last hidden layer
and the head). The learner draws iqn_n fractions per item for the prediction and iqn_n_target for
the n-step target and minimizes QR-DQN's quantile Huber loss (qrdqn.py's learner); actors act on
the mean over iqn_k evenly spaced fractions (risk-neutral; iqn_cvar < 1 acts on the lower tail).
With `algo.munchausen` it is M-IQN. Double, dueling, n-step, noisy nets and Ape-X exploration as
in dqn.
References: Dabney et al. 2018 (implicit quantile networks); Vieillard et al. 2020 (M-IQN).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from qrl import layers, ops
from qrl.algorithms import dqn, mdqn, qrdqn
from qrl.numpy_mlp import compile_mlp, numpy_twin


@dataclass(frozen=True)
class Args(mdqn.MunchausenOptions, dqn.Args):
    iqn_n: int = 32
    """Quantile fractions sampled per item for the online net."""
    iqn_n_target: int = 32
    """Fractions sampled per item for the target."""
    iqn_k: int = 32
    """Fractions Q is averaged over when acting (evenly spaced midpoints, so acting is deterministic)."""
    iqn_embedding: int = 64
    """Cosines in the fraction embedding."""
    iqn_cvar: float = 1.0
    """Act on fractions in (0, iqn_cvar]: 1 is risk-neutral, below 1 risk-averse (CVaR)."""
    kappa: float = 1.0
    """The quantile Huber loss's threshold."""
    munchausen: bool = False
    """M-IQN: Munchausen's target (mdqn.py) on the quantiles; needs algo.double=false."""


class QuantileFunction(dqn.QNetwork):
    """dqn's network whose last hidden layer comes after a cosine embedding of the fraction: the
    head gives one quantile per action for each (observation, fraction) pair (FQF's too)."""

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, args: Args):
        super().__init__(obs_shape, num_actions, args)
        *first, last, relu = self.torso
        self.torso, self.mix = torch.nn.Sequential(*first), torch.nn.Sequential(last, relu)
        self.embedding = layers.CosineEmbedding(args.iqn_embedding, last.in_features)

    def distribution(self, obs: torch.Tensor, taus: torch.Tensor) -> torch.Tensor:
        """[B, *obs_shape], fractions [B, N] -> the quantiles [B, num_actions, N] at those fractions."""
        return self.quantiles_at(self.features(obs), taus)

    def quantiles_at(self, h: torch.Tensor, taus: torch.Tensor) -> torch.Tensor:
        """The quantiles [B, num_actions, N] at fractions taus [B, N] from the torso's features h."""
        N = taus.shape[1]
        mixed = self.mix((h.unsqueeze(1) * self.embedding(taus)).flatten(0, 1))  # [B * N, hidden]
        return self.head(mixed).reshape(-1, N, self.num_actions).transpose(1, 2)


class ImplicitQuantileNetwork(QuantileFunction):
    """Q is the mean of the quantiles at iqn_k evenly spaced fractions of (0, iqn_cvar]."""

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, args: Args):
        super().__init__(obs_shape, num_actions, args)
        self.register_buffer("acting_taus", args.iqn_cvar * ops.midpoint_fractions(args.iqn_k), persistent=False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.distribution(obs, self.acting_taus.expand(obs.shape[0], -1)).mean(2)

    def numpy_q(self, h: np.ndarray, advantage, value) -> np.ndarray:
        """The torso's features times the embedding of the acting fractions, through the last
        hidden layer and the head, averaged over the fractions."""
        embed, mix, cosines = numpy_twin(self.embedding, lambda: (
            compile_mlp(self.embedding.linear), compile_mlp(self.mix),
            np.cos(self.acting_taus.numpy()[:, None] * self.embedding.frequencies.numpy()[None])))  # fixed
        phi = np.maximum(embed(cosines), 0)  # [K, width]: recomputed each call, the weights change
        mixed = mix((h[:, None, :] * phi[None]).reshape(-1, h.shape[1]))  # [B * K, hidden]
        q = super().numpy_q(mixed, advantage, value)  # [B * K, num_actions]
        return q.reshape(len(h), -1, self.num_actions).mean(axis=1)


def make_policy(obs_space: gym.Space, action_space: gym.Space, args: Args) -> ImplicitQuantileNetwork:
    if not 0 < args.iqn_cvar <= 1:
        raise ValueError(f"algo.iqn_cvar must be in (0, 1], got {args.iqn_cvar}")
    qrdqn.check_munchausen(args)
    return dqn.discrete_policy(ImplicitQuantileNetwork, obs_space, action_space, args)


class Learner(qrdqn.Learner):
    """QR-DQN's loss at fractions drawn uniformly, anew for every item, online and target."""

    make_policy = staticmethod(make_policy)

    def taus(self, rows: int, target: bool) -> torch.Tensor:
        return torch.rand(rows, self.args.iqn_n_target if target else self.args.iqn_n, device=self.device)


AGENT = dataclasses.replace(dqn.AGENT, name="iqn", Args=Args, make_policy=make_policy, Learner=Learner)
