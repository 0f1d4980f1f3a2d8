"""DQN, distributed Ape-X style: actors explore with their own epsilon and
compute n-step targets; the learner samples the broker's replay table.

Switchable in Args: double DQN, dueling head, n-step returns, hard or Polyak
target updates, Huber or squared loss, gradient clipping.
References: Mnih et al. 2015; van Hasselt et al. 2016 (double); Wang et al.
2016 (dueling); Horgan et al. 2018 (Ape-X).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qrl import ops
from qrl.algorithm import ActorCore, Agent, History, LearnerBase, Rollout, replay_table
from qrl.brokers.tables import TableConfig
from qrl.numpy_mlp import compile_mlp, numpy_twin


@dataclass(frozen=True)
class Args:
    hidden: int = 128
    """Width of the two hidden layers."""
    dueling: bool = True
    """Separate value and advantage streams (Q = V + A - mean A)."""
    double: bool = True
    """Pick the next action with the online net, evaluate it with the target net."""
    n_step: int = 3
    """Steps of real reward before bootstrapping; actors compute the n-step targets."""
    gamma: float = 0.99
    lr: float = 1e-3
    batch_size: int = 128
    buffer_size: int = 100_000
    learning_starts: int = 1_000
    """Items in the replay table before the first batch is served."""
    samples_per_insert: float = 24.0
    """Replay ratio held by the broker's rate limiter: items sampled per item inserted (0: unlimited)."""
    target_tau: float = 0.005
    """1.0: hard copy every target_update_every updates; < 1: Polyak averaging every update."""
    target_update_every: int = 100
    huber: bool = True
    """Huber (smooth L1) loss instead of squared error."""
    max_grad_norm: float = 10.0
    """Clip the gradient's global norm to this (0: no clipping)."""
    eps_base: float = 0.4
    eps_alpha: float = 7.0
    """Actor i of N explores with eps_base ** (1 + eps_alpha * i / (N - 1))."""
    eps_anneal_frames: int = 10_000
    """Each actor starts at epsilon 1 and anneals to its own epsilon over this many of its frames."""
    atoms: int = 0
    """Distributional (C51): atoms of the categorical return distribution on [v_min, v_max]
    (0: learn expected values only)."""
    v_min: float = -10.0
    v_max: float = 10.0
    quantiles: int = 0
    """Distributional (QR-DQN): quantiles of the return distribution at fractions (2i + 1) / 2N,
    learned with the quantile Huber loss (0: off; not together with atoms)."""
    kappa: float = 1.0
    """QR-DQN: the Huber loss's threshold."""


def table_config(args: Args) -> TableConfig:
    return replay_table(args, args.samples_per_insert)


PRIORITY_FLOOR = 1e-3


# -- network ----------------------------------------------------------------------------------

