"""DQN, distributed Ape-X style: actors explore with their own epsilon and
compute n-step targets; the learner samples the broker's replay table.

Switchable in Args: double DQN, dueling head, n-step returns, hard or Polyak
target updates, Huber or squared loss, gradient clipping, noisy nets.

This file also holds what the value-based variants share (their Args, the torso and dueling head,
the exploring core, n-step items, the target network and the update); each variant's own head and
loss live in its file: c51.py, qrdqn.py, iqn.py, fqf.py, mdqn.py (rainbow.py and apex.py combine).
References: Mnih et al. 2015; van Hasselt et al. 2016 (double); Wang et al.
2016 (dueling); Horgan et al. 2018 (Ape-X).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qrl import layers, networks, ops
from qrl.algorithm import ActorCore, Agent, DemoUse, Batch, History, LearnerBase, Rollout, Update, replay_table
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
    anneal_updates: int = 0
    """Decay lr linearly to lr_final over this many updates, then hold it (0: constant lr)."""
    lr_final: float = 0.0
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
    """Huber loss instead of squared error."""
    huber_delta: float = 1.0
    """Huber: TD errors beyond this count linearly, not squared. Scale it with the returns: with
    returns near 100 (CartPole), at 1 the rare large errors (an episode that ends at the track's
    edge) pull no harder than the many small ones, and a solved policy forgets how episodes end."""
    max_grad_norm: float = 10.0
    """Clip the gradient's global norm to this (0: no clipping)."""
    eps_base: float = 0.4
    eps_alpha: float = 7.0
    """Actor i of N explores with eps_base ** (1 + eps_alpha * i / (N - 1))."""
    eps_anneal_frames: int = 10_000
    """Each actor starts at epsilon 1 and anneals to its own epsilon over this many of its frames."""
    noisy: bool = False
    """Noisy nets: factorized Gaussian noise layers explore instead of epsilon-greedy (actors draw new
    noise per segment, the learner per update; evaluation uses the mean weights)."""
    noisy_std: float = 0.5
    """Noisy nets: sigma_0 of the noise scale's initialisation."""
    spectral_norm: bool = False
    """Spectral normalisation of the value function's last hidden layer (qrl/networks.py)."""
    torso: str = "auto"
    """Image observations: the convolutional torso (qrl/networks.py): nature, impala[-se|-cbam], minatar, or auto
    (nature for 36 pixels and more, else minatar); its last layer has `hidden` units."""
    demo_ratio: float = 0.25
    """With run.demos: the fraction of each batch drawn from the demonstration table (DQfD, R2D3),
    the rest from the agent's own replay. Demonstration items are n-step transitions like the
    agent's and take the same TD loss, plus the large-margin loss below."""
    demo_margin: float = 0.8
    """DQfD's large-margin loss on demonstration items: max_a [Q(s, a) + margin (a != a_E)] - Q(s, a_E)."""
    demo_loss_coef: float = 1.0
    """Weight of the large-margin loss (DQfD's lambda_2)."""


def demo_batch(args: Args) -> tuple[int, int]:
    """(agent items, demonstration items) per batch: demo_ratio of batch_size from demonstrations."""
    demos = int(round(args.demo_ratio * args.batch_size))
    return args.batch_size - demos, demos


DEMONSTRATIONS = DemoUse(batch=demo_batch)
"""Demonstrations in replay, for the whole dqn family: the agent's own make_items on the dataset's
episodes (n-step items), a demo_ratio of every batch."""


def table_config(args: Args) -> TableConfig:
    return replay_table(args, args.samples_per_insert)


PRIORITY_FLOOR = 1e-3


# -- network ----------------------------------------------------------------------------------

