"""REINFORCE with a linear softmax policy: a whole qrl algorithm outside qrl (Williams 1992).

Actors sample actions and push one unroll per environment with each step's discounted reward to
go (cut where an episode ends, and at the unroll's end: a toy, not a tuned agent); the learner
takes batches of unrolls from the broker's on-policy queue and follows the policy gradient."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from qrl.algorithm import ActorCore, Agent, Batch, LearnerBase, Rollout, Update
from qrl.brokers.tables import TableConfig


@dataclass(frozen=True)
class Args:  # the config section "algo": qrl checks names, types and ranges (qrl/config.py RANGES)
    lr: float = 0.01
    gamma: float = 0.99
    batch_size: int = 4
    """Unrolls per update."""


def make_policy(obs_space, action_space, args: Args) -> nn.Module:
    return nn.Linear(int(np.prod(obs_space.shape)), int(action_space.n))


class SoftmaxSampling(ActorCore):
    def __init__(self, args: Args, index: int, count: int, num_envs: int, seed: int):
        super().__init__(args, index, count, num_envs, seed)
        self.rng = np.random.default_rng(seed)

    def forward(self, net, obs, state, episode_start):  # logits [B, actions]; no randomness here
        with torch.inference_mode():
            return net(torch.as_tensor(obs, dtype=torch.float32)).numpy(), state

    def action_values(self, logits):  # greedy() takes their argmax
        return logits

    def select(self, net, logits):  # this actor's own random generator
        cdf = np.cumsum(np.exp(logits - logits.max(axis=1, keepdims=True)), axis=1)
        actions = (cdf < self.rng.random((len(cdf), 1)) * cdf[:, -1:]).sum(axis=1)
        return actions, {}


def make_items(rollout: Rollout, args: Args) -> dict[str, np.ndarray]:
    T = rollout.num_steps
    to_go = np.zeros_like(rollout.rewards[:T])
    acc = np.zeros(rollout.rewards.shape[1], np.float32)
    for t in reversed(range(T)):
        acc = rollout.rewards[t] + args.gamma * acc * ~(rollout.terminated[t] | rollout.truncated[t])
        to_go[t] = acc
    per_env = lambda x: np.ascontiguousarray(np.swapaxes(x[:T], 0, 1))  # [T, B] -> [B, T]
    return {"obs": per_env(rollout.obs).astype(np.float32), "action": per_env(rollout.actions).astype(np.int64),
            "return": per_env(to_go)}


class Learner(LearnerBase):  # checkpoints "net" and "optimizer", publishes net's weights
    def __init__(self, obs_space, action_space, args: Args, device: torch.device):
        super().__init__(args, device)
        self.net = make_policy(obs_space, action_space, args).to(device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=args.lr)

    def update(self, batch: Batch) -> Update:
        logp = torch.log_softmax(self.net(batch["obs"]), dim=-1).gather(-1, batch["action"].unsqueeze(-1)).squeeze(-1)
        loss = -(logp * (batch["return"] - batch["return"].mean())).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.updates += 1
        return Update({"loss": loss.item()})


def table_config(args: Args) -> TableConfig:  # an on-policy queue: each unroll served once
    return TableConfig(capacity=16, sampler="fifo", min_size=0, samples_per_insert=0.0, max_policy_lag=2)


AGENT = Agent(name="reinforce", Args=Args, make_policy=make_policy, make_core=SoftmaxSampling, make_items=make_items,
              Learner=Learner, table_config=table_config, run_defaults={"publish_every": 1})
