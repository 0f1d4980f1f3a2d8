"""DDPG for continuous actions on the broker's replay table, with TD3's three changes as
switches (algorithms/td3.py turns them on): twin critics with the smaller target, target
policy smoothing, and delayed policy updates.

Actors act with the deterministic policy plus Gaussian noise (uniformly random actions for
their first random_frames frames) and push (n-step) transitions; the learner trains the critic
toward r + discount * Q'(s', mu'(s')) and the policy to maximize Q(s, mu(s)), with Polyak targets.
References: Lillicrap et al. 2016 (DDPG); Fujimoto et al. 2018 (TD3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qrl import networks, ops
from qrl.algorithm import ActorCore, Agent, Batch, History, LearnerBase, Rollout, Update, replay_table
from qrl.algorithms import dqn
from qrl.brokers.tables import TableConfig


@dataclass(frozen=True)
class Args:
    hidden: list[int] = field(default_factory=lambda: [400, 300])
    """Hidden layer widths of the policy and of each critic."""
    lr: float = 1e-3
    gamma: float = 0.98
    n_step: int = 1
    batch_size: int = 256
    buffer_size: int = 200_000
    learning_starts: int = 1_000
    """Items in the replay table before the first batch is served."""
    updates_per_step: float = 1.0
    """Learner updates per environment step, held by the broker's rate limiter."""
    spectral_norm: bool = False
    """Spectral normalisation of the value function's last hidden layer (qrl/networks.py)."""
    torso: str = "auto"
    """Image observations: the convolutional torso each network has of its own (qrl/networks.py):
    nature, impala[-se|-cbam], minatar, or auto (nature for 36 pixels and more, else minatar); its last layer
    has hidden[0] units."""
    tau: float = 0.005
    exploration_noise: float = 0.1
    """Std of the Gaussian added to the policy's action on actors, as a fraction of half the action range."""
    random_frames: int = 1_000
    """Each actor's first frames use uniformly random actions."""
    twin_critics: bool = False
    policy_delay: int = 1
    """Update the policy (and the targets) every this many critic updates."""
    target_noise: float = 0.0
    """Target policy smoothing: std of the noise on mu'(s'), fraction of half the action range (0: off)."""
    target_noise_clip: float = 0.5


def table_config(args: Args) -> TableConfig:
    return replay_table(args, args.updates_per_step * args.batch_size)


# -- networks ---------------------------------------------------------------------------------

def mlp(inputs: int, hidden: tuple, outputs: int) -> nn.Sequential:
    layers, width = [], inputs
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, outputs))


class Policy(nn.Module):
    """mu(s): a tanh MLP scaled to the action bounds (on images: after a torso of its own)."""

    def __init__(self, obs_shape: tuple[int, ...], action_space: gym.spaces.Box, args: Args):
        super().__init__()
        self.encoder = networks.Encoder(obs_shape, args.hidden[0], args.torso)
        self.net = mlp(self.encoder.out_features, tuple(args.hidden), int(np.prod(action_space.shape)))
        self.register_buffer("center", torch.as_tensor((action_space.high + action_space.low) / 2, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor((action_space.high - action_space.low) / 2, dtype=torch.float32))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.center + self.scale * torch.tanh(self.net(self.encoder(obs)))

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        """The policy's action, the one it acts with before exploration noise (ONNX export)."""
        return self(obs)


class Critic(nn.Module):
    """Q(s, a): an MLP on the observation (on images: a torso's features) and the action."""

    def __init__(self, obs_shape: tuple[int, ...], action_dim: int, args: Args):
        super().__init__()
        self.encoder = networks.Encoder(obs_shape, args.hidden[0], args.torso)
        self.net = mlp(self.encoder.out_features + action_dim, tuple(args.hidden), 1)
        if args.spectral_norm:
            networks.spectral_norm_penultimate(self.encoder, self.net)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([self.encoder(obs), action], dim=1)).squeeze(1)


def make_policy(obs_space: gym.Space, action_space: gym.Space, args: Args) -> Policy:
    if not isinstance(action_space, gym.spaces.Box):
        raise ValueError(f"this algorithm needs continuous (Box) actions, got {action_space}")
    return Policy(networks.obs_shape(obs_space), action_space, args)


# -- actor side -------------------------------------------------------------------------------

def history(args: Args) -> History:
    return History(after=args.n_step - 1)


