"""Tabular Q-learning on the distributed runtime: the "network" is a table of Q values
(one row per discrete observation), shipped to actors as weights like any other.

Actors explore epsilon-greedily (Ape-X spread over actors, annealed from 1 at the start)
and push one-step transitions; the learner replays them through the broker:
Q[s, a] += lr * (r + gamma * max_a' Q[s', a'] - Q[s, a]), averaged over repeats of the
same (s, a) in a batch. Watkins 1989; Sutton & Barto 2018, section 6.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from qrl import ops
from qrl.algorithm import Rollout
from qrl.brokers.tables import TableConfig


@dataclass(frozen=True)
class Args:
    lr: float = 0.5
    """Step size of each tabular update."""
    gamma: float = 0.99
    batch_size: int = 64
    buffer_size: int = 10_000
    learning_starts: int = 256
    samples_per_insert: float = 4.0
    """Replay ratio held by the broker's rate limiter (0: unlimited)."""
    eps_base: float = 0.4
    eps_alpha: float = 7.0
    """Actor i of N explores with eps_base ** (1 + eps_alpha * i / (N - 1))."""
    eps_anneal_frames: int = 2_000


def table_config(args: Args) -> TableConfig:
    return TableConfig(capacity=args.buffer_size, sampler="uniform", min_size=args.learning_starts,
                       samples_per_insert=args.samples_per_insert,
                       tolerance=max(args.batch_size, 64 * args.samples_per_insert) if args.samples_per_insert else 0.0)


class QTable(nn.Module):
    def __init__(self, num_states: int, num_actions: int):
        super().__init__()
        # A buffer, not a parameter: no gradients, but saved, loaded and published with the state dict.
        self.register_buffer("q", torch.zeros(num_states, num_actions))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:  # [B] state indices -> [B, num_actions]
        return self.q[obs.long()]


def make_policy(obs_space: gym.Space, action_space: gym.Space, args: Args) -> QTable:
    if not isinstance(obs_space, gym.spaces.Discrete) or not isinstance(action_space, gym.spaces.Discrete):
        raise ValueError(f"ql needs discrete observations and actions, got {obs_space} and {action_space}")
    return QTable(int(obs_space.n), int(action_space.n))


# -- actor side -------------------------------------------------------------------------------

def rollout_overlap(args: Args) -> int:
    return 0


@dataclass
class ActorState:
    epsilon: float
    rng: np.random.Generator
    frames: int = 0


def init_actor(index: int, count: int, num_envs: int, args: Args, seed: int) -> ActorState:
    return ActorState(ops.apex_epsilon(index, count, args.eps_base, args.eps_alpha), np.random.default_rng(seed))


def action_values(net: QTable, obs: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return net(torch.as_tensor(obs)).numpy()


def greedy_act(net: QTable, obs: np.ndarray) -> np.ndarray:
    return action_values(net, obs).argmax(axis=1)


def act(net: QTable, obs: np.ndarray, state: ActorState, args: Args) -> tuple[np.ndarray, dict[str, Any]]:
    eps = ops.linear_schedule(1.0, state.epsilon, args.eps_anneal_frames, state.frames)
    state.frames += len(obs)
    actions = greedy_act(net, obs)
    explore = state.rng.random(len(obs)) < eps
    if explore.any():
        actions[explore] = state.rng.integers(0, net.q.shape[1], size=int(explore.sum()))
    return actions, {}


def make_items(rollout: Rollout, num_steps: int, args: Args) -> dict[str, np.ndarray]:
    flat = lambda x: x[:num_steps].reshape((-1,) + x.shape[2:])
    return {
        "obs": flat(rollout.obs).astype(np.int64),
        "action": flat(rollout.actions).astype(np.int64),
        "reward": flat(rollout.rewards).astype(np.float32),
        # Bootstrapping stops at a terminal state, not at a time limit.
        "discount": (args.gamma * (1.0 - flat(rollout.terminated))).astype(np.float32),
        "next_obs": flat(rollout.next_obs).astype(np.int64),
    }


# -- learner side -----------------------------------------------------------------------------

class Learner:
    def __init__(self, obs_space: gym.Space, action_space: gym.Space, args: Args, device: torch.device):
        self.args, self.device = args, device
        self.net = make_policy(obs_space, action_space, args).to(device)
        self.updates = 0

    def update(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        t = {k: torch.tensor(v, device=self.device) for k, v in batch.items() if not k.startswith("_")}
        q = self.net.q
        target = t["reward"] + t["discount"] * q[t["next_obs"]].max(dim=1).values
        td = target - q[t["obs"], t["action"]]
        # The mean TD error of each (s, a) in the batch, so repeats do not overshoot.
        flat = t["obs"] * q.shape[1] + t["action"]
        total = torch.zeros(q.numel(), device=self.device).index_add_(0, flat, td)
        count = torch.zeros(q.numel(), device=self.device).index_add_(0, flat, torch.ones_like(td))
        q.view(-1).add_(self.args.lr * total / count.clamp(min=1))
        self.updates += 1
        return {"td_abs": td.abs().mean().item(), "q_mean": q.mean().item()}

    def policy_state(self) -> dict[str, np.ndarray]:
        return {k: v.detach().to("cpu", copy=True).numpy() for k, v in self.net.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.updates = state["updates"]
