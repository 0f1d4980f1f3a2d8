"""Adversarial imitation: GAIL and AIRL, with PPO as the generator, for discrete and continuous
actions on vector observations; and GAIL with SAC as an off-policy generator (`gail-sac`).

A discriminator learner sits beside PPO's: every update it first trains the discriminator to tell
the expert's transitions (the demonstration table, run.demos, sampled in the same request as the
agent's unrolls) from the agent's, then hands PPO the agent's unrolls with the environment's
reward replaced by the discriminator's. The environment's reward is never learned from; it is
only reported (episode returns, evaluation).

  GAIL  D(s, a) = sigmoid(logit(s, a)), an MLP on the observation and the action (one-hot for
        discrete ones); the policy's reward is -log(1 - D) = softplus(logit).
  AIRL  logit = f(s, a, s') - log pi(a | s), with f = g(s) + gamma h(s') - h(s): a state-only reward
        g and a shaping potential h (0 after a termination); the policy's reward is the logit.
        g is the recovered reward: RecoveredReward (run.wrappers: {name: RecoveredReward, run: DIR})
        gives an environment g in place of its own reward, so a fresh run can learn from it alone.
        g is only identified up to a constant, which decides whether a run learns to live or to die
        early; an absorbing state z after each termination, which g learns too (DAC's treatment,
        Kostrikov et al. 2019), fixes it: the recovered reward is g(s) - g(z), 0 after an episode
        ends, as the environment's own rewards are.

The discriminator's inputs are normalized by running moments of the observations it sees (agent
and expert), as the `imitation` library's reward nets do.
References: Ho & Ermon 2016 (GAIL); Fu, Luo & Levine 2018 (AIRL); Gleave et al. 2022 (imitation).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qrl import ops
from qrl.algorithm import Batch, DemoUse, Update
from qrl.algorithms import ppo, sac


@dataclass(frozen=True)
class DiscriminatorArgs:
    """The discriminator's settings, whichever the generator."""

    demo_batch: int = 1024
    """Expert transitions per update (sampled from the demonstration table with the agent's items)."""
    disc_hidden: int = 64
    """Width of the discriminator's two ReLU hidden layers (AIRL: of g's and of h's)."""
    disc_lr: float = 3e-4
    disc_epochs: int = 1
    """Passes of the discriminator over each update's agent transitions."""
    disc_minibatches: int = 4
    """Discriminator steps per pass, each on as many expert as agent transitions."""
    discriminator: str = "gail"
    """gail or airl (airl takes PPO's generator: its log pi term)."""


@dataclass(frozen=True)
class Args(ppo.Args, DiscriminatorArgs):
    """gail and airl: PPO's settings and the discriminator's."""


@dataclass(frozen=True)
class AirlArgs(Args):
    discriminator: str = "airl"


DISCRIMINATORS = ("gail", "airl")


# -- discriminators ---------------------------------------------------------------------------------

class RunningNorm(nn.Module):
    """Inputs standardized by running mean and variance (updated by update(), saved with the module)."""

    def __init__(self, size: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("var", torch.ones(size))
        self.register_buffer("count", torch.tensor(1e-4))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        mean, var, n = x.mean(0), x.var(0, unbiased=False), len(x)
        delta, total = mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.var.copy_((self.var * self.count + var * n + delta ** 2 * self.count * n / total) / total)
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp((x - self.mean) / torch.sqrt(self.var + 1e-8), -10.0, 10.0)


def mlp(inputs: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1))


class GailDiscriminator(nn.Module):
    def __init__(self, obs_dim: int, action_space: gym.Space, hidden: int):
        super().__init__()
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        self.num_actions = int(action_space.n) if self.discrete else int(np.prod(action_space.shape))
        self.norm = RunningNorm(obs_dim)
        self.net = mlp(obs_dim + self.num_actions, hidden)

    def logits(self, t: dict[str, torch.Tensor], logp: torch.Tensor, gamma: float) -> torch.Tensor:
        action = F.one_hot(t["action"], self.num_actions).float() if self.discrete else t["action"]
        return self.net(torch.cat([self.norm(t["obs"]), action], 1)).squeeze(1)

    @staticmethod
    def policy_reward(logits: torch.Tensor) -> torch.Tensor:
        return F.softplus(logits)  # -log(1 - D)

    def absorbing_logits(self, terminated: torch.Tensor) -> torch.Tensor:
        return terminated.new_zeros(0, dtype=torch.float32)  # (AIRL's only)