def nature_cnn(in_channels: int, hidden: int) -> nn.Sequential:
    """The Atari torso of Mnih et al. 2015 for [C, 84, 84] stacked frames."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 8, stride=4), nn.ReLU(),
        nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(64 * 7 * 7, hidden), nn.ReLU(),
    )


class QNetwork(nn.Module):
    """Q values from a torso and a (dueling) head; with atoms > 0 the head gives, for each action,
    the logits of a categorical return distribution on a fixed support (C51), with quantiles > 0
    the return distribution's quantiles (QR-DQN); Q is the distribution's mean."""

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, hidden: int, dueling: bool, atoms: int = 0,
                 v_min: float = -10.0, v_max: float = 10.0, quantiles: int = 0):
        super().__init__()
        self.image = len(obs_shape) == 3  # [C, H, W] frames (Atari): a CNN on pixels scaled to [0, 1]
        if self.image:
            self.torso = nature_cnn(obs_shape[0], hidden)
        else:
            obs_dim = int(np.prod(obs_shape))
            self.torso = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        if atoms and quantiles:
            raise ValueError("algo.atoms (C51) and algo.quantiles (QR-DQN) are two distributional heads: set one")
        # self.atoms: outputs per action beyond one (C51 atoms or QR-DQN quantiles)
        self.dueling, self.num_actions, self.atoms, self.quantile = dueling, num_actions, atoms or quantiles, bool(quantiles)
        outputs = max(self.atoms, 1)
        self.advantage = nn.Linear(hidden, num_actions * outputs)
        self.value = nn.Linear(hidden, outputs) if dueling else None
        if atoms and not quantiles:
            if not v_min < v_max:
                raise ValueError(f"algo.v_min must be below algo.v_max, got {v_min} and {v_max}")
            self.register_buffer("support", torch.linspace(v_min, v_max, atoms))

    def head(self, h, xp=torch):
        """The dueling combination of the head's outputs (torch tensors or, xp=np, numpy arrays):
        [B, num_actions] Q values, or [B, num_actions, atoms] logits."""
        shape = (len(h), self.num_actions) + ((self.atoms,) if self.atoms else ())
        adv = self.advantage(h).reshape(shape)
        if self.value is None:
            return adv
        value = self.value(h).reshape((len(h), 1) + shape[2:])
        mean = adv.mean(axis=1, keepdims=True) if xp is np else adv.mean(dim=1, keepdim=True)
        return value + adv - mean

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        return self.torso(obs.float() / 255.0) if self.image else self.torso(obs.flatten(1).float())

    def dist_logits(self, obs: torch.Tensor) -> torch.Tensor:
        """[B, *obs_shape] -> [B, num_actions, atoms]: C51's logits, or QR-DQN's quantiles."""
        return self.head(self.features(obs))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:  # [B, *obs_shape] -> [B, num_actions]
        out = self.head(self.features(obs))
        if self.quantile:
            return out.mean(2)
        return (torch.softmax(out, dim=2) * self.support).sum(2) if self.atoms else out

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """forward() on a numpy batch: in numpy for an MLP (see qrl/numpy_mlp.py), else in torch."""
        parts = numpy_twin(self, lambda: None if self.image else [
            compile_mlp(m) for m in (self.torso, self.advantage, self.value) if m is not None])
        if parts is None or None in parts:
            with torch.inference_mode():
                return self(torch.as_tensor(obs)).numpy()
        torso, advantage, *value = parts
        h = torso(obs)
        if not self.atoms:  # the hot path of every dqn/apex actor step: no reshapes
            adv = advantage(h)
            return adv if not value else value[0](h) + adv - adv.mean(axis=1, keepdims=True)
        out = _NumpyHead(self, advantage, value[0] if value else None).head(h, xp=np)
        if self.quantile:
            return out.mean(axis=2)
        p = np.exp(out - out.max(axis=2, keepdims=True))
        return (p * self.support.numpy()).sum(2) / p.sum(2)


class _NumpyHead:
    """QNetwork.head on compiled numpy layers."""

    def __init__(self, net: QNetwork, advantage, value):
        self.num_actions, self.atoms, self.advantage, self.value = net.num_actions, net.atoms, advantage, value

    head = QNetwork.head


def make_policy(obs_space: gym.Space, action_space: gym.Space, args: Args) -> QNetwork:
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ValueError(f"dqn needs a discrete action space, got {action_space}")
    return QNetwork(tuple(obs_space.shape), int(action_space.n), args.hidden, args.dueling, args.atoms, args.v_min,
                    args.v_max, args.quantiles)


# -- actor side -------------------------------------------------------------------------------

def history(args: Args) -> History:
    return History(after=args.n_step - 1)


class EpsilonGreedy(ActorCore):
    """Greedy in the Q values, else uniformly random: actor i of N anneals from epsilon 1 to its own
    Ape-X epsilon over its first eps_anneal_frames frames."""

    def __init__(self, args: Args, index: int, count: int, num_envs: int, seed: int):
        super().__init__(args, index, count, num_envs, seed)
        self.epsilon = ops.apex_epsilon(index, count, args.eps_base, args.eps_alpha)
        self.rng = np.random.default_rng(seed)
        self.frames = 0

    def action_values(self, net: QNetwork, obs, state, episode_start):
        return net.q_values(obs), state

    def explore(self, actions: np.ndarray, num_actions: int) -> np.ndarray:
        eps = ops.linear_schedule(1.0, self.epsilon, self.args.eps_anneal_frames, self.frames)
        self.frames += len(actions)
        explore = self.rng.random(len(actions)) < eps
        if explore.any():
            actions[explore] = self.rng.integers(0, num_actions, size=int(explore.sum()))
        return actions

    def act(self, net: QNetwork, obs, state, episode_start):
        q, state = self.action_values(net, obs, state, episode_start)
        return self.explore(q.argmax(axis=1), q.shape[1]), state, {}


def make_items(rollout: Rollout, args: Args) -> dict[str, np.ndarray]:
    """n-step transitions (obs, action, return, discount, bootstrap obs) for the segment's steps."""
    T = rollout.num_steps
    returns, discounts, last = ops.nstep_targets(
        rollout.rewards, rollout.terminated, rollout.truncated, args.gamma, args.n_step, T
    )
    envs = np.arange(rollout.rewards.shape[1])[None, :]
    flat = lambda x: x.reshape((-1,) + x.shape[2:])  # [T, B, ...] -> [T*B, ...]
    return {
        "obs": flat(rollout.obs[:T]),
        "action": flat(rollout.actions[:T]).astype(np.int64),
        "return": flat(returns).astype(np.float32),
        "discount": flat(discounts).astype(np.float32),
        "next_obs": flat(rollout.next_obs[last, envs]),
    }


