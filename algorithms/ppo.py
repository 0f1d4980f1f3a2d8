"""PPO fed from the broker's on-policy FIFO queue, for discrete (categorical) and continuous
(diagonal Gaussian) actions.

Actors push one item per environment: a length-T unroll with each step's true next
observation (so a time-limit truncation still bootstraps) and the behaviour policy's
log-probability. The learner takes a batch of unrolls, computes GAE with its current value
function, and runs several epochs of clipped-objective minibatch updates (optional value
clipping, advantage normalization, entropy bonus); every update is published as new weights.
Unrolls made by weights more than max_policy_lag versions old are dropped by the broker.
References: Schulman et al. 2017 (PPO), 2016 (GAE); Andrychowicz et al. 2021 (what matters).
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
from qrl.numpy_mlp import compile_mlp, numpy_twin, sample_categorical


@dataclass(frozen=True)
class Args:
    hidden: int = 64
    """Width of the two tanh hidden layers of the separate policy and value networks."""
    lr: float = 3e-4
    anneal_updates: int = 0
    """Decay lr and clip_range linearly to 0 over this many updates (0: constant)."""
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    clip_value: float = 0.0
    """Clip the value update around the old values by this much (0: no value clipping)."""
    normalize_advantages: bool = True
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    epochs: int = 10
    minibatches: int = 4
    batch_size: int = 8
    """Unrolls (one per actor environment, run.segment_length steps each) per update."""
    queue_capacity: int = 16
    """Unrolls the broker queues; actors are held back beyond it, so data stays near on-policy."""
    max_policy_lag: int = 4
    """Unrolls made by weights older than this many versions are dropped (and counted)."""
    log_std_init: float = 0.0
    """Continuous actions: initial log standard deviation (learned)."""
    use_sde: bool = False
    """Continuous actions: generalized state-dependent exploration (gSDE): the noise is a linear
    function of the policy's last hidden features, with weights resampled every sde_sample_freq
    steps, instead of independent Gaussian noise at every step (Raffin et al. 2022)."""
    sde_sample_freq: int = 4


# One PPO iteration per learner update: every update's weights go to the actors.
RUN_DEFAULTS = {"publish_every": 1}


def table_config(args: Args) -> TableConfig:
    return TableConfig(capacity=args.queue_capacity, sampler="fifo", min_size=0, samples_per_insert=0.0,
                       max_policy_lag=args.max_policy_lag)


# -- network ----------------------------------------------------------------------------------

def mlp(inputs: int, hidden: int, outputs: int, out_gain: float) -> nn.Sequential:
    layers = [nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, outputs)]
    for layer in layers:  # orthogonal init, as in the PPO implementations that reach published returns
        if isinstance(layer, nn.Linear):
            nn.init.orthogonal_(layer.weight, np.sqrt(2) if layer is not layers[-1] else out_gain)
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    def __init__(self, obs_dim: int, action_space: gym.Space, hidden: int, log_std_init: float, sde: bool = False):
        super().__init__()
        self.continuous = isinstance(action_space, gym.spaces.Box)
        self.sde = sde and self.continuous
        n_out = int(np.prod(action_space.shape)) if self.continuous else int(action_space.n)
        self.policy = mlp(obs_dim, hidden, n_out, 0.01)
        self.value = mlp(obs_dim, hidden, 1, 1.0)
        if self.continuous:
            # gSDE: one log std per (hidden feature, action dimension); else one per action dimension.
            self.log_std = nn.Parameter(torch.full((hidden, n_out) if self.sde else (n_out,), log_std_init))
            self.register_buffer("low", torch.as_tensor(action_space.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(action_space.high, dtype=torch.float32))

    def features(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden features, policy output)."""
        latent = self.policy[:-1](obs.flatten(1).float())
        return latent, self.policy[-1](latent)

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Distribution:
        latent, out = self.features(obs)
        if self.sde:  # the action noise latent @ W, W ~ N(0, std^2), has variance latent^2 @ std^2
            variance = (latent.detach() ** 2) @ (self.log_std.exp() ** 2)
            return torch.distributions.Normal(out, torch.sqrt(variance + 1e-6))
        if self.continuous:
            return torch.distributions.Normal(out, self.log_std.exp().expand_as(out))
        return torch.distributions.Categorical(logits=out)

    def log_prob(self, dist: torch.distributions.Distribution, actions: torch.Tensor) -> torch.Tensor:
        lp = dist.log_prob(actions)
        return lp.sum(-1) if self.continuous else lp

    def values(self, obs: torch.Tensor) -> torch.Tensor:
        return self.value(obs.flatten(1).float()).squeeze(-1)

    def logits(self, obs: np.ndarray) -> np.ndarray:
        """Discrete actions: the policy's logits for a numpy batch, in numpy for an MLP (see
        qrl/numpy_mlp.py), else in torch."""
        policy = numpy_twin(self, lambda: compile_mlp(self.policy))
        if policy is None:
            with torch.inference_mode():
                return self.features(torch.as_tensor(obs))[1].numpy()
        return policy(obs)


def make_policy(obs_space: gym.Space, action_space: gym.Space, args: Args) -> ActorCritic:
    if not isinstance(action_space, (gym.spaces.Discrete, gym.spaces.Box)):
        raise ValueError(f"ppo needs Discrete or Box actions, got {action_space}")
    return ActorCritic(int(np.prod(obs_space.shape)), action_space, args.hidden, args.log_std_init, args.use_sde)


# -- actor side -------------------------------------------------------------------------------

def rollout_overlap(args: Args) -> int:
    return 0


