"""Reactor: an off-policy actor-critic on prioritized sequences from replay, with a distributional
Retrace critic and the beta-leave-one-out policy gradient. Discrete actions.

Actors sample from the policy and store, per environment, unrolls of `run.segment_length` steps with
the behaviour policy's log-probability of each action (mu). The broker keeps them in a prioritized
table; the learner samples sequences and, for every step t of each:

critic, distributional Retrace: the return distribution of (x_t, a_t) is moved toward
    sum_{s >= t} w_ts [ Phi(R_ts + gamma^(s-t+1) Z(x'_s, pi)) - 1{s > t} Phi(R_t(s-1) + gamma^(s-t) Z(x_s, a_s)) ]
  w_ts = prod_{i=t+1..s} c_i, c_i = lambda min(1, pi(a_i|x_i) / mu(a_i|x_i)), R_ts the discounted
  rewards r_t..r_s, Z(x', pi) the mixture over pi of the target network's distributions, Phi the
  projection onto the atoms (C51's). The sum stops at an episode's end. Its mean is the Retrace
  target (qrl/ops.py); it is a signed mixture whose negative mass is clipped before the
  cross-entropy (the paper's treatment of the same problem is not reproduced here).

actor, beta-LOO: with R_t the mean of that target and Q the critic's means (no gradient),
    G = beta (R_t - Q(x_t, a_t)) grad pi(a_t|x_t) + sum_a Q(x_t, a) grad pi(a|x_t)
  beta = min(loo_beta_max, 1 / mu(a_t|x_t)): 1/mu makes the leave-one-out estimate unbiased, a
  smaller cap trades bias for variance; plus an entropy bonus.

prioritized sequence replay: a sequence's priority is eta max + (1 - eta) mean of its steps'
|R_t - Q(x_t, a_t)| (R2D2's mixture, where the paper's Reactor assigns priorities to sequences by
their temporal neighbours), with importance weights annealed as in Ape-X.

The network is feed-forward (the paper's has an LSTM): separate MLPs for the policy and the
distributional critic on a shared encoder that only the critic trains; the critic targets come from
a Polyak-averaged copy. The β-LOO terms are divided by the batch's spread of Q over actions (as PPO
normalizes advantages), so the policy's step and the entropy bonus keep their balance at any return
scale.
References: Gruslys et al. 2018 (The Reactor); Munos et al. 2016 (Retrace); Bellemare et al. 2017 (C51).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qrl import networks, ops
from qrl.algorithm import ActorCore, Agent, Batch, LearnerBase, Update, replay_table
from qrl.algorithms import ppo
from qrl.numpy_mlp import sample_categorical


@dataclass(frozen=True)
class Args:
    hidden: int = 128
    lr: float = 5e-4
    gamma: float = 0.99
    retrace_lambda: float = 1.0
    atoms: int = 51
    v_min: float = -10.0
    v_max: float = 10.0
    loo_beta_max: float = 1.0
    """Cap of the leave-one-out weight beta = min(cap, 1 / mu(a)); at 1 the estimate is biased but steady."""
    ent_coef: float = 0.01
    scale_policy_gradient: bool = True
    """Divide the β-LOO terms by the batch's mean |Q(x, a) - mean_a Q(x, a)| (all actions alike), as
    PPO normalizes its advantages: the policy's step then does not grow with the return scale, and
    ent_coef weighs the same against it on any task (the paper's Atari returns were clipped)."""
    batch_size: int = 16
    """Sequences (one environment's unroll of run.segment_length steps each) per update."""
    buffer_size: int = 5_000
    """Sequences the table holds."""
    learning_starts: int = 32
    """Sequences stored before the first update."""
    samples_per_insert: float = 4.0
    tau: float = 0.01
    """Polyak rate of the target network."""
    priority_exponent: float = 0.6
    importance_exponent: float = 0.4
    importance_anneal_updates: int = 20_000
    priority_eta: float = 0.9
    max_grad_norm: float = 40.0
    spectral_norm: bool = False
    """Spectral normalisation of the value function's last hidden layer (qrl/networks.py)."""
    torso: str = "auto"
    """Image observations: the convolutional torso (qrl/networks.py)."""


def table_config(args: Args):
    return replay_table(args, args.samples_per_insert, sampler="prioritized",
                        priority_exponent=args.priority_exponent)


def sample_options(args: Args, updates: int) -> dict[str, Any]:
    return {"beta": ops.linear_schedule(args.importance_exponent, 1.0, args.importance_anneal_updates, updates)}


class ReactorNet(nn.Module):
    """An encoder (on images a convolutional torso; on vectors none), then two MLPs of two ReLU
    layers: the critic's, with a head of return distributions (one per action), and the policy's,
    with a head of logits. The policy reads the encoder's features without training it (as SAC-AE
    and DrQ do): its β-LOO gradient scales with Q (returns near 100 on CartPole) and, through shared
    layers, moved the critic's features about (a shared trunk reached 475 in 2 of 3 seeds)."""

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, args: Args):
        super().__init__()
        self.encoder = networks.Encoder(obs_shape, args.hidden, args.torso)
        width = self.encoder.out_features
        self.trunk = nn.Sequential(nn.Linear(width, args.hidden), nn.ReLU(), nn.Linear(args.hidden, args.hidden),
                                   nn.ReLU())
        self.q = nn.Linear(args.hidden, num_actions * args.atoms)
        self.policy = nn.Sequential(nn.Linear(width, args.hidden), nn.ReLU(), nn.Linear(args.hidden, args.hidden),
                                    nn.ReLU(), nn.Linear(args.hidden, num_actions))
        self.num_actions, self.atoms = num_actions, args.atoms
        self.register_buffer("support", torch.linspace(args.v_min, args.v_max, args.atoms))
        if args.spectral_norm:  # the critic trunk's last layer
            networks.spectral_norm_penultimate(self.encoder, self.trunk, self.q)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(policy logits [B, A], return-distribution logits [B, A, atoms]); the policy's gradient
        stops at the encoder."""
        x = self.encoder(obs)
        return self.policy(x.detach()), self.return_logits_of(x)

    def policy_logits(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy(self.encoder(obs))

    def return_logits(self, obs: torch.Tensor) -> torch.Tensor:
        """The return distributions' logits [B, A, atoms] alone (the target network's use)."""
        return self.return_logits_of(self.encoder(obs))

    def return_logits_of(self, x: torch.Tensor) -> torch.Tensor:
        return self.q(self.trunk(x)).reshape(-1, self.num_actions, self.atoms)

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        """The most likely action (ONNX export), as the actor core's greedy acts."""
        return self.policy_logits(obs).argmax(1)


