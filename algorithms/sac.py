"""Soft actor-critic on the broker's replay table, with automatic temperature: continuous
actions (a tanh-squashed Gaussian policy) and a discrete-action variant (a categorical
policy whose expectations over actions are computed exactly).

Twin critics and Polyak targets; the critic target is r + discount * (min Q'(s', a') -
alpha log pi(a'|s')); the policy minimizes alpha log pi - min Q; alpha is tuned so the
policy's entropy tracks a target (-|A| for continuous actions, a fraction of log |A| for
discrete). References: Haarnoja et al. 2018 (SAC, automatic temperature); Christodoulou 2019
(discrete SAC).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qrl import networks, ops
from qrl.algorithm import ActorCore, Agent, Batch, LearnerBase, Rollout, Update, replay_table
from qrl.algorithms import ddpg, dqn
from qrl.algorithms.ddpg import mlp
from qrl.brokers.tables import TableConfig

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


@dataclass(frozen=True)
class Args:
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    lr: float = 3e-4
    gamma: float = 0.99
    n_step: int = 1
    batch_size: int = 256
    buffer_size: int = 1_000_000
    learning_starts: int = 100
    updates_per_step: float = 1.0
    """Learner updates per environment step, held by the broker's rate limiter."""
    tau: float = 0.005
    init_alpha: float = 1.0
    target_entropy_scale: float = 0.6
    """Discrete actions: target entropy = this * log |A| (continuous: -|A|)."""
    random_frames: int = 100
    """Each actor's first frames use uniformly random actions."""
    spectral_norm: bool = False
    """Spectral normalisation of the value function's last hidden layer (qrl/networks.py)."""
    torso: str = "auto"
    """Image observations: the convolutional torso each network has of its own (qrl/networks.py):
    nature, impala[-se|-cbam], minatar, or auto (nature for 36 pixels and more, else minatar); its last layer
    has hidden[0] units."""


def table_config(args: Args) -> TableConfig:
    return replay_table(args, args.updates_per_step * args.batch_size)



def _device(generator: torch.Generator | None, like: torch.Tensor) -> torch.device:
    """Where a draw with this generator happens: the generator's device (an actor core's is the
    CPU's, also when a central inference server runs the policy on a GPU), else like's."""
    return generator.device if generator is not None else like.device


# -- networks ---------------------------------------------------------------------------------

class Policy(nn.Module):
    """A squashed Gaussian (continuous) or a categorical (discrete) policy: an MLP (on images, after
    a torso of its own)."""

    def __init__(self, obs_shape: tuple[int, ...], action_space: gym.Space, args: Args):
        super().__init__()
        hidden = args.hidden
        self.encoder = networks.Encoder(obs_shape, hidden[0], args.torso)
        obs_dim = self.encoder.out_features
        self.continuous = isinstance(action_space, gym.spaces.Box)
        if self.continuous:
            n = int(np.prod(action_space.shape))
            self.net = mlp(obs_dim, tuple(hidden), 2 * n)
            self.register_buffer("center", torch.as_tensor((action_space.high + action_space.low) / 2,
                                                           dtype=torch.float32))
            self.register_buffer("scale", torch.as_tensor((action_space.high - action_space.low) / 2,
                                                          dtype=torch.float32))
        else:
            self.net = mlp(obs_dim, tuple(hidden), int(action_space.n))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(self.encoder(obs))

    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None):
        """Continuous: (action, log pi(action)). Discrete: (action, log-probabilities of all actions)."""
        return self.sample_from(self(obs), generator)

    def sample_from(self, out: torch.Tensor, generator: torch.Generator | None = None):
        """sample() given the network's output."""
        if not self.continuous:
            logp_all = F.log_softmax(out, dim=1)
            action = torch.multinomial(logp_all.exp().to(_device(generator, out)), 1, generator=generator).squeeze(1)
            return action, logp_all
        mean, log_std = out.chunk(2, dim=1)
        std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp()
        u = mean + std * torch.randn(mean.shape, generator=generator, device=_device(generator, mean)).to(mean.device)
        a = torch.tanh(u)
        # log pi of the squashed action: Gaussian density minus log |d tanh / du| per dimension
        logp = torch.distributions.Normal(mean, std).log_prob(u) - torch.log(1 - a.pow(2) + 1e-6)
        return self.center + self.scale * a, logp.sum(1)

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        """The deterministic action (ONNX export): greedy()."""
        return self.greedy(obs)

    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        out = self(obs)
        if not self.continuous:
            return out.argmax(dim=1)
        return self.center + self.scale * torch.tanh(out.chunk(2, dim=1)[0])


