"""IMPALA: an actor-critic learning from actors' unrolls that were made by older weights,
corrected with V-trace (truncated importance sampling of the target over the behaviour policy).

Same actors and items as PPO (algorithms/ppo.py: one unroll per environment with the behaviour
log-probabilities, fed through the broker's FIFO queue), but one gradient step per batch and a
larger tolerated policy lag: V-trace, not near-on-policy data, keeps the update sound.
Reference: Espeholt et al. 2018.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from qrl import ops
from qrl.algorithm import Batch, Update
from qrl.algorithms import ppo


@dataclass(frozen=True)
class Args(ppo.Args):
    lr: float = 1e-3
    gamma: float = 0.99
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 40.0
    """Clip the gradient's global norm to this (0: no clipping)."""
    batch_size: int = 4
    """Unrolls per update (one gradient step each)."""
    queue_capacity: int = 32
    max_policy_lag: int = 20
    """V-trace corrects for lag; unrolls even older than this are dropped."""
    rho_bar: float = 1.0
    """Truncation of the importance weights in the value targets (rho-bar)."""
    c_bar: float = 1.0
    """Truncation of the trace-cutting coefficients (c-bar)."""


class Learner(ppo.Learner):
    """PPO's network (feed-forward or LSTM), optimizer and checkpointing; one V-trace actor-critic step
    per batch."""

    def update(self, batch: Batch) -> Update:
        a = self.args
        t = batch.fields
        N, T = t["reward"].shape
        dist, values, next_values = self.evaluate(t)
        logp = self.net.log_prob(dist, t["action"].reshape((N * T,) + t["action"].shape[2:])).reshape(N, T)
        values, next_values = values.reshape(N, T), next_values.detach().reshape(N, T)
        ends = t["terminated"] | t["truncated"]
        # V-trace, time-major [T, N]; log rho = log pi - log mu of the actions taken.
        vs, pg_adv = ops.vtrace((logp.detach() - t["logp"]).T, t["reward"].T, values.detach().T, next_values.T,
                                t["terminated"].T, ends.T, a.gamma, a.rho_bar, a.c_bar)
        policy_loss = -(logp * pg_adv.T).mean()
        value_loss = 0.5 * ((vs.T - values) ** 2).mean()
        entropy = dist.entropy()
        entropy = (entropy.sum(-1) if self.net.continuous else entropy).mean()
        loss = policy_loss + a.vf_coef * value_loss - a.ent_coef * entropy
        frac = max(0.0, 1.0 - self.updates / a.anneal_updates) if a.anneal_updates else 1.0
        for group in self.optimizer.param_groups:
            group["lr"] = a.lr * frac
        self.minimize(loss, a.max_grad_norm)
        rho = torch.exp(logp.detach() - t["logp"])
        return Update({"policy_loss": policy_loss.item(), "value_loss": value_loss.item(), "entropy": entropy.item(),
                "rho_mean": rho.mean().item()})


AGENT = dataclasses.replace(ppo.AGENT, name="impala", Args=Args, Learner=Learner)
