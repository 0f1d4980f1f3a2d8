"""Phasic policy gradient (PPG): PPO's policy phase, and every `policy_iterations` updates an
auxiliary phase that distils the value function into the policy network.

Policy phase: PPO iterations as ppo.py runs them (clipped objective, value loss, entropy), the
policy and value networks separate (as PPO's are on vector observations; on images they share
PPO's torso). The learner keeps each iteration's observations and value targets (the GAE
returns).

Auxiliary phase, on everything kept since the last one, for `aux_epochs` epochs:
    L_joint = 0.5 (V_aux(s) - V_targ)^2 + clone_coef * KL(pi_old(.|s) || pi(.|s))
    L_value = 0.5 (V(s) - V_targ)^2
where V_aux is a head on the policy network's last hidden features, so the policy's features
learn from the value targets, and pi_old is the policy as it was when the phase began (the KL
keeps the policy from moving while its features change). Then the kept data is dropped.

The aux head travels with the weights but actors never use it. The LSTM variant is not
supported. References: Cobbe et al. 2021 (Phasic policy gradient), its openai/phasic-policy-gradient
code (one Adam for both phases).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import gymnasium as gym
import torch
from torch import nn

from qrl import networks
from qrl.algorithm import Update
from qrl.algorithms import ppo


@dataclass(frozen=True)
class Args(ppo.Args):
    epochs: int = 1
    """Policy-phase epochs per iteration (the paper's E_pi = 1: the auxiliary phase does the rest)."""
    policy_iterations: int = 32
    """Policy-phase iterations (learner updates) between auxiliary phases (N_pi)."""
    aux_epochs: int = 6
    """Epochs of each auxiliary phase over the data kept since the last one (E_aux)."""
    aux_minibatches: int = 16
    """Minibatches per auxiliary epoch, over all the kept data."""
    clone_coef: float = 1.0
    """Weight of the KL that holds the policy still during the auxiliary phase (beta_clone)."""


class PhasicActorCritic(ppo.ActorCritic):
    """PPO's network plus the auxiliary value head on the policy's last hidden features."""

    def __init__(self, obs_shape: tuple[int, ...], action_space: gym.Space, args: Args):
        super().__init__(obs_shape, action_space, args)
        self.aux_value = nn.Linear(args.hidden, 1)

    def aux_terms(self, obs: torch.Tensor) -> tuple[torch.distributions.Distribution, torch.Tensor, torch.Tensor]:
        """(policy distribution, aux value, value) at `obs`, from one pass of the encoder."""
        x = self.encoder(obs)
        latent, out = self.head(x)
        return self.distribution_of(latent, out), self.aux_value(latent).squeeze(-1), self.value(x).squeeze(-1)


def make_policy(obs_space: gym.Space, action_space: gym.Space, args: Args) -> PhasicActorCritic:
    if args.lstm:
        raise ValueError("ppg: the LSTM variant is not supported (set algo.lstm=0)")
    ppo.check_action_space(action_space)
    return ppo.normalized_values(PhasicActorCritic(networks.obs_shape(obs_space), action_space, args), args)


def rows_of(dist: torch.distributions.Distribution, rows: torch.Tensor) -> torch.distributions.Distribution:
    """The distribution of some rows of a batch of categorical or Gaussian distributions."""
    if isinstance(dist, torch.distributions.Categorical):
        return torch.distributions.Categorical(logits=dist.logits[rows])
    return torch.distributions.Normal(dist.loc[rows], dist.scale[rows])


class Learner(ppo.Learner):
    make_net = staticmethod(make_policy)

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, args: Args, device: torch.device):
        super().__init__(obs_space, action_space, args, device)
        self.kept: list[tuple[torch.Tensor, torch.Tensor]] = []  # (observations, value targets) per iteration

    def step_targets(self, t):
        steps = super().step_targets(t)
        self.kept.append((steps["obs"], steps["return"]))
        return steps

    def update(self, batch) -> Update:
        result = super().update(batch)
        if len(self.kept) >= self.args.policy_iterations:
            result.metrics.update(self.auxiliary_phase())
        return result

    def auxiliary_phase(self) -> dict[str, float]:
        a = self.args
        obs = torch.cat([o for o, _ in self.kept])
        targets = torch.cat([r for _, r in self.kept])
        self.kept.clear()
        with torch.no_grad():
            old = self.net.distribution(obs)
        terms = []
        for _ in range(a.aux_epochs):
            for rows in ppo.shuffled_minibatches(len(obs), a.aux_minibatches, self.device):
                dist, aux_values, values = self.net.aux_terms(obs[rows])
                kl = torch.distributions.kl_divergence(rows_of(old, rows), dist)
                kl = (kl.sum(-1) if self.net.continuous else kl).mean()
                aux_loss = 0.5 * (aux_values - targets[rows]).pow(2).mean()
                value_loss = 0.5 * (values - targets[rows]).pow(2).mean()
                self.optimizer_step(aux_loss + a.clone_coef * kl + value_loss, a.max_grad_norm)
                terms.append({"aux_value_loss": aux_loss.detach(), "aux_kl": kl.detach(),
                              "aux_phase_value_loss": value_loss.detach()})
        return ppo.mean_terms(terms)


AGENT = dataclasses.replace(ppo.AGENT, name="ppg", Args=Args, make_policy=make_policy, Learner=Learner)