class Critic(nn.Module):
    """Q(s, a) for continuous actions, or Q(s, .) over all discrete actions."""

    def __init__(self, obs_shape: tuple[int, ...], action_space: gym.Space, args: Args):
        super().__init__()
        hidden = args.hidden
        self.encoder = networks.Encoder(obs_shape, hidden[0], args.torso)
        obs_dim = self.encoder.out_features
        self.continuous = isinstance(action_space, gym.spaces.Box)
        if self.continuous:
            self.net = mlp(obs_dim + int(np.prod(action_space.shape)), tuple(hidden), 1)
        else:
            self.net = mlp(obs_dim, tuple(hidden), int(action_space.n))
        if args.spectral_norm:
            networks.spectral_norm_penultimate(self.encoder, self.net)

    def forward(self, obs: torch.Tensor, action: torch.Tensor | None = None) -> torch.Tensor:
        if self.continuous:
            return self.net(torch.cat([self.encoder(obs), action], dim=1)).squeeze(1)
        return self.net(self.encoder(obs))


def make_policy(obs_space: gym.Space, action_space: gym.Space, args: Args) -> Policy:
    if not isinstance(action_space, (gym.spaces.Box, gym.spaces.Discrete)):
        raise ValueError(f"sac needs Box or Discrete actions, got {action_space}")
    return Policy(networks.obs_shape(obs_space), action_space, args)


# -- actor side -------------------------------------------------------------------------------

class PolicySampling(ActorCore):
    """Uniformly random actions for the first random_frames frames, then samples of the policy."""

    def __init__(self, args: Args, index: int, count: int, num_envs: int, seed: int):
        super().__init__(args, index, count, num_envs, seed)
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.frames = 0

    def forward(self, net: Policy, obs, state, episode_start):  # the policy's distribution parameters
        with torch.inference_mode():
            return net(networks.on_device(net, obs)), state

    def greedy(self, net: Policy, obs, state, episode_start):
        with torch.inference_mode():
            return networks.to_numpy(net.greedy(networks.on_device(net, obs))), state

    def select(self, net: Policy, outputs: torch.Tensor):
        """Random actions for the first random_frames frames, then samples of the policy."""
        n = len(outputs)
        self.frames += n
        if self.frames <= self.args.random_frames:
            if net.continuous:
                low, high = networks.to_numpy(net.center - net.scale), networks.to_numpy(net.center + net.scale)
                return self.rng.uniform(low, high, size=(n,) + low.shape).astype(np.float32), {}
            return self.rng.integers(0, net.net[-1].out_features, size=n), {}
        with torch.inference_mode():
            action, _ = net.sample_from(outputs, self.generator)
        action = networks.to_numpy(action)
        return (action.astype(np.float32) if net.continuous else action), {}


def make_items(rollout: Rollout, args: Args) -> dict[str, np.ndarray]:
    items = dqn.make_items(rollout, args)
    if np.issubdtype(rollout.actions.dtype, np.floating):
        actions = rollout.actions[:rollout.num_steps]
        items["action"] = actions.reshape((-1,) + actions.shape[2:]).astype(np.float32)
    return items


# -- learner side -----------------------------------------------------------------------------