class QNetwork(nn.Module):
    """Q values from a torso (an MLP, or a convolutional torso on images) and a (dueling) head.
    `outputs`: numbers per action beyond one Q value (the variants' distributions: C51's logits,
    QR-DQN's quantiles); None: the head gives Q. noisy: the torso's last layer and the head are
    noisy layers (the MLP's first layer, like the CNN's convolutions, stays deterministic, as in
    Rainbow, where the fully connected layers are the noisy ones).

    A variant's network is a subclass that says how its head's outputs become Q values
    (`q_from`, `numpy_q_from`); actors call `q_values`, which runs an MLP in numpy."""

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, args: Args, outputs: int | None = None):
        super().__init__()
        linear = functools.partial(layers.NoisyLinear, std_init=args.noisy_std) if args.noisy else nn.Linear
        hidden = args.hidden
        self.image = networks.is_image(obs_shape)
        if self.image:
            self.torso = networks.image_torso(obs_shape, hidden, args.torso, linear)
        else:
            self.torso = nn.Sequential(nn.Linear(int(np.prod(obs_shape)), hidden), nn.ReLU(), linear(hidden, hidden),
                                       nn.ReLU())
        self.num_actions, self.outputs = num_actions, outputs
        self.advantage = linear(hidden, num_actions * (outputs or 1))
        self.value = linear(hidden, outputs or 1) if args.dueling else None
        if args.spectral_norm:
            if args.noisy:
                raise ValueError("algo.spectral_norm does not combine with noisy layers (set algo.noisy=false)")
            networks.spectral_norm_penultimate(self.torso, self.advantage)  # the torso's last layer

    def combine(self, adv, value, xp=torch):
        """The dueling combination of the head's raw outputs (torch tensors or, xp=np, numpy arrays):
        [B, num_actions] Q values, or [B, num_actions, outputs]."""
        if self.outputs is not None:
            adv = adv.reshape(adv.shape[0], self.num_actions, self.outputs)
            value = None if value is None else value.reshape(value.shape[0], 1, self.outputs)
        if value is None:
            return adv
        mean = adv.mean(axis=1, keepdims=True) if xp is np else adv.mean(dim=1, keepdim=True)
        return value + adv - mean

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.combine(self.advantage(h), None if self.value is None else self.value(h))

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        return self.torso(obs) if self.image else self.torso(obs.flatten(1).float())

    def q_from(self, out: torch.Tensor) -> torch.Tensor:
        """The head's outputs -> Q values [B, num_actions]."""
        return out

    numpy_q_from = q_from
    """q_from on numpy arrays."""

    def forward(self, obs: torch.Tensor) -> torch.Tensor:  # [B, *obs_shape] -> [B, num_actions]
        return self.q_from(self.head(self.features(obs)))

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        """The greedy action in torch, noisy layers at their means (qrl.load's ONNX export)."""
        with layers.mean_weights(self):
            return self(obs).argmax(1)

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """forward() on a numpy batch: in numpy for an MLP (see qrl/numpy_mlp.py), else in torch."""
        parts = numpy_twin(self, self._compile_numpy)
        if parts is None:  # CNNs and noisy layers keep torch
            with torch.inference_mode():
                return networks.to_numpy(self(networks.on_device(self, obs)))
        torso, advantage, value = parts
        return self.numpy_q(torso(obs), advantage, value)

    def numpy_q(self, h: np.ndarray, advantage, value) -> np.ndarray:
        """The head in numpy on the torso's features h: the hot path of every dqn/apex actor step."""
        return self.numpy_q_from(self.combine(advantage(h), None if value is None else value(h), xp=np))

    def _compile_numpy(self):
        if self.image or any(nn.utils.parametrize.is_parametrized(m) for m in self.modules()):
            return None  # (spectral norm: a weight computed at each forward, no live storage to read)
        parts = [compile_mlp(self.torso), compile_mlp(self.advantage)]
        parts.append(None if self.value is None else compile_mlp(self.value))
        if None in parts[:2] or (self.value is not None and parts[2] is None):
            return None
        return parts