# -- learner side -----------------------------------------------------------------------------

class Learner(LearnerBase):
    checkpointed = ("net", "target", "optimizer")

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, args: Args, device: torch.device):
        super().__init__(args, device)
        self.net = make_policy(obs_space, action_space, args).to(device)
        self.target = make_policy(obs_space, action_space, args).to(device)
        self.target.load_state_dict(self.net.state_dict())
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=args.lr)

    def update(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        a = self.args
        t = self.tensors(batch)
        if a.quantiles:
            per_item, q, td = self._quantile_loss(t)
        elif a.atoms:
            per_item, q, td = self._distributional_loss(t)
        else:
            per_item, q, td = self._expected_value_loss(t)
        loss = t.weighted_mean(per_item)  # importance weights correct prioritized sampling
        self.minimize(loss, a.max_grad_norm)
        if a.target_tau < 1.0:
            ops.polyak_update(self.target.parameters(), self.net.parameters(), a.target_tau)
        elif self.updates % a.target_update_every == 0:
            self.target.load_state_dict(self.net.state_dict())
        metrics = {"loss": loss.item(), "q_mean": q.mean().item()}
        if t.weight is not None:  # new priorities for the sampled items (+ a floor so none starves)
            metrics["_priorities"] = td.detach().abs().cpu().numpy() + PRIORITY_FLOOR
        return metrics

    def _expected_value_loss(self, t):
        """Per-item Huber (or squared) TD loss toward return + discount * Q_target(next, a*); the TD errors."""
        a = self.args
        n = len(t["obs"])
        if a.double:  # one forward pass of the online net over obs and next_obs together
            q_all = self.net(torch.cat([t["obs"], t["next_obs"]]))
            q_online, best_next = q_all[:n], q_all[n:].detach().argmax(dim=1, keepdim=True)
        else:
            q_online = self.net(t["obs"])
        q = q_online.gather(1, t["action"].unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            q_next_target = self.target(t["next_obs"])
            if a.double:
                q_next = q_next_target.gather(1, best_next).squeeze(1)
            else:
                q_next = q_next_target.max(dim=1).values
            td_target = t["return"] + t["discount"] * q_next  # discount already holds gamma^k and termination
        per_item = (F.smooth_l1_loss if a.huber else F.mse_loss)(q, td_target, reduction="none")
        return per_item, q, td_target - q

    def _distributional_loss(self, t):
        """C51: cross-entropy between the projected target distribution and the predicted one; the
        cross-entropy also serves as the priority (as Rainbow's KL)."""
        a = self.args
        n = len(t["obs"])
        support = self.net.support
        logits = self.net.dist_logits(torch.cat([t["obs"], t["next_obs"]]) if a.double else t["obs"])
        taken = logits[torch.arange(n, device=self.device), t["action"]]  # [B, atoms]
        log_p = F.log_softmax(taken, dim=1)
        with torch.no_grad():
            target_probs = torch.softmax(self.target.dist_logits(t["next_obs"]), dim=2)  # [B, A, atoms]
            chooser = torch.softmax(logits[n:], dim=2) if a.double else target_probs
            best_next = (chooser * support).sum(2).argmax(dim=1)
            projected = ops.categorical_projection(t["return"], t["discount"],
                                                   target_probs[torch.arange(n, device=self.device), best_next],
                                                   support)
        per_item = -(projected * log_p).sum(1)
        q = (log_p.exp() * support).sum(1)
        return per_item, q, per_item

    def _quantile_loss(self, t):
        """QR-DQN: the quantile Huber loss between the taken action's quantiles and the target
        quantiles return + discount * theta_target(next, a*); the loss also serves as the priority."""
        a = self.args
        n = len(t["obs"])
        rows = torch.arange(n, device=self.device)
        out = self.net.dist_logits(torch.cat([t["obs"], t["next_obs"]]) if a.double else t["obs"])
        taken = out[rows, t["action"]]  # [B, N]
        with torch.no_grad():
            next_target = self.target.dist_logits(t["next_obs"])  # [B, A, N]
            best_next = (out[n:] if a.double else next_target).mean(2).argmax(dim=1)
            target = t["return"].unsqueeze(1) + t["discount"].unsqueeze(1) * next_target[rows, best_next]
        per_item = ops.quantile_huber_loss(taken, target, a.kappa)
        return per_item, taken.mean(1), per_item


AGENT = Agent(name="dqn", Args=Args, make_policy=make_policy, actor=EpsilonGreedy, make_items=make_items,
              Learner=Learner, table_config=table_config, history=history)
