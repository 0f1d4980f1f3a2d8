"""Behaviour cloning: a policy trained by maximum likelihood on demonstrations (run.demos), for
discrete (categorical) and continuous (diagonal Gaussian) actions.

The learner samples the demonstration table the broker serves beside the agent's own and
minimizes the negative log-likelihood of the demonstrated actions, minus an entropy bonus, plus an
L2 penalty on the weights (the loss of the `imitation` library's BC). It learns from the dataset
alone: the actors only act with the published policy, so the run's episode returns show how the
clone plays (their items are stored in a small table nobody samples). The policy is PPO's policy
network (its MLP, or a convolutional torso for images) without the value function; actors sample
from it, evaluation takes its most likely action.
References: Pomerleau 1991 (ALVINN); Gleave et al. 2022 (imitation: its BC's loss and defaults).
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from qrl import ops
from qrl.algorithm import Agent, Batch, DemoUse, LearnerBase, Rollout, Update
from qrl.algorithms import ppo
from qrl.brokers.tables import TableConfig


@dataclass(frozen=True)
class Args:
    hidden: int = 64
    """Width of the policy's two tanh hidden layers (or of an image torso's last layer)."""
    lr: float = 1e-3
    batch_size: int = 64
    """Demonstration transitions per update."""
    ent_coef: float = 1e-3
    """Entropy bonus (imitation's ent_weight)."""
    l2_coef: float = 0.0
    """L2 penalty on the policy's weights (imitation's l2_weight)."""
    max_grad_norm: float = 0.0
    """Clip the gradient's global norm to this (0: no clipping)."""
    log_std_init: float = 0.0
    """Continuous actions: initial log standard deviation (learned)."""
    ortho_init: bool = True
    torso: str = "auto"
    """Image observations: the convolutional torso (qrl/networks.py), as PPO's."""
    actor_table: int = 4096
    """Capacity of the table the actors' items go to (never sampled: they only show how the clone plays)."""


def policy_args(args: Args) -> ppo.Args:
    """The PPO settings of the same policy network and sampling core."""
    return ppo.Args(hidden=args.hidden, log_std_init=args.log_std_init, ortho_init=args.ortho_init, torso=args.torso)


def make_policy(obs_space: gym.Space, action_space: gym.Space, args: Args) -> ppo.ActorCritic:
    net = ppo.make_policy(obs_space, action_space, policy_args(args))
    net.value = nn.Identity()  # behaviour cloning has no value function
    return net


def make_core(args: Args, index: int, count: int, num_envs: int, seed: int) -> ppo.PolicySampling:
    return ppo.PolicySampling(policy_args(args), index, count, num_envs, seed)


def make_items(rollout: Rollout, args: Args) -> dict[str, np.ndarray]:
    """(observation, action) pairs: the actions the environment was given (Minari datasets hold those)."""
    T = rollout.num_steps
    flat = lambda x: x[:T].reshape((-1,) + x.shape[2:])
    actions = flat(rollout.actions)
    continuous = np.issubdtype(actions.dtype, np.floating)
    return {"obs": flat(rollout.obs), "action": actions.astype(np.float32 if continuous else np.int64)}


def table_config(args: Args) -> TableConfig:
    return TableConfig(capacity=args.actor_table, sampler="uniform", min_size=0, samples_per_insert=0.0)


class Learner(LearnerBase):
    def __init__(self, obs_space: gym.Space, action_space: gym.Space, args: Args, device: torch.device):
        super().__init__(args, device)
        self.net = make_policy(obs_space, action_space, args).to(device)
        self.optimizer = ops.adam(list(self.net.parameters()), lr=args.lr)
        self.weights = [p for name, p in self.net.named_parameters() if name.endswith("weight")]

    def update(self, batch: Batch) -> Update:
        a, demos = self.args, batch.demos
        dist = self.net.distribution(demos["obs"])
        logp = self.net.log_prob(dist, demos["action"])
        entropy = self.net.entropy(dist).mean()
        loss = -logp.mean() - a.ent_coef * entropy
        if a.l2_coef:
            loss = loss + a.l2_coef * sum((w ** 2).sum() for w in self.weights) / 2
        self.minimize(loss, a.max_grad_norm)
        metrics = {"loss": loss.item(), "neglogp": -logp.mean().item(), "entropy": entropy.item()}
        if not self.net.continuous:
            metrics["accuracy"] = (dist.logits.argmax(-1) == demos["action"]).float().mean().item()
        return Update(metrics)


AGENT = Agent(name="bc", Args=Args, make_policy=make_policy, make_core=make_core, make_items=make_items,
              Learner=Learner, table_config=table_config,
              demonstrations=DemoUse(batch=lambda args: (0, args.batch_size), required=True),
              run_defaults={"publish_every": 10, "eval_every_frames": 0, "eval_every_s": 5.0})