def make_policy(obs_space: gym.Space, action_space: gym.Space, args: Args) -> ReactorNet:
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ValueError(f"reactor needs Discrete actions, got {action_space}")
    if args.v_max <= args.v_min:
        raise ValueError(f"reactor: v_max ({args.v_max}) must be above v_min ({args.v_min})")
    return ReactorNet(networks.obs_shape(obs_space), int(action_space.n), args)


class PolicySampling(ActorCore):
    """Samples of the policy (inverse CDF from numpy uniforms) and their log-probabilities (mu)."""

    def __init__(self, args: Args, index: int, count: int, num_envs: int, seed: int):
        super().__init__(args, index, count, num_envs, seed)
        self.rng = np.random.default_rng(seed)

    def forward(self, net: ReactorNet, obs, state, episode_start):
        with torch.inference_mode():
            return networks.to_numpy(net.policy_logits(networks.on_device(net, obs))), state

    def select(self, net: ReactorNet, logits: np.ndarray):
        actions, logp = sample_categorical(logits, self.rng.random(len(logits)))
        return actions, {"logp": logp}

    def action_values(self, logits: np.ndarray) -> np.ndarray:
        return logits  # greedy acts on the most likely action


def distributional_retrace(rewards, terminated, ends, cs, next_probs, taken_probs, support, gamma: float):
    """The signed mixture of projected distributions above, time-major: rewards, terminated, ends,
    cs [T, N]; next_probs (Z(x'_s, pi)) and taken_probs (Z(x_s, a_s)) [T, N, atoms]. Returns
    [T, N, atoms]; each target's mass sums to 1, some entries may be negative. Built offset by
    offset (k = s - t), all t at once, so it costs T projections of each kind, not T^2."""
    T, N, atoms = next_probs.shape
    project = lambda r, d, p: ops.categorical_projection(r.reshape(-1), d.reshape(-1), p.reshape(-1, atoms),
                                                         support).reshape(r.shape + (atoms,))
    target = torch.zeros_like(next_probs)
    weight = torch.ones(T, N, dtype=next_probs.dtype, device=next_probs.device)  # w_ts, zero past an end
    partial = torch.zeros_like(weight)  # R_t(s-1): discounted rewards from t up to s - 1
    for k in range(T):
        t, s = slice(0, T - k), slice(k, T)
        disc = gamma ** k
        if k > 0:
            weight[t] = weight[t] * cs[s]
            target[t] -= weight[t, :, None] * project(partial[t], torch.full_like(partial[t], disc), taken_probs[s])
        partial[t] = partial[t] + disc * rewards[s]
        bootstrap = disc * gamma * (1.0 - terminated[s].to(weight.dtype))
        target[t] += weight[t, :, None] * project(partial[t], bootstrap, next_probs[s])
        weight[t] = weight[t] * (1.0 - ends[s].to(weight.dtype))
    return target