class AirlDiscriminator(nn.Module):
    def __init__(self, obs_dim: int, action_space: gym.Space, hidden: int):
        super().__init__()
        self.norm = RunningNorm(obs_dim)
        # g also sees whether the state is the absorbing one after a termination (DAC's indicator).
        self.g, self.h = mlp(obs_dim + 1, hidden), mlp(obs_dim, hidden)
        self.register_buffer("absorbing", torch.cat([torch.zeros(obs_dim), torch.ones(1)])[None])

    def g_of(self, obs: torch.Tensor) -> torch.Tensor:
        """g of (normalized) observations, none of them the absorbing state."""
        return self.g(torch.cat([obs, obs.new_zeros(len(obs), 1)], 1)).squeeze(1)

    def reward(self, obs: torch.Tensor) -> torch.Tensor:
        """The recovered state-only reward, relative to the absorbing state's: g(s) - g(z)."""
        return self.g_of(self.norm(obs)) - self.g(self.absorbing).squeeze()

    def logits(self, t: dict[str, torch.Tensor], logp: torch.Tensor, gamma: float) -> torch.Tensor:
        obs, next_obs = self.norm(t["obs"]), self.norm(t["next_obs"])
        alive = 1.0 - t["terminated"].float()
        f = self.g_of(obs) + gamma * alive * self.h(next_obs).squeeze(1) - self.h(obs).squeeze(1)
        return f - logp

    def absorbing_logits(self, terminated: torch.Tensor) -> torch.Tensor:
        """One absorbing transition (z -> z: f = g(z), shaping 0 there, pi(. | z) = 1) per termination
        (Kostrikov et al. 2019): it fixes the constant AIRL cannot identify in g, so that the
        recovered reward pays for living on exactly what the expert's episodes show it is worth."""
        return self.g(self.absorbing).reshape(1).expand(int(terminated.sum()))

    @staticmethod
    def policy_reward(logits: torch.Tensor) -> torch.Tensor:
        return logits  # log D - log(1 - D)


def make_discriminator(obs_space: gym.Space, action_space: gym.Space, args: Args) -> nn.Module:
    if args.discriminator not in DISCRIMINATORS:
        raise ValueError(f"algo.discriminator must be one of {', '.join(DISCRIMINATORS)}, got {args.discriminator!r}")
    if len(obs_space.shape or ()) != 1:
        raise ValueError(f"gail and airl take vector observations, not {obs_space}")
    cls = GailDiscriminator if args.discriminator == "gail" else AirlDiscriminator
    return cls(int(obs_space.shape[0]), action_space, args.disc_hidden)


# -- items ------------------------------------------------------------------------------------------

def expert_items(demos, agent, args: Args) -> dict[str, np.ndarray]:
    """The expert's transitions: observation, action (as the environment took it), next observation, termination."""
    continuous = np.issubdtype(demos.action.dtype, np.floating)
    return {"obs": demos.obs.astype(np.float32), "action": demos.action.astype(np.float32 if continuous else np.int64),
            "next_obs": demos.next_obs.astype(np.float32), "terminated": demos.terminated}


# -- learner ----------------------------------------------------------------------------------------

