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
from qrl.algorithm import Rollout
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


def table_config(args: Args) -> TableConfig:
    return TableConfig(
        capacity=args.buffer_size,
        sampler="uniform",
        min_size=args.learning_starts,
        samples_per_insert=args.samples_per_insert,
        tolerance=max(args.batch_size, 64 * args.samples_per_insert) if args.samples_per_insert else 0.0,
    )


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
    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, hidden: int, dueling: bool):
        super().__init__()
        self.image = len(obs_shape) == 3  # [C, H, W] frames (Atari): a CNN on pixels scaled to [0, 1]
        if self.image:
            self.torso = nature_cnn(obs_shape[0], hidden)
        else:
            obs_dim = int(np.prod(obs_shape))
            self.torso = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.dueling = dueling
        self.advantage = nn.Linear(hidden, num_actions)
        self.value = nn.Linear(hidden, 1) if dueling else None

    def forward(self, obs: torch.Tensor) -> torch.Tensor:  # [B, *obs_shape] -> [B, num_actions]
        h = self.torso(obs.float() / 255.0) if self.image else self.torso(obs.flatten(1).float())
        adv = self.advantage(h)
        if self.value is None:
            return adv
        return self.value(h) + adv - adv.mean(dim=1, keepdim=True)

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """forward() on a numpy batch: in numpy for an MLP (see qrl/numpy_mlp.py), else in torch."""
        parts = numpy_twin(self, lambda: None if self.image else [
            compile_mlp(m) for m in (self.torso, self.advantage, self.value) if m is not None])
        if parts is None or None in parts:
            with torch.inference_mode():
                return self(torch.as_tensor(obs)).numpy()
        torso, advantage, *value = parts
        h = torso(obs)
        adv = advantage(h)
        return adv if not value else value[0](h) + adv - adv.mean(axis=1, keepdims=True)


def make_policy(obs_space: gym.Space, action_space: gym.Space, args: Args) -> QNetwork:
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ValueError(f"dqn needs a discrete action space, got {action_space}")
    return QNetwork(tuple(obs_space.shape), int(action_space.n), args.hidden, args.dueling)


# -- actor side -------------------------------------------------------------------------------

def rollout_overlap(args: Args) -> int:
    return args.n_step - 1


@dataclass
class ActorState:
    epsilon: float  # the actor's final epsilon
    rng: np.random.Generator
    frames: int = 0


def init_actor(index: int, count: int, num_envs: int, args: Args, seed: int) -> ActorState:
    return ActorState(ops.apex_epsilon(index, count, args.eps_base, args.eps_alpha), np.random.default_rng(seed))


def action_values(net: QNetwork, obs: np.ndarray) -> np.ndarray:
    return net.q_values(obs)


def greedy_act(net: QNetwork, obs: np.ndarray) -> np.ndarray:
    return net.q_values(obs).argmax(axis=1)


def act(net: QNetwork, obs: np.ndarray, state: ActorState, args: Args) -> tuple[np.ndarray, dict[str, Any]]:
    eps = ops.linear_schedule(1.0, state.epsilon, args.eps_anneal_frames, state.frames)
    state.frames += len(obs)
    actions = greedy_act(net, obs)
    explore = state.rng.random(len(obs)) < eps
    if explore.any():
        actions[explore] = state.rng.integers(0, net.advantage.out_features, size=int(explore.sum()))
    return actions, {}


def make_items(rollout: Rollout, num_steps: int, args: Args) -> dict[str, np.ndarray]:
    """n-step transitions (obs, action, return, discount, bootstrap obs) for the first num_steps steps."""
    returns, discounts, last = ops.nstep_targets(
        rollout.rewards, rollout.terminated, rollout.truncated, args.gamma, args.n_step, num_steps
    )
    envs = np.arange(rollout.rewards.shape[1])[None, :]
    flat = lambda x: x.reshape((-1,) + x.shape[2:])  # [T, B, ...] -> [T*B, ...]
    return {
        "obs": flat(rollout.obs[:num_steps]),
        "action": flat(rollout.actions[:num_steps]).astype(np.int64),
        "return": flat(returns).astype(np.float32),
        "discount": flat(discounts).astype(np.float32),
        "next_obs": flat(rollout.next_obs[last, envs]),
    }


# -- learner side -----------------------------------------------------------------------------

class Learner:
    def __init__(self, obs_space: gym.Space, action_space: gym.Space, args: Args, device: torch.device):
        self.args, self.device = args, device
        self.net = make_policy(obs_space, action_space, args).to(device)
        self.target = make_policy(obs_space, action_space, args).to(device)
        self.target.load_state_dict(self.net.state_dict())
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=args.lr)
        self.updates = 0

    def update(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        a = self.args
        t = {k: torch.tensor(v, device=self.device) for k, v in batch.items() if not k.startswith("_")}
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
        if "_weight" in batch:  # prioritized replay: importance weights correct the sampling bias
            loss = (per_item * torch.tensor(batch["_weight"], device=self.device)).mean()
        else:
            loss = per_item.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if a.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(self.net.parameters(), a.max_grad_norm)
        self.optimizer.step()
        self.updates += 1
        if a.target_tau < 1.0:
            ops.polyak_update(self.target.parameters(), self.net.parameters(), a.target_tau)
        elif self.updates % a.target_update_every == 0:
            self.target.load_state_dict(self.net.state_dict())
        metrics = {"loss": loss.item(), "q_mean": q.mean().item()}
        if "_weight" in batch:  # new priorities for the sampled items: |TD error| (+ a floor so none starves)
            metrics["_priorities"] = (td_target - q).detach().abs().cpu().numpy() + PRIORITY_FLOOR
        return metrics

    def policy_state(self) -> dict[str, np.ndarray]:
        # A copy, not a view: the frames are sent zero-copy after this returns, while
        # the optimizer keeps updating the parameters in place.
        return {k: v.detach().to("cpu", copy=True).numpy() for k, v in self.net.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "target": self.target.state_dict(),
                "optimizer": self.optimizer.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = state["updates"]