@dataclass
class ActorState:
    generator: torch.Generator  # continuous actions
    rng: np.random.Generator  # discrete actions (uniforms for inverse-CDF sampling)
    steps: int = 0
    sde_weights: torch.Tensor | None = None  # gSDE: [num_envs, hidden, action_dim], resampled periodically


def init_actor(index: int, count: int, num_envs: int, args: Args, seed: int) -> ActorState:
    return ActorState(torch.Generator().manual_seed(seed), np.random.default_rng(seed))


def _env_action(net: ActorCritic, action: torch.Tensor) -> np.ndarray:
    # The Gaussian's sample is what the log-probability is of; the env gets it clipped to bounds.
    return torch.clamp(action, net.low, net.high).numpy()


def act(net: ActorCritic, obs: np.ndarray, state: ActorState, args: Args) -> tuple[np.ndarray, dict[str, Any]]:
    if not net.continuous:
        actions, logp = sample_categorical(net.logits(obs), state.rng.random(len(obs)))
        return actions, {"logp": logp}
    with torch.inference_mode():
        dist = net.distribution(torch.as_tensor(obs))
        if net.sde:
            if state.steps % args.sde_sample_freq == 0 or state.sde_weights is None:
                std = net.log_std.exp()
                state.sde_weights = std * torch.randn((len(obs),) + std.shape, generator=state.generator)
            latent, _ = net.features(torch.as_tensor(obs))
            action = dist.mean + torch.einsum("bh,bha->ba", latent, state.sde_weights)
        else:
            action = dist.mean + dist.stddev * torch.randn(dist.mean.shape, generator=state.generator)
        logp = net.log_prob(dist, action)
    state.steps += 1
    return _env_action(net, action), {"logp": logp.numpy().astype(np.float32),
                                      "raw_action": action.numpy().astype(np.float32)}


def greedy_act(net: ActorCritic, obs: np.ndarray) -> np.ndarray:
    if not net.continuous:
        return net.logits(obs).argmax(axis=1)
    with torch.inference_mode():
        return _env_action(net, net.distribution(torch.as_tensor(obs)).mean)


def make_items(rollout: Rollout, num_steps: int, args: Args) -> dict[str, np.ndarray]:
    """One item per environment: its [T, ...] unroll (time-major in the rollout, so swap axes)."""
    per_env = lambda x: np.ascontiguousarray(np.swapaxes(x[:num_steps], 0, 1))
    actions = rollout.extras.get("raw_action", rollout.actions)
    return {
        "obs": per_env(rollout.obs),
        "action": per_env(actions).astype(np.float32 if "raw_action" in rollout.extras else np.int64),
        "logp": per_env(rollout.extras["logp"]),
        "reward": per_env(rollout.rewards).astype(np.float32),
        "terminated": per_env(rollout.terminated),
        "truncated": per_env(rollout.truncated),
        "next_obs": per_env(rollout.next_obs),
    }


# -- learner side -----------------------------------------------------------------------------

class Learner:
    def __init__(self, obs_space: gym.Space, action_space: gym.Space, args: Args, device: torch.device):
        self.args, self.device = args, device
        self.net = make_policy(obs_space, action_space, args).to(device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=args.lr, eps=1e-5)
        self.updates = 0

    def update(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        a = self.args
        t = {k: torch.tensor(v, device=self.device) for k, v in batch.items() if not k.startswith("_")}
        N, T = t["reward"].shape
        flat = lambda x: x.reshape((N * T,) + x.shape[2:])
        with torch.no_grad():  # GAE under the current value function, time-major [T, N]
            values = self.net.values(flat(t["obs"])).reshape(N, T)
            next_values = self.net.values(flat(t["next_obs"])).reshape(N, T)
            ends = t["terminated"] | t["truncated"]
            adv, returns = ops.gae(t["reward"].T, values.T, next_values.T, t["terminated"].T.float(),
                                   ends.T.float(), a.gamma, a.gae_lambda)
        obs, actions, old_logp = flat(t["obs"]), flat(t["action"]), flat(t["logp"])
        adv, returns, old_values = adv.T.reshape(-1), returns.T.reshape(-1), values.reshape(-1)

        frac = max(0.0, 1.0 - self.updates / a.anneal_updates) if a.anneal_updates else 1.0
        for group in self.optimizer.param_groups:
            group["lr"] = a.lr * frac
        clip = a.clip_range * frac
        size = N * T
        mb = max(1, size // a.minibatches)
        stats = []
        for _ in range(a.epochs):
            order = torch.randperm(size, device=self.device)
            for start in range(0, size - mb + 1, mb):
                i = order[start:start + mb]
                dist = self.net.distribution(obs[i])
                logp = self.net.log_prob(dist, actions[i])
                ratio = torch.exp(logp - old_logp[i])
                mb_adv = adv[i]
                if a.normalize_advantages and len(i) > 1:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                policy_loss = ops.clipped_surrogate(ratio, mb_adv, clip)
                value_loss = ops.value_loss(self.net.values(obs[i]), old_values[i], returns[i], a.clip_value)
                entropy = dist.entropy()
                entropy = (entropy.sum(-1) if self.net.continuous else entropy).mean()
                loss = policy_loss + a.vf_coef * value_loss - a.ent_coef * entropy
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(self.net.parameters(), a.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    stats.append((policy_loss.item(), value_loss.item(), entropy.item(),
                                  ((ratio - 1).abs() > clip).float().mean().item()))
        self.updates += 1
        p, v, e, c = np.mean(stats, axis=0)
        return {"policy_loss": p, "value_loss": v, "entropy": e, "clip_fraction": c}

    def policy_state(self) -> dict[str, np.ndarray]:
        return {k: v.detach().to("cpu", copy=True).numpy() for k, v in self.net.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = state["updates"]