class Discriminating:
    """A learner with a discriminator (self.disc, self.disc_optimizer) beside its own networks."""

    def add_discriminator(self, obs_space: gym.Space, action_space: gym.Space, args) -> None:
        self.disc = make_discriminator(obs_space, action_space, args).to(self.device)
        self.disc_optimizer = ops.adam(list(self.disc.parameters()), lr=args.disc_lr)

    def logits(self, t: dict[str, torch.Tensor]) -> torch.Tensor:
        logp = torch.zeros(())
        if isinstance(self.disc, AirlDiscriminator):  # log pi(a | s) of the current policy
            with torch.no_grad():
                logp = self.net.log_prob(self.net.distribution(t["obs"]), t["action"])
        return self.disc.logits(t, logp, self.args.gamma)

    def batch_logits(self, t: dict[str, torch.Tensor]) -> torch.Tensor:
        """The logits of a minibatch's transitions and of its absorbing transitions (AIRL)."""
        return torch.cat([self.logits(t), self.disc.absorbing_logits(t["terminated"])])

    def train_discriminator(self, agent: dict[str, torch.Tensor], expert: dict[str, torch.Tensor]) -> dict[str, float]:
        """disc_epochs passes over the agent's transitions, each minibatch beside as many expert ones."""
        a = self.args
        self.disc.norm.update(torch.cat([agent["obs"], expert["obs"].float()]))
        n, m = len(agent["obs"]), len(expert["obs"])
        terms = []
        for _ in range(a.disc_epochs):
            for rows in ppo.shuffled_minibatches(n, a.disc_minibatches, self.device):
                picked = torch.randint(m, (len(rows),), device=self.device)
                agent_logits = self.batch_logits({k: v[rows] for k, v in agent.items()})
                expert_logits = self.batch_logits({k: v[picked] for k, v in expert.items()})
                loss = (F.binary_cross_entropy_with_logits(expert_logits, torch.ones_like(expert_logits))
                        + F.binary_cross_entropy_with_logits(agent_logits, torch.zeros_like(agent_logits)))
                self.optimizer_step(loss, 0.0, self.disc_optimizer, [])
                terms.append({"disc_loss": loss.detach(), "disc_expert_acc": (expert_logits > 0).float().mean(),
                              "disc_agent_acc": (agent_logits < 0).float().mean()})
        return ppo.mean_terms(terms)


