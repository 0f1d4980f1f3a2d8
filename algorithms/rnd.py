"""PPO with random network distillation (RND): an exploration bonus for states unlike those seen.

A fixed, randomly initialized target network embeds each observation; a predictor network learns
to match the embedding on the observations the agent visits. Its squared error on a step's next
observation is that step's intrinsic reward: large where the agent has rarely been, shrinking as
the predictor learns. Both networks see observations normalized by running statistics and
clipped to [-5, 5]; the intrinsic rewards are divided by a running standard deviation of their
discounted sums, so their scale does not depend on the observations' or the embedding's.

The value network has two heads: the extrinsic return (episodic, discount `gamma`) and the
intrinsic return (discount `int_gamma`), which is not episodic: an episode's end does not end the
stream of novelty, so the intrinsic advantage flows on into the next episode and never stops at
a termination (a game over is no escape from exploring). The policy follows
ext_coef * extrinsic advantage + int_coef * intrinsic advantage, with PPO's clipped objective; the
predictor trains on a random `rnd_update_proportion` of each minibatch's steps, so it does not
learn faster than the policy explores as the number of actors grows.

Only the advantages' relative scale matters to the policy (they are normalized together), so the
extrinsic rewards should be on a scale like the intrinsic ones: a task that pays -1 per step gives
extrinsic advantages hundreds of times the intrinsic ones unless its rewards are scaled
(run.normalize_reward, as the MountainCar preset does; the metrics log both advantages' spread).

Choices where qrl's setting differs from the paper's: the learner, not the actors, computes the
intrinsic rewards (actors stay stateless, and the predictor need not travel with the weights);
and the running deviation is of discounted intrinsic sums within each unroll (the broker's items
do not say which unrolls continue one another).
References: Burda et al. 2018 (Exploration by random network distillation); CleanRL's ppo_rnd_envpool.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from qrl import networks, ops
from qrl.algorithms import ppo


@dataclass(frozen=True)
class Args(ppo.Args):
    gamma: float = 0.999
    """Discount of the extrinsic return (the paper's 0.999: sparse rewards lie far ahead)."""
    int_gamma: float = 0.99
    """Discount of the intrinsic return."""
    ext_coef: float = 2.0
    int_coef: float = 1.0
    rnd_embedding: int = 64
    """Width of the target's and the predictor's output."""
    rnd_update_proportion: float = 0.25
    """The fraction of each minibatch's steps the predictor trains on."""
    rnd_obs_clip: float = 5.0
    """The normalized observations the two networks see are clipped to +-this."""


class RunningMoments(nn.Module):
    """Mean and variance of everything seen (Chan et al.'s merge), as buffers, so they are saved
    with the module and live on its device."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("var", torch.ones(shape))
        self.register_buffer("count", torch.tensor(1e-4))

    def update(self, x: torch.Tensor) -> None:
        x = x.reshape((-1,) + self.mean.shape).float()
        n = len(x)
        mean, var = x.mean(0), x.var(0, unbiased=False)
        delta, total = mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.var.copy_((self.var * self.count + var * n + delta ** 2 * self.count * n / total) / total)
        self.count += n


def embedding_net(obs_shape: tuple[int, ...], args: Args, hidden_layers: int) -> nn.Sequential:
    """Observation -> [B, rnd_embedding]: an image torso (images) then an MLP; orthogonal weights."""
    encoder = networks.Encoder(obs_shape, args.hidden, args.torso)
    layers, width = [encoder], encoder.out_features
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, args.hidden), nn.ReLU()]
        width = args.hidden
    net = nn.Sequential(*layers, nn.Linear(width, args.rnd_embedding))
    networks.orthogonal_init(net, np.sqrt(2))
    return net


class Distillation(nn.Module):
    """The fixed random target, the predictor (one layer deeper, as in the paper) and the running
    statistics of observations and intrinsic returns."""

    def __init__(self, obs_shape: tuple[int, ...], args: Args):
        super().__init__()
        self.clip = args.rnd_obs_clip
        self.target = embedding_net(obs_shape, args, hidden_layers=1).requires_grad_(False)
        self.predictor = embedding_net(obs_shape, args, hidden_layers=2)
        self.obs_moments = RunningMoments(tuple(obs_shape))
        self.return_moments = RunningMoments(())

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        m = self.obs_moments
        return ((obs.float() - m.mean) / torch.sqrt(m.var + 1e-8)).clamp(-self.clip, self.clip)

    def novelty(self, obs: torch.Tensor) -> torch.Tensor:
        """Per row of normalized observations: the predictor's squared error, averaged over the
        embedding (with gradient into the predictor)."""
        return (self.predictor(obs) - self.target(obs)).pow(2).mean(-1)

    def intrinsic_rewards(self, next_obs: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Unrolls' next observations [N, T, ...] -> their intrinsic rewards [N, T] and the normalized
        observations [N * T, ...] the predictor trains on; updates the running statistics of the
        observations (first) and of the discounted intrinsic sums."""
        N, T = next_obs.shape[:2]
        flat = next_obs.reshape((N * T,) + next_obs.shape[2:])
        self.obs_moments.update(flat)
        normalized = self.normalize(flat)
        novelty = self.novelty(normalized).reshape(N, T)
        self.return_moments.update(ops.running_discounted_sums(novelty, gamma))
        return novelty / torch.sqrt(self.return_moments.var + 1e-8), normalized


def make_policy(obs_space: gym.Space, action_space: gym.Space, args: Args) -> ppo.ActorCritic:
    if args.lstm:
        raise ValueError("rnd: the LSTM variant is not supported (set algo.lstm=0)")
    return ppo.make_policy(obs_space, action_space, args, value_heads=2)


class Learner(ppo.Learner):
    """PPO's iteration, with the value heads (extrinsic, intrinsic) learning their own returns and the
    predictor trained alongside, under one optimizer and one gradient clip."""

    checkpointed = ("net", "distillation", "optimizer")
    clipped = ("net", "distillation")
    make_net = staticmethod(make_policy)

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, args: Args, device: torch.device):
        self.distillation = Distillation(networks.obs_shape(obs_space), args).to(device)
        super().__init__(obs_space, action_space, args, device)

    def trained_parameters(self) -> list[torch.Tensor]:
        return [*self.net.parameters(), *self.distillation.predictor.parameters()]

    def update(self, batch):
        result = super().update(batch)
        result.metrics.update({k: v.item() for k, v in self.intrinsic_stats.items()})
        return result

    def step_targets(self, t):
        """PPO's, with this batch's intrinsic rewards (for advantages) and the normalized next
        observations the predictor trains on."""
        with torch.no_grad():
            int_rewards, rnd_obs = self.distillation.intrinsic_rewards(t["next_obs"], self.args.int_gamma)
        steps = super().step_targets({**t, "intrinsic_reward": int_rewards})
        steps["rnd_obs"] = rnd_obs
        return steps

    def advantages(self, t, values, next_values):
        a = self.args
        ext_adv, ext_ret = ppo.step_advantages(t, t["reward"], values[..., 0], next_values[..., 0], a.gamma,
                                               a.gae_lambda)
        int_adv, int_ret = ppo.step_advantages(t, t["intrinsic_reward"], values[..., 1], next_values[..., 1],
                                               a.int_gamma, a.gae_lambda, episodic=False)
        self.intrinsic_stats = {"intrinsic_reward": t["intrinsic_reward"].mean(),
                                "extrinsic_advantage_std": ext_adv.std(), "intrinsic_advantage_std": int_adv.std()}
        return a.ext_coef * ext_adv + a.int_coef * int_adv, torch.stack([ext_ret, int_ret], -1)

    def loss(self, t, rows, mb, clip):
        loss, terms = super().loss(t, rows, mb, clip)
        novelty = self.distillation.novelty(mb["rnd_obs"])
        keep = (torch.rand(len(novelty), device=novelty.device) < self.args.rnd_update_proportion).float()
        predictor_loss = (novelty * keep).sum() / keep.sum().clamp(min=1.0)
        terms["predictor_loss"] = predictor_loss.detach()
        return loss + predictor_loss, terms


AGENT = dataclasses.replace(ppo.AGENT, name="rnd", Args=Args, make_policy=make_policy, Learner=Learner)
