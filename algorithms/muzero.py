"""MuZero: tree search in a learned model, for single-agent tasks with discrete actions.

Three networks (MLPs): the representation h(o) -> s, the dynamics g(s, a) -> (s', r) and the
prediction f(s) -> (policy logits, value); hidden states are scaled to [0, 1] per sample, as in the
paper. Each actor step searches with PUCT (qrl/search/mcts.py) in the learned model from h of
the observation, Q normalized by the tree's smallest and largest (rewards of any scale), Dirichlet
noise at the root, and draws its move from the visit counts at `algo.temperature`.

An item is an observation with the next `unroll` actions and, for each of the `unroll` + 1
positions, the visit distribution, the reward and an n-step value target (`td_steps` rewards, then
the search's root value there, as the paper's actors record); positions past the episode's end
are absorbing (value and reward 0, no policy loss). The learner unrolls the dynamics through the
actions and minimizes cross-entropies to the visit distributions and to the value and reward
targets as categorical distributions over an integer support after the invertible transform
h(x) = sign(x)(sqrt(|x| + 1) - 1) + 0.001 x; the gradient into the dynamics is halved at each
step and the unrolled steps' losses are scaled by 1 / unroll. Reanalysis is not done: values
bootstrap from the root values the actors recorded.
References: Schrittwieser et al. 2020 (MuZero), Pohlen et al. 2018 (the transform).
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from qrl import ops
from qrl.algorithm import Agent, Batch, History, LearnerBase, Rollout, Update, replay_table
from qrl.brokers.tables import TableConfig
from qrl.networks import on_device, to_numpy
from qrl.search.acting import SearchCore
from qrl.search.mcts import Expansion, SearchConfig


@dataclass(frozen=True)
class Args:
    hidden: int = 64
    latent: int = 32
    """Size of the learned model's hidden state."""
    support: int = 20
    """Values and rewards are categorical over the integers -support..support (after the transform)."""
    unroll: int = 5
    td_steps: int = 10
    gamma: float = 0.997
    simulations: int = 25
    c_puct: float = 1.25
    dirichlet_alpha: float = 0.25
    noise_fraction: float = 0.25
    temperature: float = 1.0
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 128
    buffer_size: int = 50_000
    learning_starts: int = 1_000
    samples_per_insert: float = 4.0
    value_coef: float = 0.25
    max_grad_norm: float = 5.0


# -- the transform and the categorical support ------------------------------------------------