class Learner(LearnerBase):
    checkpointed = ("net", "target", "optimizer")

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, args: Args, device: torch.device):
        super().__init__(args, device)
        self.net = make_policy(obs_space, action_space, args).to(device)
        self.target = copy.deepcopy(self.net).requires_grad_(False)
        self.optimizer = ops.adam(self.net.parameters(), lr=args.lr)

    def critic_targets(self, t: dict[str, torch.Tensor], policy_logits: torch.Tensor) -> torch.Tensor:
        """The clipped, renormalized distributional Retrace targets [N, T, atoms] (no gradient)."""
        a = self.args
        N, T = t["reward"].shape
        flat = lambda x: x.reshape((N * T,) + x.shape[2:])
        with torch.no_grad():
            next_policy = F.softmax(self.net.policy_logits(flat(t["next_obs"])), -1)
            next_logits = self.target.return_logits(flat(t["next_obs"]))
            next_probs = (next_policy.unsqueeze(-1) * F.softmax(next_logits, -1)).sum(1)  # Z(x', pi)
            taken_logits = self.target.return_logits(flat(t["obs"]))
            rows = torch.arange(N * T, device=taken_logits.device)
            taken_probs = F.softmax(taken_logits[rows, flat(t["action"]).long()], -1)
            logp = F.log_softmax(policy_logits.detach(), -1).gather(1, flat(t["action"]).long()[:, None]).squeeze(1)
            cs = a.retrace_lambda * torch.exp(logp - flat(t["logp"])).clamp(max=1.0)
            time_major = lambda x: x.reshape((N, T) + x.shape[1:]).transpose(0, 1)
            ends = t["terminated"] | t["truncated"]
            mixture = distributional_retrace(t["reward"].T, t["terminated"].T, ends.T, time_major(cs),
                                             time_major(next_probs), time_major(taken_probs), self.net.support,
                                             a.gamma).transpose(0, 1)
            mixture = mixture.clamp(min=0.0)
            return mixture / mixture.sum(-1, keepdim=True).clamp(min=1e-8)

    def update(self, batch: Batch) -> Update:
        a = self.args
        t = batch.fields
        N, T = t["reward"].shape
        actions = t["action"].reshape(-1).long()
        logits, q_logits = self.net(t["obs"].reshape((N * T,) + t["obs"].shape[2:]))
        targets = self.critic_targets(t, logits).reshape(N * T, -1)
        rows = torch.arange(N * T, device=self.device)
        log_q = F.log_softmax(q_logits[rows, actions], -1)
        critic_loss = -(targets * log_q).sum(-1).reshape(N, T).mean(1)
        with torch.no_grad():
            q_values = (F.softmax(q_logits, -1) * self.net.support).sum(-1)  # [N * T, A]
            returns = (targets * self.net.support).sum(-1)  # the Retrace returns R_t
            td = (returns - q_values[rows, actions]).abs().reshape(N, T)
            beta = torch.exp(-t["logp"].reshape(-1)).clamp(max=a.loo_beta_max)
        probs = F.softmax(logits, -1)
        loo = beta_loo(probs, q_values, actions, returns, beta, a.scale_policy_gradient)
        entropy = -(probs * F.log_softmax(logits, -1)).sum(-1)
        policy_loss = -(loo + a.ent_coef * entropy).reshape(N, T).mean(1)
        self.minimize(batch.weighted_mean(critic_loss + policy_loss), a.max_grad_norm)
        ops.polyak_update(self.parameters_of(self.target), self.parameters_of(self.net), a.tau)
        priorities = ops.sequence_priority(td, torch.ones_like(td), a.priority_eta) + 1e-6
        return Update({"critic_loss": critic_loss.mean().item(), "policy_loss": policy_loss.mean().item(),
                       "entropy": entropy.mean().item(), "td": td.mean().item()},
                      priorities.cpu().numpy().astype(np.float64))


def beta_loo(probs: torch.Tensor, q_values: torch.Tensor, actions: torch.Tensor, returns: torch.Tensor,
             beta: torch.Tensor, scaled: bool = True) -> torch.Tensor:
    """The β-leave-one-out objective [B] whose gradient is β (R - Q(a)) ∇π(a) + Σ_b Q(b) ∇π(b), with
    probs [B, A] carrying the gradient, q_values [B, A], the taken actions, their returns R and β [B].
    Q - V stands for Q (the same gradient); scaled: divided by the batch's mean |Q - mean_b Q|."""
    rows = torch.arange(len(actions), device=probs.device)
    with torch.no_grad():
        advantages = q_values - (q_values * probs).sum(-1, keepdim=True)
        spread = (q_values - q_values.mean(-1, keepdim=True)).abs().mean()  # whatever the policy's entropy
        scale = spread.clamp(min=1e-6) if scaled else 1.0
    return (beta * (returns - q_values[rows, actions]) * probs[rows, actions] + (advantages * probs).sum(-1)) / scale


def make_items(rollout, args: Args) -> dict[str, np.ndarray]:
    """One item per environment: its unroll of the segment (a sequence), as PPO's."""
    return ppo.unroll_items(rollout)


AGENT = Agent(name="reactor", Args=Args, make_policy=make_policy, make_core=PolicySampling, make_items=make_items,
              Learner=Learner, table_config=table_config, sample_options=sample_options)
