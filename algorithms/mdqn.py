"""Munchausen DQN: the reward is augmented with the scaled, clipped log-probability of the taken
action under the softmax policy of the target Q values, alpha * clip(tau log pi(a|s), l0, 0), and
the target bootstraps from that policy's soft value instead of a max. Dueling, n-step (the bonus is
the first step's) and Ape-X exploration as in dqn; no double DQN (the softmax replaces the argmax).
The quantile variants take the same target with `algo.munchausen` (M-IQN in iqn.py).
Reference: Vieillard et al. 2020 (Munchausen reinforcement learning).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import torch
import torch.nn.functional as F

from qrl.algorithm import Batch
from qrl.algorithms import dqn


@dataclass(frozen=True)
class MunchausenOptions:
    munchausen_alpha: float = 0.9
    """Scale of the log-policy bonus."""
    entropy_tau: float = 0.03
    """Temperature of the softmax policy."""
    log_policy_clip: float = -1.0
    """Lower clip of the scaled log-policy bonus."""


@dataclass(frozen=True)
class Args(MunchausenOptions, dqn.Args):
    double: bool = False


def check_not_double(args: Any) -> None:
    if args.double:
        raise ValueError("Munchausen bootstraps from a softmax policy, not double DQN's argmax: set algo.double=false")


def soft_target(args: MunchausenOptions, t: Batch, q_now: torch.Tensor, q_next: torch.Tensor,
                next_values: torch.Tensor) -> torch.Tensor:
    """Munchausen's target from the target net's Q values at obs and at next_obs [B, A], for
    next_values [B, A] (Q) or [B, A, N] (quantiles): return + alpha * clip(tau log pi(a|obs), l0, 0)
    + discount * sum_a' pi(a'|next) (next_values(a') - tau log pi(a'|next)), pi = softmax(Q / tau).
    Vieillard et al. 2020, equation 2 (M-DQN) and its quantile form (M-IQN). With n-step items the
    bonus is the first step's: the later steps' observations are not in the item."""
    tau = args.entropy_tau
    tau_log_pi = tau * F.log_softmax(q_now / tau, dim=1).gather(1, t["action"].unsqueeze(1)).squeeze(1)
    bonus = args.munchausen_alpha * tau_log_pi.clamp(args.log_policy_clip, 0.0)
    log_pi_next = F.log_softmax(q_next / tau, dim=1)
    if next_values.dim() == 3:
        log_pi_next = log_pi_next.unsqueeze(2)
    soft_value = (log_pi_next.exp() * (next_values - tau * log_pi_next)).sum(1)  # [B] or [B, N]
    first = t["return"] + bonus
    if soft_value.dim() == 2:
        return first.unsqueeze(1) + t["discount"].unsqueeze(1) * soft_value
    return first + t["discount"] * soft_value


def make_policy(obs_space: gym.Space, action_space: gym.Space, args: Args) -> dqn.QNetwork:
    check_not_double(args)
    return dqn.make_policy(obs_space, action_space, args)


class Learner(dqn.Learner):
    make_policy = staticmethod(make_policy)

    def loss(self, t: Batch):
        """dqn's TD loss toward Munchausen's target (the target net at obs gives the bonus)."""
        n = len(t["obs"])
        q = self.net(t["obs"]).gather(1, t["action"].unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            q_target = self.target(torch.cat([t["obs"], t["next_obs"]]))
            td_target = soft_target(self.args, t, q_target[:n], q_target[n:], q_target[n:])
        return self.td_loss(q, td_target), q, td_target - q


AGENT = dataclasses.replace(dqn.AGENT, name="mdqn", Args=Args, make_policy=make_policy, Learner=Learner)