def discrete_policy(network: type[QNetwork], obs_space: gym.Space, action_space: gym.Space, args: Args) -> QNetwork:
    """A value-based variant's network for these spaces (discrete actions only)."""
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ValueError(f"{network.__module__.rsplit('.', 1)[-1]} needs a discrete action space, got {action_space}")
    return network(networks.obs_shape(obs_space), int(action_space.n), args)


def make_policy(obs_space: gym.Space, action_space: gym.Space, args: Args) -> QNetwork:
    return discrete_policy(QNetwork, obs_space, action_space, args)


# -- actor side -------------------------------------------------------------------------------

def history(args: Args) -> History:
    return History(after=args.n_step - 1)


class EpsilonExploration(ActorCore):
    """Greedy in the action values, else uniformly random: actor i of N anneals from epsilon 1 to
    its own Ape-X epsilon over its first eps_anneal_frames frames. Cores of other value-based
    agents (ql, r2d2) are this with their own forward."""

    def __init__(self, args: Any, index: int, count: int, num_envs: int, seed: int):
        super().__init__(args, index, count, num_envs, seed)
        self.epsilon = ops.apex_epsilon(index, count, args.eps_base, args.eps_alpha)
        self.rng = np.random.default_rng(seed)
        self.frames = 0

    def action_values(self, outputs: np.ndarray) -> np.ndarray:
        return outputs

    def select(self, net, q: np.ndarray):
        return self.explore(q.argmax(axis=1), q.shape[1]), {}

    def explore(self, actions: np.ndarray, num_actions: int) -> np.ndarray:
        eps = ops.linear_schedule(1.0, self.epsilon, self.args.eps_anneal_frames, self.frames)
        self.frames += len(actions)
        explore = self.rng.random(len(actions)) < eps
        if explore.any():
            actions[explore] = self.rng.integers(0, num_actions, size=int(explore.sum()))
        return actions


