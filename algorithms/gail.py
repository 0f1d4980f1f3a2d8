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
    airl_state_only: bool = True
    """AIRL: a state-only recovered reward g(s), which the paper shows transfers to other dynamics;
    false gives g(s, a), as the `imitation` library's default."""
    disc_grad_penalty: float = 0.0
    """Weight of the discriminator's gradient penalty (DAC and ikostrikov's GAIL use 10); 0: none."""
    scale_disc_reward: bool = False
    """Divide the generator's reward by its running standard deviation, as the `imitation` library's
    reward nets do (they also center it, which here would change what living is worth where episodes
    terminate: not done)."""
    airl_reward: str = "logit"
    """AIRL: the generator's reward. logit: the paper's f - log pi, the discriminator's logit (an
    entropy-regularized reward); f: f alone, as the `imitation` library (exploration left to
    ent_coef; -log pi is unbounded for continuous actions); softplus: -log(1 - D) = softplus(f - log pi),
    GAIL's form of the same discriminator, positive everywhere (as toshikwa/gail-airl-ppo); g: the
    recovered reward itself, g(s) - g(z), unshaped (what RecoveredReward(shaped=False) gives)."""


@dataclass(frozen=True)
class Args(ppo.Args, DiscriminatorArgs):
    """gail and airl: PPO's settings and the discriminator's."""


@dataclass(frozen=True)
class AirlArgs(Args):
    discriminator: str = "airl"


DISCRIMINATORS = ("gail", "airl")
AIRL_REWARDS = ("logit", "f", "softplus", "g")


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


class ActionInput(nn.Module):
    """Actions as a network input: one-hot for discrete ones, as they are for continuous ones;
    nothing when not used (AIRL's state-only reward)."""

    def __init__(self, action_space: gym.Space, used: bool = True):
        super().__init__()
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        size = int(action_space.n) if self.discrete else int(np.prod(action_space.shape))
        self.size = size if used else 0

    def forward(self, action: torch.Tensor, rows: int) -> torch.Tensor:
        if not self.size:
            return torch.zeros(rows, 0, device=action.device)
        return F.one_hot(action.long(), self.size).float() if self.discrete else action.float().reshape(rows, -1)


class GailDiscriminator(nn.Module):
    def __init__(self, obs_dim: int, action_space: gym.Space, hidden: int):
        super().__init__()
        self.actions = ActionInput(action_space)
        self.norm = RunningNorm(obs_dim)
        self.net = mlp(obs_dim + self.actions.size, hidden)

    def logits(self, t: dict[str, torch.Tensor], logp: torch.Tensor, gamma: float) -> torch.Tensor:
        obs = self.norm(t["obs"])
        return self.net(torch.cat([obs, self.actions(t["action"], len(obs))], 1)).squeeze(1)

    def absorbing_logits(self, terminated: torch.Tensor) -> torch.Tensor:
        return terminated.new_zeros(0, dtype=torch.float32)  # (AIRL's only)


