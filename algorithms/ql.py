"""Tabular Q-learning on the distributed runtime: the "network" is a table of Q values
(one row per discrete observation), shipped to actors as weights like any other.

Actors explore epsilon-greedily (Ape-X spread over actors, annealed from 1 at the start)
and push one-step transitions; the learner replays them through the broker:
Q[s, a] += lr * (r + gamma * max_a' Q[s', a'] - Q[s, a]), averaged over repeats of the
same (s, a) in a batch. Watkins 1989; Sutton & Barto 2018, section 6.5.
"""

from __future__ import annotations

from dataclasses import dataclass
import gymnasium as gym
import numpy as np
import torch
from torch import nn

from qrl import networks
from qrl.algorithm import Agent, Batch, LearnerBase, Rollout, Update, replay_table
from qrl.algorithms import dqn
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
    return replay_table(args, args.samples_per_insert)


class QTable(nn.Module):
    def __init__(self, num_states: int, num_actions: int):
        super().__init__()
        # A buffer, not a parameter: no gradients, but saved, loaded and published with the state dict.
        self.register_buffer("q", torch.zeros(num_states, num_actions))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:  # [B] state indices -> [B, num_actions]
        return self.q[obs.long()]

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        """The greedy action in torch (qrl.load's ONNX export)."""
        return self(obs).argmax(1)


def make_policy(obs_space: gym.Space, action_space: gym.Space, args: Args) -> QTable:
    if not isinstance(obs_space, gym.spaces.Discrete) or not isinstance(action_space, gym.spaces.Discrete):
        raise ValueError(f"ql needs discrete observations and actions, got {obs_space} and {action_space}")
    return QTable(int(obs_space.n), int(action_space.n))


# -- actor side -------------------------------------------------------------------------------

class EpsilonGreedy(dqn.EpsilonExploration):
    """DQN's Ape-X epsilon-greedy exploration over the table's Q values."""

    def forward(self, net: QTable, obs, state, episode_start):
        with torch.inference_mode():
            return networks.to_numpy(net(networks.on_device(net, obs))), state


def make_items(rollout: Rollout, args: Args) -> dict[str, np.ndarray]:
    flat = lambda x: x[:rollout.num_steps].reshape((-1,) + x.shape[2:])
    return {
        "obs": flat(rollout.obs).astype(np.int64),
        "action": flat(rollout.actions).astype(np.int64),
        "reward": flat(rollout.rewards).astype(np.float32),
        # Bootstrapping stops at a terminal state, not at a time limit.
        "discount": (args.gamma * (1.0 - flat(rollout.terminated))).astype(np.float32),
        "next_obs": flat(rollout.next_obs).astype(np.int64),
    }


# -- learner side -----------------------------------------------------------------------------

class Learner(LearnerBase):
    checkpointed = ("net",)

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, args: Args, device: torch.device):
        super().__init__(args, device)
        self.net = make_policy(obs_space, action_space, args).to(device)

    def update(self, batch: Batch) -> Update:
        q = self.net.q
        target = batch["reward"] + batch["discount"] * q[batch["next_obs"]].max(dim=1).values
        td = target - q[batch["obs"], batch["action"]]
        # The mean TD error of each (s, a) in the batch, so repeats do not overshoot.
        flat = batch["obs"] * q.shape[1] + batch["action"]
        total = torch.zeros(q.numel(), device=self.device).index_add_(0, flat, td)
        count = torch.zeros(q.numel(), device=self.device).index_add_(0, flat, torch.ones_like(td))
        q.view(-1).add_(self.args.lr * total / count.clamp(min=1))
        self.updates += 1
        return Update({"td_abs": td.abs().mean().item(), "q_mean": q.mean().item()})


AGENT = Agent(name="ql", Args=Args, make_policy=make_policy, make_core=EpsilonGreedy, make_items=make_items,
              Learner=Learner, table_config=table_config)