class GaussianNoise(ActorCore):
    """Uniformly random actions for the first random_frames frames, then the policy's action plus
    Gaussian noise, clipped to the bounds."""

    def __init__(self, args: Args, index: int, count: int, num_envs: int, seed: int):
        super().__init__(args, index, count, num_envs, seed)
        self.rng = np.random.default_rng(seed)
        self.frames = 0

    def forward(self, net: Policy, obs, state, episode_start):  # the policy's actions [B, action_dim]
        with torch.inference_mode():
            return networks.to_numpy(net(networks.on_device(net, obs))), state

    def greedy(self, net: Policy, obs, state, episode_start):
        return self.forward(net, obs, state, episode_start)

    def select(self, net: Policy, action: np.ndarray):
        """Random actions for the first random_frames frames, then the policy's plus noise."""
        low, high = networks.to_numpy(net.center - net.scale), networks.to_numpy(net.center + net.scale)
        n = len(action)
        self.frames += n
        if self.frames <= self.args.random_frames:
            return self.rng.uniform(low, high, size=(n,) + low.shape).astype(np.float32), {}
        noise = self.rng.normal(0.0, self.args.exploration_noise, size=action.shape) * networks.to_numpy(net.scale)
        return np.clip(action + noise, low, high).astype(np.float32), {}


def make_items(rollout: Rollout, args: Args) -> dict[str, np.ndarray]:
    items = dqn.make_items(rollout, args)  # (n-step) transitions; actions stay float here
    items["action"] = rollout.actions[:rollout.num_steps].reshape((-1,) + rollout.actions.shape[2:]).astype(np.float32)
    return items


# -- learner side -----------------------------------------------------------------------------

class Learner(LearnerBase):
    checkpointed = ("net", "target_policy", "critics", "target_critics", "policy_optimizer", "critic_optimizer")

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, args: Args, device: torch.device):
        super().__init__(args, device)
        obs_shape, action_dim = networks.obs_shape(obs_space), int(np.prod(action_space.shape))
        self.net = make_policy(obs_space, action_space, args).to(device)
        self.target_policy = make_policy(obs_space, action_space, args).to(device)
        self.target_policy.load_state_dict(self.net.state_dict())
        n_critics = 2 if args.twin_critics else 1
        self.critics = nn.ModuleList(Critic(obs_shape, action_dim, args) for _ in range(n_critics)).to(device)
        self.target_critics = nn.ModuleList(Critic(obs_shape, action_dim, args) for _ in range(n_critics)).to(device)
        self.target_critics.load_state_dict(self.critics.state_dict())
        self.policy_optimizer = ops.adam(self.net.parameters(), lr=args.lr)
        self.critic_optimizer = ops.adam(self.critics.parameters(), lr=args.lr)
        self.last_policy_loss = 0.0

    def update(self, batch: Batch) -> Update:
        a = self.args
        with torch.no_grad():
            next_action = self.target_policy(batch["next_obs"])
            if a.target_noise > 0:  # TD3: smooth the target over nearby actions
                noise = (torch.randn_like(next_action) * a.target_noise).clamp(-a.target_noise_clip,
                                                                               a.target_noise_clip)
                next_action = torch.max(torch.min(next_action + noise * self.net.scale,
                                                  self.net.center + self.net.scale), self.net.center - self.net.scale)
            q_next = torch.stack([c(batch["next_obs"], next_action) for c in self.target_critics]).min(dim=0).values
            target = batch["return"] + batch["discount"] * q_next
        critic_loss = sum(F.mse_loss(c(batch["obs"], batch["action"]), target) for c in self.critics)
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()
        self.updates += 1
        if self.updates % a.policy_delay == 0:
            policy_loss = -self.critics[0](batch["obs"], self.net(batch["obs"])).mean()
            self.policy_optimizer.zero_grad(set_to_none=True)
            policy_loss.backward()
            self.policy_optimizer.step()
            self.last_policy_loss = policy_loss.item()
            ops.polyak_update(self.parameters_of(self.target_policy), self.parameters_of(self.net), a.tau)
            ops.polyak_update(self.parameters_of(self.target_critics), self.parameters_of(self.critics), a.tau)
        return Update({"critic_loss": critic_loss.item(), "policy_loss": self.last_policy_loss,
                       "q_target": target.mean().item()})



AGENT = Agent(name="ddpg", Args=Args, make_policy=make_policy, make_core=GaussianNoise, make_items=make_items,
              Learner=Learner, table_config=table_config, history=history)