class EpsilonGreedy(EpsilonExploration):
    """EpsilonExploration on the Q network; with noisy nets there is no epsilon: each segment acts
    greedily under new noise, and evaluation under the mean weights."""

    def __init__(self, args: Args, index: int, count: int, num_envs: int, seed: int):
        super().__init__(args, index, count, num_envs, seed)
        self.noise = torch.Generator().manual_seed(seed) if args.noisy else None

    def begin_segment(self, net: QNetwork) -> None:
        if self.noise is not None:
            layers.sample_noise(net, self.noise)

    def forward(self, net: QNetwork, obs, state, episode_start):  # Q values [B, num_actions]
        return net.q_values(obs), state

    def greedy(self, net: QNetwork, obs, state, episode_start):
        with layers.mean_weights(net):
            return super().greedy(net, obs, state, episode_start)

    def explore(self, actions: np.ndarray, num_actions: int) -> np.ndarray:
        return actions if self.noise is not None else super().explore(actions, num_actions)


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
    """What the value-based variants share: online and target networks, the update (noise, loss,
    lr anneal, gradient step, target update) and the priorities sent back. A variant gives its
    network (`make_policy`) and its `loss`."""

    checkpointed = ("net", "target", "optimizer")
    make_policy = staticmethod(make_policy)

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, args: Args, device: torch.device):
        super().__init__(args, device)
        self.net = self.make_policy(obs_space, action_space, args).to(device)
        self.target = self.make_policy(obs_space, action_space, args).to(device)
        self.target.load_state_dict(self.net.state_dict())
        self.optimizer = ops.adam(self.trained_parameters(), lr=args.lr)

    def trained_parameters(self) -> list[torch.Tensor]:
        """The parameters the loss trains (the main optimizer's)."""
        return list(self.net.parameters())

    def update(self, batch: Batch) -> Update:
        a = self.args
        if a.noisy:  # new noise for every update
            layers.sample_noise(self.net)
            layers.sample_noise(self.target)
        agent_items = len(batch) if batch.fields else 0  # (priorities go back for these only)
        batch = with_demos(batch)
        per_item, q, td = self.loss(batch)
        loss = batch.weighted_mean(per_item)  # importance weights correct prioritized sampling
        margin = None
        if batch.demos is not None:
            margin = self.margin_loss(batch.demos)
            loss = loss + a.demo_loss_coef * margin
        if a.anneal_updates:
            for group in self.optimizer.param_groups:
                group["lr"] = ops.linear_schedule(a.lr, a.lr_final, a.anneal_updates, self.updates)
        self.minimize(loss, a.max_grad_norm)
        if a.target_tau < 1.0:
            ops.polyak_update(self.parameters_of(self.target), self.parameters_of(self.net), a.target_tau)
        elif self.updates % a.target_update_every == 0:
            self.target.load_state_dict(self.net.state_dict())
        metrics = {"loss": loss.item(), "q_mean": q.mean().item(),
                   **({} if margin is None else {"demo_margin_loss": margin.item()})}
        if batch.weights is None:
            return Update(metrics)
        # prioritized replay: new priorities for the sampled agent items (+ a floor so none starves)
        return Update(metrics, td[:agent_items].detach().abs().cpu().numpy() + PRIORITY_FLOOR)

    def margin_loss(self, demos: dict[str, torch.Tensor]) -> torch.Tensor:
        """DQfD's large-margin classification loss: the demonstrated action's Q value must exceed
        every other's by demo_margin (mean over the demonstration items)."""
        q = self.net(demos["obs"])
        margins = torch.full_like(q, self.args.demo_margin).scatter_(1, demos["action"].unsqueeze(1), 0.0)
        return ((q + margins).max(dim=1).values - q.gather(1, demos["action"].unsqueeze(1)).squeeze(1)).mean()

    def loss(self, t: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-item loss, the taken actions' Q values, and the per-item error that becomes the
        priority. DQN: Huber (or squared) TD loss toward return + discount * Q_target(next, a*),
        a* the online net's argmax (double DQN) or the target's."""
        n = len(t["obs"])
        if self.args.double:  # one forward pass of the online net over obs and next_obs together
            q_all = self.net(torch.cat([t["obs"], t["next_obs"]]))
            q_online, best_next = q_all[:n], q_all[n:].detach().argmax(dim=1, keepdim=True)
        else:
            q_online = self.net(t["obs"])
        q = q_online.gather(1, t["action"].unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            q_next_target = self.target(t["next_obs"])
            if self.args.double:
                q_next = q_next_target.gather(1, best_next).squeeze(1)
            else:
                q_next = q_next_target.max(dim=1).values
            td_target = t["return"] + t["discount"] * q_next  # discount already holds gamma^k and termination
        return self.td_loss(q, td_target), q, td_target - q

    def td_loss(self, q: torch.Tensor, td_target: torch.Tensor) -> torch.Tensor:
        if self.args.huber:
            return F.huber_loss(q, td_target, reduction="none", delta=self.args.huber_delta)
        return F.mse_loss(q, td_target, reduction="none")


def with_demos(batch: Batch) -> Batch:
    """The batch's agent items and demonstration items as one batch (agent items first; the
    demonstration items, sampled uniformly, weigh 1 under prioritized replay); demos kept as they are."""
    if batch.demos is None:
        return batch
    if not batch.fields:
        return Batch(dict(batch.demos), demos=batch.demos)
    fields = {k: torch.cat([v, batch.demos[k]]) for k, v in batch.fields.items()}
    weights = batch.weights
    if weights is not None:
        weights = torch.cat([weights, torch.ones(len(batch.demos["obs"]), device=weights.device)])
    return Batch(fields, batch.ids, weights, batch.demos)


AGENT = Agent(name="dqn", Args=Args, make_policy=make_policy, make_core=EpsilonGreedy, make_items=make_items,
              Learner=Learner, table_config=table_config, history=history, demonstrations=DEMONSTRATIONS)