class Learner(LearnerBase):
    checkpointed = ("net", "critics", "target_critics", "log_alpha", "policy_optimizer", "critic_optimizer",
                    "alpha_optimizer")

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, args: Args, device: torch.device):
        super().__init__(args, device)
        obs_shape = networks.obs_shape(obs_space)
        self.net = make_policy(obs_space, action_space, args).to(device)
        self.critics = nn.ModuleList(Critic(obs_shape, action_space, args) for _ in range(2)).to(device)
        self.target_critics = nn.ModuleList(Critic(obs_shape, action_space, args) for _ in range(2)).to(device)
        self.target_critics.load_state_dict(self.critics.state_dict())
        self.log_alpha = torch.tensor(float(np.log(args.init_alpha)), device=device, requires_grad=True)
        if self.net.continuous:
            self.target_entropy = -float(np.prod(action_space.shape))
        else:
            self.target_entropy = args.target_entropy_scale * self.uniform_entropy(int(action_space.n))
        self.policy_optimizer = ops.adam(self.net.parameters(), lr=args.lr)
        self.critic_optimizer = ops.adam(self.critics.parameters(), lr=args.lr)
        self.alpha_optimizer = ops.adam([self.log_alpha], lr=args.lr)

    def log_pi(self, logp: torch.Tensor) -> torch.Tensor:
        """The regularizer's log term of log-probabilities: the entropy is E[-log_pi(log pi)]. SAC's
        Shannon entropy: log pi itself (TAC: its q-logarithm)."""
        return logp

    def uniform_entropy(self, n: int) -> float:
        """The regularizer's entropy of the uniform policy over n discrete actions."""
        return float(np.log(n))

    def update(self, batch: Batch) -> Update:
        a = self.args
        alpha = self.log_alpha.exp().detach()
        obs, next_obs = batch["obs"], batch["next_obs"]
        with torch.no_grad():
            if self.net.continuous:
                next_action, next_logp = self.net.sample(next_obs)
                q_next = torch.min(*(c(next_obs, next_action) for c in self.target_critics))
                v_next = q_next - alpha * self.log_pi(next_logp)
            else:  # exact expectation over the next actions
                _, next_logp_all = self.net.sample(next_obs)
                q_next = torch.min(*(c(next_obs) for c in self.target_critics))
                v_next = (next_logp_all.exp() * (q_next - alpha * self.log_pi(next_logp_all))).sum(1)
            target = batch["return"] + batch["discount"] * v_next
        if self.net.continuous:
            q = [c(obs, batch["action"]) for c in self.critics]
        else:
            q = [c(obs).gather(1, batch["action"].long().unsqueeze(1)).squeeze(1) for c in self.critics]
        critic_loss = sum(F.mse_loss(qi, target) for qi in q)
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()

        if self.net.continuous:
            action, logp = self.net.sample(obs)
            q_pi = torch.min(*(c(obs, action) for c in self.critics))
            log_term = self.log_pi(logp)
            policy_loss = (alpha * log_term - q_pi).mean()
            entropy = -log_term.detach()
        else:
            _, logp_all = self.net.sample(obs)
            with torch.no_grad():
                q_all = torch.min(*(c(obs) for c in self.critics))
            probs, log_term = logp_all.exp(), self.log_pi(logp_all)
            policy_loss = (probs * (alpha * log_term - q_all)).sum(1).mean()
            entropy = -(probs * log_term).sum(1).detach()
        self.policy_optimizer.zero_grad(set_to_none=True)
        policy_loss.backward()
        self.policy_optimizer.step()

        alpha_loss = (self.log_alpha * (entropy - self.target_entropy)).mean()
        self.alpha_optimizer.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_optimizer.step()
        ops.polyak_update(self.parameters_of(self.target_critics), self.parameters_of(self.critics), a.tau)
        self.updates += 1
        return Update({"critic_loss": critic_loss.item(), "policy_loss": policy_loss.item(), "alpha": alpha.item(),
                "entropy": entropy.mean().item()})


AGENT = Agent(name="sac", Args=Args, make_policy=make_policy, make_core=PolicySampling, make_items=make_items,
              Learner=Learner, table_config=table_config, history=ddpg.history)