class Learner(Discriminating, ppo.Learner):
    checkpointed = ("net", "optimizer", "disc", "disc_optimizer")

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, args: Args, device: torch.device):
        super().__init__(obs_space, action_space, args, device)
        self.add_discriminator(obs_space, action_space, args)

    def update(self, batch: Batch) -> Update:
        t, expert = batch.fields, batch.demos
        N, T = t["reward"].shape
        agent = self.transitions(t)
        disc_metrics = self.train_discriminator(agent, expert)
        with torch.no_grad():
            reward = self.disc.policy_reward(self.logits(agent)).reshape(N, T)
        update = super().update(Batch({**t, "reward": reward}, batch.ids, batch.weights))
        return Update({**update.metrics, **disc_metrics, "disc_reward": reward.mean().item(),
                       "env_reward": t["reward"].float().mean().item()})

    def transitions(self, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The agent's unrolls [N, T] as transitions [N * T] shaped like the expert's: actions as the
        environment took them (a Gaussian policy's samples clipped to the bounds)."""
        flat = lambda x: x.reshape((-1,) + x.shape[2:])
        action = flat(t["action"])
        if self.net.continuous:
            action = torch.clamp(action, self.net.low, self.net.high)
        return {"obs": flat(t["obs"]).float(), "action": action, "next_obs": flat(t["next_obs"]).float(),
                "terminated": flat(t["terminated"])}


@dataclass(frozen=True)
class SacArgs(sac.Args, DiscriminatorArgs):
    """gail-sac: SAC's settings and the discriminator's, one step of it per update on a replay batch."""

    demo_batch: int = 256
    disc_minibatches: int = 1


class SacLearner(Discriminating, sac.Learner):
    """GAIL with SAC as the generator (off-policy, as Kostrikov et al. 2019's DAC): every update trains
    the discriminator on the replay batch beside expert transitions, then relabels the batch's rewards
    with the discriminator's current -log(1 - D) before SAC's update, so stored rewards never go stale."""

    checkpointed = sac.Learner.checkpointed + ("disc", "disc_optimizer")

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, args: SacArgs, device: torch.device):
        if args.n_step != 1:
            raise ValueError("gail-sac relabels one-step transitions: algo.n_step must be 1")
        if args.discriminator != "gail":
            raise ValueError("gail-sac takes algo.discriminator=gail (AIRL's log pi term takes PPO's generator: airl)")
        super().__init__(obs_space, action_space, args, device)
        self.add_discriminator(obs_space, action_space, args)

    def update(self, batch: Batch) -> Update:
        t = batch.fields
        agent = {"obs": t["obs"].float(), "action": t["action"], "next_obs": t["next_obs"].float(),
                 "terminated": t["discount"] == 0}
        disc_metrics = self.train_discriminator(agent, batch.demos)
        with torch.no_grad():
            reward = self.disc.policy_reward(self.logits(agent))
        update = super().update(Batch({**t, "return": reward}, batch.ids, batch.weights))
        return Update({**update.metrics, **disc_metrics, "disc_reward": reward.mean().item(),
                       "env_reward": t["return"].float().mean().item()})


DEMONSTRATIONS = DemoUse(batch=lambda args: (args.batch_size, args.demo_batch), items=expert_items, required=True)
AGENT = dataclasses.replace(ppo.AGENT, name="gail", Args=Args, Learner=Learner, demonstrations=DEMONSTRATIONS)
AIRL_AGENT = dataclasses.replace(AGENT, name="airl", Args=AirlArgs)
SAC_AGENT = dataclasses.replace(sac.AGENT, name="gail-sac", Args=SacArgs, Learner=SacLearner,
                                demonstrations=DEMONSTRATIONS)


# -- the recovered reward ---------------------------------------------------------------------------

class RecoveredReward(gym.Wrapper):
    """An environment whose reward is an AIRL run's recovered reward in place of its own
    (run.wrappers: {name: RecoveredReward, run: RUN_DIR}): g(s) - g(z) of the state each step starts
    from, plus (shaped, the default) the shaping gamma h(s') - h(s) that AIRL learned beside it, 0
    into the absorbing state: potential-based, so it changes no optimal policy (Ng et al. 1999),
    while it tells a fresh learner early which way is better (the `imitation` library retrains on
    the shaped reward too). The environment's own reward stays in info['env_reward'], so episode
    returns and evaluations of a run through it are returns under the recovered reward."""

    def __init__(self, env: gym.Env, run: str, shaped: bool = True):
        super().__init__(env)
        from qrl import checkpoint

        saved = checkpoint.load(Path(run), require=("learner", "config"))
        state = saved["learner"].get("disc", {})
        if "g.0.weight" not in state:
            raise ValueError(f"{run} is not an AIRL run: its checkpoint has no recovered reward g")
        hidden, inputs = state["g.0.weight"].shape
        self.disc = AirlDiscriminator(inputs - 1, env.action_space, hidden)  # (g's inputs: obs and an indicator)
        self.disc.load_state_dict(state)
        self.disc.eval()
        self.gamma = json.loads(saved["config"])["args"]["gamma"] if shaped else 0.0
        self.shaped = shaped
        self.obs = None

    def reset(self, **kwargs):
        self.obs, info = self.env.reset(**kwargs)
        return self.obs, info

    def step(self, action):
        obs, env_reward, terminated, truncated, info = self.env.step(action)
        with torch.no_grad():
            x = self.disc.norm(torch.as_tensor(np.stack([self.obs, obs]), dtype=torch.float32))
            reward = self.disc.g_of(x[:1])[0] - self.disc.g(self.disc.absorbing).squeeze()
            if self.shaped:  # gamma h(s') - h(s), h(z) = 0
                next_potential = 0.0 if terminated else self.gamma * self.disc.h(x[1:]).squeeze()
                reward += next_potential - self.disc.h(x[:1]).squeeze()
        self.obs = obs
        return obs, float(reward), terminated, truncated, {**info, "env_reward": env_reward}
