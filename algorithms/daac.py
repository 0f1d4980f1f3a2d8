"""Decoupled advantage actor-critic (DAAC): PPO with the policy and the value function in separate
networks, trained in separate phases, and the policy network predicting advantages instead.

Sharing features between the policy and the value function makes the policy's representation
fit the value, which depends on details of each level (its length, its layout) that the policy
should ignore; a policy network that predicts the advantage learns what matters for the action.

Policy phase, every iteration, `epochs` epochs: PPO's clipped objective and entropy bonus plus
    adv_coef * (A_theta(s, a) - A_gae)^2
where A_theta is a head on the policy network's last hidden features and the action (one-hot for
discrete actions), and A_gae the minibatch's normalized GAE advantages. No value loss here.

Value phase, every `value_every` iterations, `value_epochs` epochs over the steps of those
iterations: the value network (its own image torso on pixels) alone, on PPO's (optionally
clipped) value loss toward the GAE returns, with an optimizer of its own.

The LSTM variant is not supported. References: Raileanu & Fergus 2021 (Decoupling value and
policy for generalization in RL), its rraileanu/idaac code (E_pi 1, E_V 9, alpha_a 0.25).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qrl import networks, ops
from qrl.algorithm import Update
from qrl.algorithms import ppo


@dataclass(frozen=True)
class Args(ppo.Args):
    epochs: int = 1
    """Policy-phase epochs per iteration (E_pi)."""
    value_epochs: int = 9
    """Epochs of each value phase (E_V)."""
    value_every: int = 1
    """Iterations between value phases (N_pi); a phase trains on the steps of all of them."""
    adv_coef: float = 0.25
    """Weight of the advantage head's loss in the policy phase (alpha_a)."""


class DecoupledActorCritic(ppo.ActorCritic):
    """PPO's policy network plus an advantage head; the value network with an encoder of its own."""

    def __init__(self, obs_shape: tuple[int, ...], action_space: gym.Space, args: Args):
        super().__init__(obs_shape, action_space, args)
        self.value_encoder = networks.Encoder(obs_shape, args.hidden, args.torso)
        if self.image and args.ortho_init:
            networks.orthogonal_init(self.value_encoder, np.sqrt(2))
        self.action_width = int(np.prod(action_space.shape)) if self.continuous else int(action_space.n)
        self.advantage = nn.Sequential(nn.Linear(args.hidden + self.action_width, args.hidden), nn.ReLU(),
                                       nn.Linear(args.hidden, 1))

    def values(self, obs: torch.Tensor) -> torch.Tensor:
        return self.value(self.value_encoder(obs)).squeeze(-1)

    def value_path(self) -> tuple[nn.Module, ...]:
        return self.value_encoder, self.value

    def policy_and_advantage(self, obs: torch.Tensor, actions: torch.Tensor
                             ) -> tuple[torch.distributions.Distribution, torch.Tensor]:
        """The policy's distribution at obs and its predicted advantage of `actions` there."""
        latent, out = self.features(obs)
        action_input = actions.float() if self.continuous else F.one_hot(actions.long(), self.action_width).float()
        advantage = self.advantage(torch.cat([latent, action_input], -1)).squeeze(-1)
        return self.distribution_of(latent, out), advantage


def make_policy(obs_space: gym.Space, action_space: gym.Space, args: Args) -> DecoupledActorCritic:
    if args.lstm:
        raise ValueError("daac: the LSTM variant is not supported (set algo.lstm=0)")
    ppo.check_action_space(action_space)
    return ppo.normalized_values(DecoupledActorCritic(networks.obs_shape(obs_space), action_space, args), args)


class Learner(ppo.Learner):
    checkpointed = ("net", "optimizer", "value_optimizer")
    make_net = staticmethod(make_policy)

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, args: Args, device: torch.device):
        super().__init__(obs_space, action_space, args, device)
        self.value_optimizer = ops.adam(self.value_parameters(), lr=args.lr, eps=1e-5)
        self.kept: list[dict[str, torch.Tensor]] = []  # each iteration's obs, values and returns

    def value_parameters(self) -> list[torch.Tensor]:
        return [*self.net.value_encoder.parameters(), *self.net.value.parameters()]

    def trained_parameters(self) -> list[torch.Tensor]:
        """The policy phase's: everything but the value network."""
        value_net = {id(p) for p in self.value_parameters()}
        return [p for p in self.net.parameters() if id(p) not in value_net]

    def step_targets(self, t):
        steps = super().step_targets(t)
        self.kept.append({k: steps[k] for k in ("obs", "value", "return")})
        return steps

    def loss(self, t, rows, mb, clip):
        a = self.args
        dist, predicted = self.net.policy_and_advantage(mb["obs"], mb["action"])
        logp, entropy = self.net.log_prob(dist, mb["action"]), self.net.entropy(dist).mean()
        ratio = torch.exp(logp - mb["logp"])
        adv = self.normalized(mb["advantage"])
        policy_loss = ops.clipped_surrogate(ratio, adv, clip)
        advantage_loss = (predicted - adv).pow(2).mean()
        loss = policy_loss + a.adv_coef * advantage_loss - a.ent_coef * entropy
        return loss, {"policy_loss": policy_loss.detach(), "advantage_loss": advantage_loss.detach(),
                      "entropy": entropy.detach(), "clip_fraction": ((ratio.detach() - 1).abs() > clip).float().mean()}

    def update(self, batch) -> Update:
        result = super().update(batch)
        if self.updates % self.args.value_every == 0:
            result.metrics.update(self.value_phase())
        return result

    def value_phase(self) -> dict[str, float]:
        a = self.args
        steps = {k: torch.cat([kept[k] for kept in self.kept]) for k in self.kept[0]}
        self.kept.clear()
        terms = []
        for _ in range(a.value_epochs):
            for rows in ppo.shuffled_minibatches(len(steps["obs"]), a.minibatches, self.device):
                values = self.net.values(steps["obs"][rows])
                value_loss = ops.value_loss(values, steps["value"][rows], steps["return"][rows], a.clip_value)
                self.optimizer_step(value_loss, a.max_grad_norm, self.value_optimizer, self.value_parameters())
                terms.append({"value_loss": value_loss.detach()})
        return ppo.mean_terms(terms)


AGENT = dataclasses.replace(ppo.AGENT, name="daac", Args=Args, make_policy=make_policy, Learner=Learner)