class AirlDiscriminator(nn.Module):
    def __init__(self, obs_dim: int, action_space: gym.Space, hidden: int, state_only: bool = True):
        super().__init__()
        self.norm = RunningNorm(obs_dim)
        self.actions = ActionInput(action_space, used=not state_only)
        # g also sees whether the state is the absorbing one after a termination (DAC's indicator);
        # the absorbing state's action input is zeros, as DAC's.
        self.g, self.h = mlp(obs_dim + self.actions.size + 1, hidden), mlp(obs_dim, hidden)
        self.register_buffer("absorbing", torch.cat([torch.zeros(obs_dim + self.actions.size), torch.ones(1)])[None])

    def g_of(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """g of (normalized) observations and actions, none of them the absorbing state."""
        return self.g(torch.cat([obs, self.actions(action, len(obs)), obs.new_zeros(len(obs), 1)], 1)).squeeze(1)

    def recovered(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The recovered reward, unshaped and relative to the absorbing state's: g(s[, a]) - g(z)."""
        return self.g_of(self.norm(obs), action) - self.g(self.absorbing).squeeze()

    def logits(self, t: dict[str, torch.Tensor], logp: torch.Tensor, gamma: float) -> torch.Tensor:
        obs, next_obs = self.norm(t["obs"]), self.norm(t["next_obs"])
        alive = 1.0 - t["terminated"].float()
        f = self.g_of(obs, t["action"]) + gamma * alive * self.h(next_obs).squeeze(1) - self.h(obs).squeeze(1)
        return f - logp

    def absorbing_logits(self, terminated: torch.Tensor) -> torch.Tensor:
        """One absorbing transition (z -> z: f = g(z), shaping 0 there, pi(. | z) = 1) per termination
        (Kostrikov et al. 2019): it fixes the constant AIRL cannot identify in g, so that the
        recovered reward pays for living on exactly what the expert's episodes show it is worth."""
        return self.g(self.absorbing).reshape(1).expand(int(terminated.sum()))


def make_discriminator(obs_space: gym.Space, action_space: gym.Space, args: Args) -> nn.Module:
    if args.discriminator not in DISCRIMINATORS:
        raise ValueError(f"algo.discriminator must be one of {', '.join(DISCRIMINATORS)}, got {args.discriminator!r}")
    if args.airl_reward not in AIRL_REWARDS:
        raise ValueError(f"algo.airl_reward must be one of {', '.join(AIRL_REWARDS)}, got {args.airl_reward!r}")
    if len(obs_space.shape or ()) != 1:
        raise ValueError(f"gail and airl take vector observations, not {obs_space}")
    if args.discriminator == "gail":
        return GailDiscriminator(int(obs_space.shape[0]), action_space, args.disc_hidden)
    return AirlDiscriminator(int(obs_space.shape[0]), action_space, args.disc_hidden, args.airl_state_only)


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
        self.reward_scale = RunningNorm(1).to(self.device)
        self.disc_optimizer = ops.adam(list(self.disc.parameters()), lr=args.disc_lr)

    def load_state_dict(self, state: dict) -> None:
        # (a run saved before scale_disc_reward existed has no reward_scale: it starts afresh)
        super().load_state_dict({"reward_scale": self.reward_scale.state_dict(), **state})

    def logits(self, t: dict[str, torch.Tensor], logp_coef: float = 1.0) -> torch.Tensor:
        logp = torch.zeros(())
        if isinstance(self.disc, AirlDiscriminator):  # log pi(a | s) of the current policy
            with torch.no_grad():
                logp = self.net.log_prob(self.net.distribution(t["obs"]), t["action"])
        return self.disc.logits(t, logp_coef * logp, self.args.gamma)

    def policy_reward(self, t: dict[str, torch.Tensor]) -> torch.Tensor:
        """The generator's reward: GAIL's -log(1 - D); AIRL's as algo.airl_reward says."""
        with torch.no_grad():
            if isinstance(self.disc, GailDiscriminator):
                reward = F.softplus(self.logits(t))
            elif self.args.airl_reward == "g":
                reward = self.disc.recovered(t["obs"], t["action"])
            else:
                form = self.args.airl_reward
                reward = self.logits(t, logp_coef=0.0 if form == "f" else 1.0)
                reward = F.softplus(reward) if form == "softplus" else reward
            if self.args.scale_disc_reward:
                self.reward_scale.update(reward[:, None])
                reward = reward / torch.sqrt(self.reward_scale.var + 1e-8)
        return reward

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
                agent_part = {k: v[rows] for k, v in agent.items()}
                expert_part = {k: v[picked] for k, v in expert.items()}
                agent_logits, expert_logits = self.batch_logits(agent_part), self.batch_logits(expert_part)
                loss = (F.binary_cross_entropy_with_logits(expert_logits, torch.ones_like(expert_logits))
                        + F.binary_cross_entropy_with_logits(agent_logits, torch.zeros_like(agent_logits)))
                term = {"disc_loss": loss.detach(), "disc_expert_acc": (expert_logits > 0).float().mean(),
                        "disc_agent_acc": (agent_logits < 0).float().mean()}
                if a.disc_grad_penalty:
                    penalty = self.gradient_penalty(agent_part, expert_part)
                    loss, term["disc_grad_penalty"] = loss + a.disc_grad_penalty * penalty, penalty.detach()
                self.optimizer_step(loss, 0.0, self.disc_optimizer, [])
                terms.append(term)
        return ppo.mean_terms(terms)

    def gradient_penalty(self, agent: dict[str, torch.Tensor], expert: dict[str, torch.Tensor]) -> torch.Tensor:
        """Gulrajani et al.'s (|grad logit| - 1)^2 at random points between expert and agent transitions
        (observations, next observations and continuous actions; a discrete action is the agent's), as
        DAC and ikostrikov's GAIL: a smooth discriminator, whose reward does not saturate."""
        mix = torch.rand(len(agent["obs"]), 1, device=self.device)
        t = {"action": agent["action"], "terminated": agent["terminated"]}
        keys = ("obs", "next_obs") + (() if self.disc.actions.discrete else ("action",))
        for key in keys:
            t[key] = (mix * expert[key].float() + (1 - mix) * agent[key].float()).requires_grad_(True)
        grads = torch.autograd.grad(self.logits(t).sum(), [t[k] for k in keys], create_graph=True, allow_unused=True)
        norm = torch.cat([g for g in grads if g is not None], 1).norm(dim=1)
        return ((norm - 1.0) ** 2).mean()


class Learner(Discriminating, ppo.Learner):
    checkpointed = ("net", "optimizer", "disc", "disc_optimizer", "reward_scale")

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, args: Args, device: torch.device):
        super().__init__(obs_space, action_space, args, device)
        self.add_discriminator(obs_space, action_space, args)

    def update(self, batch: Batch) -> Update:
        t, expert = batch.fields, batch.demos
        N, T = t["reward"].shape
        agent = self.transitions(t)
        disc_metrics = self.train_discriminator(agent, expert)
        reward = self.policy_reward(agent).reshape(N, T)
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

    checkpointed = sac.Learner.checkpointed + ("disc", "disc_optimizer", "reward_scale")

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
        reward = self.policy_reward(agent)
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
    from (g(s, a) of the action taken too, after airl_state_only=false), plus (shaped, the default)
    the shaping gamma h(s') - h(s) that AIRL learned beside it, 0 into the absorbing state:
    potential-based, so it changes no optimal policy (Ng et al. 1999), while it tells a fresh
    learner early which way is better (the `imitation` library retrains on the shaped reward too).
    The environment's own reward stays in info['env_reward'], so episode returns and evaluations of
    a run through it are returns under the recovered reward."""

    def __init__(self, env: gym.Env, run: str, shaped: bool = True):
        super().__init__(env)
        from qrl import checkpoint

        saved = checkpoint.load(Path(run), require=("learner", "config"))
        state = saved["learner"].get("disc", {})
        if "g.0.weight" not in state:
            raise ValueError(f"{run} is not an AIRL run: its checkpoint has no recovered reward g")
        hidden, inputs = state["g.0.weight"].shape
        obs_dim = int(state["norm.mean"].shape[0])  # g's inputs: obs, the action unless state-only, an indicator
        self.disc = AirlDiscriminator(obs_dim, env.action_space, hidden, state_only=inputs == obs_dim + 1)
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
            both = torch.as_tensor(np.stack([self.obs, obs]), dtype=torch.float32)
            reward = self.disc.recovered(both[:1], torch.as_tensor(np.asarray(action))[None])[0]
            x = self.disc.norm(both)
            if self.shaped:  # gamma h(s') - h(s), h(z) = 0
                next_potential = 0.0 if terminated else self.gamma * self.disc.h(x[1:]).squeeze()
                reward += next_potential - self.disc.h(x[:1]).squeeze()
        self.obs = obs
        return obs, float(reward), terminated, truncated, {**info, "env_reward": env_reward}