def scale(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    return torch.sign(x) * (torch.sqrt(x.abs() + 1) - 1) + eps * x


def unscale(y: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """The inverse of scale (Pohlen et al. 2018, appendix A)."""
    return torch.sign(y) * (((torch.sqrt(1 + 4 * eps * (y.abs() + 1 + eps)) - 1) / (2 * eps)) ** 2 - 1)


def to_support(x: torch.Tensor, size: int) -> torch.Tensor:
    """Scalars [...] as two-hot distributions over -size..size of their transform [..., 2 size + 1]."""
    y = scale(x).clamp(-size, size)
    low = y.floor()
    upper_weight = y - low
    index = (low + size).long()
    out = torch.zeros(*x.shape, 2 * size + 1, device=x.device)
    out.scatter_(-1, index.unsqueeze(-1), (1 - upper_weight).unsqueeze(-1))
    out.scatter_add_(-1, (index + 1).clamp(max=2 * size).unsqueeze(-1), upper_weight.unsqueeze(-1))
    return out


def from_support(logits: torch.Tensor, size: int) -> torch.Tensor:
    bins = torch.arange(-size, size + 1, device=logits.device, dtype=logits.dtype)
    return unscale((logits.softmax(-1) * bins).sum(-1))


# -- networks ---------------------------------------------------------------------------------

def mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(),
                         nn.Linear(hidden, outputs))


def scale_state(s: torch.Tensor) -> torch.Tensor:
    """Each hidden state min-max scaled to [0, 1] (the paper's normalization)."""
    low, high = s.min(-1, keepdim=True).values, s.max(-1, keepdim=True).values
    return (s - low) / (high - low).clamp_min(1e-5)


class MuZeroNet(nn.Module):
    def __init__(self, obs_size: int, num_actions: int, args: Args):
        super().__init__()
        self.num_actions, self.support = num_actions, args.support
        bins = 2 * args.support + 1
        self.representation = mlp(obs_size, args.hidden, args.latent)
        self.dynamics_state = mlp(args.latent + num_actions, args.hidden, args.latent)
        self.dynamics_reward = mlp(args.latent + num_actions, args.hidden, bins)
        self.prediction = mlp(args.latent, args.hidden, num_actions + bins)

    def represent(self, obs: torch.Tensor) -> torch.Tensor:
        return scale_state(self.representation(obs.flatten(1).float()))

    def dynamics(self, state: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(next state, reward logits)."""
        x = torch.cat([state, F.one_hot(actions.long(), self.num_actions).float()], -1)
        return scale_state(self.dynamics_state(x)), self.dynamics_reward(x)

    def predict(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(policy logits, value logits)."""
        out = self.prediction(state)
        return out[:, :self.num_actions], out[:, self.num_actions:]

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.predict(self.represent(obs))


def make_policy(obs_space: gym.Space, action_space: gym.Space, args: Args) -> MuZeroNet:
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ValueError(f"muzero searches over discrete actions; this environment's are {action_space}")
    return MuZeroNet(int(np.prod(obs_space.shape)), int(action_space.n), args)


# -- acting -----------------------------------------------------------------------------------

class LearnedModel:
    """The search's model: one dynamics and prediction call for all the leaves of a simulation."""

    def __init__(self, net: MuZeroNet):
        self.net = net

    def expand(self, states: np.ndarray, actions: np.ndarray) -> Expansion:
        net = self.net
        with torch.no_grad():
            nxt, reward_logits = net.dynamics(on_device(net, states), on_device(net, actions))
            logits, value_logits = net.predict(nxt)
            rewards, values = from_support(reward_logits, net.support), from_support(value_logits, net.support)
        n = len(states)
        return Expansion(to_numpy(nxt), to_numpy(rewards).astype(np.float64), np.zeros(n, bool),
                         np.ones((n, net.num_actions), bool), to_numpy(logits).astype(np.float64),
                         to_numpy(values).astype(np.float64))


class LearnedModelCore(SearchCore):
    def __init__(self, args: Args, index: int, count: int, num_envs: int, seed: int):
        super().__init__(args, index, count, num_envs, seed)
        self.temperature = args.temperature

    def roots(self, net: MuZeroNet, obs: np.ndarray):
        with torch.no_grad():
            states = net.represent(on_device(net, obs))
            logits, _ = net.predict(states)
        return to_numpy(states), np.ones((len(obs), net.num_actions), bool), to_numpy(logits).astype(np.float64)

    def model(self, net: MuZeroNet) -> LearnedModel:
        return LearnedModel(net)

    def search_config(self, training: bool) -> SearchConfig:
        return SearchConfig.of(self.args, training, discount=self.args.gamma, two_player=False, normalize_q=True)


# -- items ------------------------------------------------------------------------------------

def make_items(rollout: Rollout, args: Args) -> dict[str, np.ndarray]:
    """Per segment step t: its observation, the actions of steps t..t+unroll-1, and for each
    position k = 0..unroll (step t + k): the visit distribution, the reward of the action before it,
    the n-step value, and whether the position is still in t's episode (`alive`)."""
    T, K = rollout.num_steps, args.unroll
    values = value_targets(rollout, args, T + K)  # [T + K, B], one per step the positions reach
    ended = rollout.terminated | rollout.truncated
    alive = [np.ones(ended[:T].shape, bool)]  # [T, B] per k: no episode end in steps t..t+k-1
    for k in range(1, K + 1):
        alive.append(alive[-1] & ~ended[k - 1:k - 1 + T])
    at = lambda x, k: x[k:k + T]  # the step at position k of every start
    rewards = rollout.rewards.astype(np.float32)
    reward = [np.zeros((T, rewards.shape[1]), np.float32)] + [
        np.where(alive[k - 1], at(rewards, k - 1), 0.0) for k in range(1, K + 1)]
    per_position = lambda xs: np.stack(xs, axis=2).reshape((-1, K + 1) + xs[0].shape[2:])  # [T * B, K + 1, ...]
    return {"obs": rollout.obs[:T].reshape((-1,) + rollout.obs.shape[2:]).astype(np.float32),
            "actions": np.stack([at(rollout.actions, k) for k in range(K)], axis=2).reshape(-1, K).astype(np.int64),
            "policy": per_position([at(rollout.extras["policy"], k) for k in range(K + 1)]),
            "value": per_position([np.where(alive[k], at(values, k), 0.0) for k in range(K + 1)]).astype(np.float32),
            "reward": per_position(reward).astype(np.float32),
            "alive": per_position(alive).astype(np.float32)}


def value_targets(rollout: Rollout, args: Args, starts: int) -> np.ndarray:
    """The n-step value target of each of the first `starts` steps [starts, B]: td_steps rewards,
    then the search's root value where the window ends inside the episode (the paper's actors
    record it; no reanalysis)."""
    returns, discounts, last = ops.nstep_targets(rollout.rewards, rollout.terminated, rollout.truncated,
                                                 args.gamma, args.td_steps, starts)
    root_value = rollout.extras["root_value"].astype(np.float64)
    envs = np.arange(root_value.shape[1])[None, :]
    # The value of next_obs[last] is the root value one step on, except after a truncation, where the
    # next step is another episode's: the root value at `last` stands in.
    after = np.minimum(last + 1, len(root_value) - 1)
    boot = np.where(rollout.truncated[last, envs], root_value[last, envs], root_value[after, envs])
    return returns + discounts * boot


def history(args: Args) -> History:
    return History(after=args.unroll + args.td_steps)


def table_config(args: Args) -> TableConfig:
    return replay_table(args, args.samples_per_insert)


# -- learner ----------------------------------------------------------------------------------

def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    return x * factor + x.detach() * (1 - factor)


class Learner(LearnerBase):
    def __init__(self, obs_space: gym.Space, action_space: gym.Space, args: Args, device: torch.device):
        super().__init__(args, device)
        self.net = make_policy(obs_space, action_space, args).to(device)
        self.optimizer = ops.adam(list(self.net.parameters()), lr=args.lr, weight_decay=args.weight_decay)

    def update(self, batch: Batch) -> Update:
        a, net = self.args, self.net
        cross_entropy = lambda target, logits: -(target * F.log_softmax(logits, -1)).sum(-1)
        categorical = lambda target, logits: cross_entropy(to_support(target, a.support), logits).mean()
        state, reward_logits = net.represent(batch["obs"]), None
        losses = {"policy": 0.0, "value": 0.0, "reward": 0.0}
        for k in range(a.unroll + 1):
            logits, value_logits = net.predict(state)
            weight = 1.0 if k == 0 else 1.0 / a.unroll  # the unrolled steps together weigh as much as the first
            policy = (cross_entropy(batch["policy"][:, k], logits) * batch["alive"][:, k]).mean()
            losses["policy"] = losses["policy"] + weight * policy
            losses["value"] = losses["value"] + weight * categorical(batch["value"][:, k], value_logits)
            if reward_logits is not None:
                losses["reward"] = losses["reward"] + weight * categorical(batch["reward"][:, k], reward_logits)
            if k < a.unroll:
                state, reward_logits = net.dynamics(state, batch["actions"][:, k])
                state = scale_gradient(state, 0.5)
        loss = losses["policy"] + a.value_coef * losses["value"] + losses["reward"]
        self.minimize(loss, a.max_grad_norm)
        return Update({"loss": loss.item(), **{f"{k}_loss": float(v.detach()) for k, v in losses.items()}})


AGENT = Agent(name="muzero", Args=Args, make_policy=make_policy, make_core=LearnedModelCore, make_items=make_items,
              Learner=Learner, table_config=table_config, history=history,
              run_defaults={"publish_every": 10, "segment_length": 8})
