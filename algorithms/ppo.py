"""PPO fed from the broker's on-policy FIFO queue, for discrete (categorical) and continuous
(diagonal Gaussian) actions.

Actors push one item per environment: a length-T unroll with each step's true next
observation (so a time-limit truncation still bootstraps) and the behaviour policy's
log-probability. The learner takes a batch of unrolls, computes GAE with its current value
function, and runs several epochs of clipped-objective minibatch updates (optional value
clipping, advantage normalization, entropy bonus); every update is published as new weights.
Unrolls made by weights more than max_policy_lag versions old are dropped by the broker.
With `lstm` > 0 the policy and the value function each get a recurrent core, an LSTM (recurrent
PPO, as sb3-contrib's RecurrentPPO) or an attention core (qrl/cores.py): actors carry its state,
reset it where an episode starts, and send each unroll's initial state and episode starts with it;
the learner replays whole unrolls through the cores from those states, so its minibatches are
unrolls, not steps.
References: Schulman et al. 2017 (PPO), 2016 (GAE); Andrychowicz et al. 2021 (what matters);
Raffin et al. 2021 (stable-baselines3, RecurrentPPO in sb3-contrib).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from qrl import cores, networks, ops
from qrl.algorithm import ActorCore, Agent, Batch, LearnerBase, Rollout, Update
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
    """Clip the gradient's global norm to this (0: no clipping)."""
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
    lstm: int = 0
    """Width of the policy's and the value function's recurrent cores (0: feed-forward MLPs): the
    LSTMs' hidden size, or the attention cores' model width. With a core, minibatches are whole
    unrolls: `minibatches` splits the batch's unrolls."""
    core: str = "lstm"
    """The recurrent core (qrl/cores.py): lstm, or attention (a transformer over the last
    attention_memory steps)."""
    attention_memory: int = 16
    """Attention core: how many past steps of the episode each step attends to."""
    attention_heads: int = 4
    attention_layers: int = 1
    ortho_init: bool = True
    """Orthogonal initialization of the linear layers (as the PPO implementations that reach
    published returns do; sb3-contrib's RecurrentPPO presets turn it off)."""
    spectral_norm: bool = False
    """Spectral normalisation of the value function's last hidden layer (qrl/networks.py)."""
    torso: str = "auto"
    """Image observations: the convolutional torso the policy and the value share (qrl/networks.py):
    nature, impala[-se|-cbam], minatar, or auto (nature for 36 pixels and more, else minatar); its last layer
    has `hidden` units, and the policy and value heads are one linear layer each on it."""


def table_config(args: Args) -> TableConfig:
    return TableConfig(capacity=args.queue_capacity, sampler="fifo", min_size=0, samples_per_insert=0.0,
                       max_policy_lag=args.max_policy_lag)


# -- network ----------------------------------------------------------------------------------

def mlp(inputs: int, hidden: int, outputs: int, out_gain: float, ortho: bool = True,
        layers_n: int = 2, activation=nn.Tanh) -> nn.Sequential:
    layers, width = [], inputs
    for _ in range(layers_n):
        layers += [nn.Linear(width, hidden), activation()]
        width = hidden
    layers.append(nn.Linear(width, outputs))
    for layer in layers:  # orthogonal init, as in the PPO implementations that reach published returns
        if ortho and isinstance(layer, nn.Linear):
            nn.init.orthogonal_(layer.weight, np.sqrt(2) if layer is not layers[-1] else out_gain)
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """Separate policy and value networks: MLPs, or (lstm > 0) each a recurrent core (an LSTM cell or
    an attention core, qrl/cores.py) with an MLP head.
    The value network has `value_heads` outputs (RND: extrinsic and intrinsic); values are [B] for
    one, else [B, value_heads].
    Image observations first go through a convolutional torso both share (CleanRL's ppo_atari,
    SB3's CnnPolicy); the heads after it have no hidden layer of their own."""

    def __init__(self, obs_shape: tuple[int, ...], action_space: gym.Space, args: Args, value_heads: int = 1):
        super().__init__()
        hidden = args.hidden
        self.continuous = isinstance(action_space, gym.spaces.Box)
        self.sde = args.use_sde and self.continuous
        self.recurrent = args.lstm > 0
        self.image = networks.is_image(obs_shape)
        n_out = int(np.prod(action_space.shape)) if self.continuous else int(action_space.n)
        self.encoder = networks.Encoder(obs_shape, hidden, args.torso)  # vectors: flattened, no parameters
        obs_dim = self.encoder.out_features
        head_layers = 1  # hidden layers of each head (feed-forward: twice as many)
        if self.image:
            if args.ortho_init:
                networks.orthogonal_init(self.encoder, np.sqrt(2))
            head_layers = int(self.recurrent)  # after a torso: linear heads
        if self.recurrent:  # sb3-contrib's MlpLstmPolicy: LSTM, then one hidden layer per head
            # Named pi_lstm / vf_lstm (checkpoints from before cores keep loading) or pi_attention / vf_attention.
            setattr(self, f"pi_{args.core}", cores.make_core(args, obs_dim))
            setattr(self, f"vf_{args.core}", cores.make_core(args, obs_dim))
            self.core_kind = args.core
            self.policy = mlp(args.lstm, hidden, n_out, 0.01, args.ortho_init, head_layers, nn.ReLU)
            self.value = mlp(args.lstm, hidden, value_heads, 1.0, args.ortho_init, head_layers, nn.ReLU)
        else:
            self.policy = mlp(obs_dim, hidden, n_out, 0.01, args.ortho_init, 2 * head_layers)
            self.value = mlp(obs_dim, hidden, value_heads, 1.0, args.ortho_init, 2 * head_layers)
        if self.continuous:
            # gSDE: one log std per (hidden feature, action dimension); else one per action dimension.
            self.log_std = nn.Parameter(torch.full((hidden, n_out) if self.sde else (n_out,), args.log_std_init))
            self.register_buffer("low", torch.as_tensor(action_space.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(action_space.high, dtype=torch.float32))

    @property
    def pi_core(self) -> nn.Module:
        return getattr(self, f"pi_{self.core_kind}")

    @property
    def vf_core(self) -> nn.Module:
        return getattr(self, f"vf_{self.core_kind}")

    def value_path(self) -> tuple[nn.Module, ...]:
        """The value function's modules in forward order, recurrent cores left out (spectral_norm)."""
        return self.encoder, self.value

    def head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden features, policy output) of the policy head on its inputs."""
        latent = self.policy[:-1](x)
        return latent, self.policy[-1](latent)

    def features(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed-forward: (last hidden features, policy output)."""
        return self.head(self.encoder(obs))

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        """Feed-forward: the most likely action, in torch (ONNX export); as ActorCore.greedy acts."""
        if self.recurrent:
            raise ValueError("a recurrent policy's actions depend on its state: ONNX export takes "
                             "feed-forward policies")
        _, out = self.features(obs)
        return torch.clamp(out, self.low, self.high) if self.continuous else out.argmax(1)

    def distribution_of(self, latent: torch.Tensor, out: torch.Tensor) -> torch.distributions.Distribution:
        if self.sde:  # the action noise latent @ W, W ~ N(0, std^2), has variance latent^2 @ std^2
            variance = (latent.detach() ** 2) @ (self.log_std.exp() ** 2)
            return torch.distributions.Normal(out, torch.sqrt(variance + 1e-6))
        if self.continuous:
            return torch.distributions.Normal(out, self.log_std.exp().expand_as(out))
        return torch.distributions.Categorical(logits=out)

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Distribution:
        return self.distribution_of(*self.features(obs))

    def log_prob(self, dist: torch.distributions.Distribution, actions: torch.Tensor) -> torch.Tensor:
        lp = dist.log_prob(actions)
        return lp.sum(-1) if self.continuous else lp

    def entropy(self, dist: torch.distributions.Distribution) -> torch.Tensor:
        e = dist.entropy()
        return e.sum(-1) if self.continuous else e

    def policy_terms(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Feed-forward: (log-probability of `actions`, entropy, value) per row at `obs`, from one
        pass of the encoder (an image torso runs forward and backward once per minibatch).
        Discrete actions take them from one log-softmax: a PPO minibatch of 64 rows costs mostly
        per-op overhead, and torch.distributions.Categorical adds a dozen ops and argument checks."""
        x = self.encoder(obs)
        latent, out = self.head(x)
        value = self.value(x).squeeze(-1)
        if self.continuous:
            dist = self.distribution_of(latent, out)
            return self.log_prob(dist, actions), self.entropy(dist), value
        log_probs = torch.log_softmax(out, -1)
        return (log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1), -(log_probs.exp() * log_probs).sum(-1),
                value)

    def values(self, obs: torch.Tensor) -> torch.Tensor:
        return self.value(self.encoder(obs)).squeeze(-1)

    def logits(self, obs: np.ndarray) -> np.ndarray:
        """Feed-forward, discrete actions: the policy's logits for a numpy batch, in numpy for an MLP
        (see qrl/numpy_mlp.py), else in torch."""
        policy = numpy_twin(self, lambda: None if self.image else compile_mlp(self.policy))
        if policy is None:
            with torch.inference_mode():
                return networks.to_numpy(self.features(networks.on_device(self, obs))[1])
        return policy(obs)

    # -- recurrent ------------------------------------------------------------------------------

    def step(self, obs: torch.Tensor, state: dict[str, torch.Tensor], episode_start: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """One actor step of the cores: (policy latent, policy output, next state)."""
        x = self.encoder(obs)[None]
        start = episode_start[None]
        pi_out, pi_state = self.pi_core.unroll(x, cores.substate(state, "pi_"), start)
        _, vf_state = self.vf_core.unroll(x, cores.substate(state, "vf_"), start)
        latent, out = self.head(pi_out[0])
        return latent, out, {**{"pi_" + k: v[0] for k, v in pi_state.items()},
                             **{"vf_" + k: v[0] for k, v in vf_state.items()}}

    def replay(self, t: dict[str, torch.Tensor]) -> tuple[torch.distributions.Distribution, torch.Tensor,
                                                          torch.Tensor]:
        """Unrolls [N, T, ...] from their initial states: the policy's distribution and the values at
        each step, and the values of each step's true next observation, all flattened to [N * T]
        (next values: the value core one step further from the state after that step)."""
        N, T = t["reward"].shape
        x = self.encoder(t["obs"].flatten(0, 1)).reshape(N, T, -1).transpose(0, 1)  # time-major [T, N, D]
        start = t["episode_start"].T
        pi_out, _ = self.pi_core.unroll(x, cores.substate(t, "pi_"), start)
        vf_out, vf_states = self.vf_core.unroll(x, cores.substate(t, "vf_"), start)
        flat_time = lambda y: y.transpose(0, 1).reshape((N * T,) + y.shape[2:])  # [T, N, ...] -> [N * T, ...]
        dist = self.distribution_of(*self.head(flat_time(pi_out)))
        values = self.value(flat_time(vf_out)).squeeze(-1)
        next_x = self.encoder(t["next_obs"].flatten(0, 1))
        next_out = self.vf_core.step_from(next_x, {k: flat_time(v) for k, v in vf_states.items()})
        return dist, values, self.value(next_out).squeeze(-1)


def make_policy(obs_space: gym.Space, action_space: gym.Space, args: Args, value_heads: int = 1) -> ActorCritic:
    check_action_space(action_space)
    return normalized_values(ActorCritic(networks.obs_shape(obs_space), action_space, args, value_heads), args)


def normalized_values(net: ActorCritic, args: Args) -> ActorCritic:
    """net, with spectral normalisation on its value function's last hidden layer if args ask for it."""
    if args.spectral_norm:
        networks.spectral_norm_penultimate(*net.value_path())
    return net


def check_action_space(action_space: gym.Space) -> None:
    if not isinstance(action_space, (gym.spaces.Discrete, gym.spaces.Box)):
        raise ValueError(f"ppo needs Discrete or Box actions, got {action_space}")


# -- actor side -------------------------------------------------------------------------------

class PolicySampling(ActorCore):
    """Samples of the policy: discrete actions by inverse CDF from numpy uniforms, continuous ones
    from the Gaussian (gSDE: noise weights resampled every sde_sample_freq steps). With a core the
    state is the two cores' (qrl/cores.py)."""

    def __init__(self, args: Args, index: int, count: int, num_envs: int, seed: int):
        super().__init__(args, index, count, num_envs, seed)
        self.generator = torch.Generator().manual_seed(seed)  # continuous actions
        self.rng = np.random.default_rng(seed)  # discrete actions (uniforms for inverse-CDF sampling)
        self.steps = 0
        self.sde_weights: torch.Tensor | None = None  # gSDE: [num_envs, hidden, action_dim]

    def initial_state(self, num_envs: int) -> dict[str, np.ndarray]:
        if not self.args.lstm:
            return {}
        return {**cores.initial_state(self.args, num_envs, "pi_"), **cores.initial_state(self.args, num_envs, "vf_")}

    def forward(self, net: ActorCritic, obs, state, episode_start):
        """((latent, policy output), next state) in torch, or ((None, logits), state) in numpy."""
        if net.recurrent:
            with torch.inference_mode():
                put = functools.partial(networks.on_device, net)
                latent, out, new = net.step(put(obs), {k: put(v) for k, v in state.items()}, put(episode_start))
            return (latent, out), {k: networks.to_numpy(v) for k, v in new.items()}
        if not net.continuous:
            return (None, net.logits(obs)), state
        with torch.inference_mode():
            return net.features(networks.on_device(net, obs)), state

    def select(self, net: ActorCritic, outputs):
        """Actions sampled from the policy output, their log-probabilities."""
        latent, out = outputs
        if not net.continuous:
            logits = out if isinstance(out, np.ndarray) else networks.to_numpy(out)
            actions, logp = sample_categorical(logits, self.rng.random(len(logits)))
            return actions, {"logp": logp}
        return self._sample_continuous(net, latent, out)

    def _sample_continuous(self, net: ActorCritic, latent: torch.Tensor, out: torch.Tensor):
        with torch.inference_mode():
            dist = net.distribution_of(latent, out)
            if net.sde:
                if self.steps % self.args.sde_sample_freq == 0 or self.sde_weights is None:
                    std = net.log_std.exp()
                    draw = torch.randn((len(out),) + std.shape, generator=self.generator)  # the core's CPU generator
                    self.sde_weights = std * draw.to(std.device)
                action = dist.mean + torch.einsum("bh,bha->ba", latent, self.sde_weights)
            else:
                action = dist.mean + dist.stddev * torch.randn(dist.mean.shape, generator=self.generator).to(out.device)
            logp = net.log_prob(dist, action)
        self.steps += 1
        return _env_action(net, action), {"logp": networks.to_numpy(logp).astype(np.float32),
                                          "raw_action": networks.to_numpy(action).astype(np.float32)}

    def greedy(self, net: ActorCritic, obs, state, episode_start):
        (_, out), state = self.forward(net, obs, state, episode_start)
        if not net.continuous:
            return np.asarray(out).argmax(axis=1), state
        with torch.inference_mode():
            return _env_action(net, out), state


def _env_action(net: ActorCritic, action: torch.Tensor) -> np.ndarray:
    # The Gaussian's sample is what the log-probability is of; the env gets it clipped to bounds.
    return networks.to_numpy(torch.clamp(action, net.low, net.high))


def make_items(rollout: Rollout, args: Args) -> dict[str, np.ndarray]:
    """One item per environment: its [T, ...] unroll (time-major in the rollout, so swap axes); with an
    recurrent core also the state it started from and where episodes start."""
    items = unroll_items(rollout)
    if args.lstm:
        T = rollout.num_steps
        items["episode_start"] = np.ascontiguousarray(np.swapaxes(rollout.episode_start[:T], 0, 1))
        items.update({k: np.ascontiguousarray(v[0]) for k, v in rollout.states.items()})
    return items


def unroll_items(rollout: Rollout) -> dict[str, np.ndarray]:
    """Each environment's unroll [B, T, ...]: observations, actions (a Gaussian policy's raw samples),
    the behaviour log-probabilities, rewards, episode ends and true next observations."""
    T = rollout.num_steps
    per_env = lambda x: np.ascontiguousarray(np.swapaxes(x[:T], 0, 1))
    actions = rollout.extras.get("raw_action", rollout.actions)
    items = {
        "obs": per_env(rollout.obs),
        "action": per_env(actions).astype(np.float32 if "raw_action" in rollout.extras else np.int64),
        "logp": per_env(rollout.extras["logp"]),
        "reward": per_env(rollout.rewards).astype(np.float32),
        "terminated": per_env(rollout.terminated),
        "truncated": per_env(rollout.truncated),
        "next_obs": per_env(rollout.next_obs),
    }
    return items


# -- learner side -----------------------------------------------------------------------------

class Learner(LearnerBase):
    make_net = staticmethod(make_policy)
    """(obs_space, action_space, args) -> the network actors run; variants bring their own."""

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, args: Args, device: torch.device):
        super().__init__(args, device)
        self.net = self.make_net(obs_space, action_space, args).to(device)
        self.optimizer = ops.adam(self.trained_parameters(), lr=args.lr, eps=1e-5)

    def trained_parameters(self) -> list[torch.Tensor]:
        """What the one optimizer trains: the network's parameters (variants add their own modules)."""
        return list(self.net.parameters())

    def evaluate(self, t, rows: torch.Tensor | None = None):
        """(distribution, values, next values) over the batch's steps, flattened [N * T]; `rows`
        (recurrent: unrolls) picks part of the batch."""
        if self.net.recurrent:
            return self.net.replay(t if rows is None else {k: v[rows] for k, v in t.items()})
        N, T = t["reward"].shape
        flat = lambda x: x.reshape((N * T,) + x.shape[2:])
        return self.net.distribution(flat(t["obs"])), self.net.values(flat(t["obs"])), self.net.values(
            flat(t["next_obs"]))

    def update(self, batch: Batch) -> Update:
        """One PPO iteration: targets under the current networks, then `epochs` passes of minibatch
        steps. Subclasses change what it optimizes through step_targets and loss."""
        a = self.args
        t = batch.fields
        steps = self.step_targets(t)
        frac = max(0.0, 1.0 - self.updates / a.anneal_updates) if a.anneal_updates else 1.0
        for group in self.optimizer.param_groups:
            group["lr"] = a.lr * frac
        clip = a.clip_range * frac
        terms = []
        for _ in range(a.epochs):
            for rows, mb in self.minibatches(t, steps):
                loss, mb_terms = self.loss(t, rows, mb, clip)
                self.optimizer_step(loss, a.max_grad_norm)
                terms.append(mb_terms)
        self.updates += 1
        return Update(mean_terms(terms))

    def step_targets(self, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-step tensors, flattened [N * T, ...], that minibatches are cut from: the actions, their
        behaviour log-probabilities, GAE advantages and returns under the current value function, the
        values; feed-forward also the observations."""
        N, T = t["reward"].shape
        flat = lambda x: x.reshape((N * T,) + x.shape[2:])
        with torch.no_grad():
            if self.net.recurrent:
                _, values, next_values = self.evaluate(t)
            else:  # the values only: the policy's outputs for the whole batch are not needed here
                values, next_values = self.net.values(torch.cat([flat(t["obs"]), flat(t["next_obs"])])).chunk(2)
            heads = values.shape[1:]  # () or (value_heads,)
            values, next_values = values.reshape((N, T) + heads), next_values.reshape((N, T) + heads)
            adv, returns = self.advantages(t, values, next_values)
        steps = {"action": flat(t["action"]), "logp": flat(t["logp"]), "advantage": adv, "return": returns,
                 "value": flat(values)}
        if not self.net.recurrent:
            steps["obs"] = flat(t["obs"])
        return steps

    def advantages(self, t: dict[str, torch.Tensor], values: torch.Tensor, next_values: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The advantages [N * T] the policy follows and the returns the values learn ([N * T, ...] as
        values), given the values of each step's observation and true next observation [N, T, ...]."""
        return step_advantages(t, t["reward"], values, next_values, self.args.gamma, self.args.gae_lambda)

    def minibatches(self, t: dict[str, torch.Tensor], steps: dict[str, torch.Tensor]):
        """One epoch's minibatches in a random order: (rows, {name: the minibatch's steps}), where rows
        are the unrolls the steps belong to when a recurrent core must replay them from their start (None:
        minibatches of steps)."""
        N, T = t["reward"].shape
        if self.net.recurrent:
            for rows in shuffled_minibatches(N, self.args.minibatches, self.device):
                i = (rows[:, None] * T + torch.arange(T, device=self.device)).reshape(-1)
                yield rows, {k: v[i] for k, v in steps.items()}
            return
        size = N * T
        mb = max(1, size // self.args.minibatches)
        order = torch.randperm(size, device=self.device)
        shuffled = {k: v[order] for k, v in steps.items()}  # one gather per tensor and epoch; then views
        for start in range(0, size - mb + 1, mb):
            yield None, {k: v[start:start + mb] for k, v in shuffled.items()}

    def loss(self, t: dict[str, torch.Tensor], rows: torch.Tensor | None, mb: dict[str, torch.Tensor],
             clip: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A minibatch's loss (clipped surrogate, value loss, entropy bonus) and its terms to log."""
        a = self.args
        if rows is not None:
            dist, values, _ = self.evaluate(t, rows)
            logp, entropy = self.net.log_prob(dist, mb["action"]), self.net.entropy(dist)
        else:
            logp, entropy, values = self.net.policy_terms(mb["obs"], mb["action"])
        entropy = entropy.mean()
        ratio = torch.exp(logp - mb["logp"])
        policy_loss = ops.clipped_surrogate(ratio, self.normalized(mb["advantage"]), clip)
        value_loss = ops.value_loss(values, mb["value"], mb["return"], a.clip_value)
        loss = policy_loss + a.vf_coef * value_loss - a.ent_coef * entropy
        return loss, {"policy_loss": policy_loss.detach(), "value_loss": value_loss.detach(),
                      "entropy": entropy.detach(), "clip_fraction": ((ratio.detach() - 1).abs() > clip).float().mean()}

    def normalized(self, adv: torch.Tensor) -> torch.Tensor:
        if self.args.normalize_advantages and len(adv) > 1:
            return (adv - adv.mean()) / (adv.std() + 1e-8)
        return adv


def step_advantages(t: dict[str, torch.Tensor], rewards: torch.Tensor, values: torch.Tensor,
                    next_values: torch.Tensor, gamma: float, lam: float, episodic: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE advantages and returns of unrolls [N, T], flattened to [N * T]. Episodic: no bootstrap past
    a termination and no trace across an episode's end. Not episodic (RND's intrinsic rewards): the
    return flows on into the next episode, as if episodes never ended."""
    ends = t["terminated"] | t["truncated"]
    if not episodic:
        ends = torch.zeros_like(ends)
    terminated = t["terminated"] if episodic else ends
    adv, returns = ops.gae(rewards.T, values.T, next_values.T, terminated.T.float(), ends.T.float(), gamma, lam)
    return adv.T.reshape(-1), returns.T.reshape(-1)


def shuffled_minibatches(size: int, count: int, device: torch.device):
    """Index tensors of `count` minibatches over `size` rows in a random order (a remainder is left out)."""
    order = torch.randperm(size, device=device)
    mb = max(1, size // count)
    for start in range(0, size - mb + 1, mb):
        yield order[start:start + mb]


def mean_terms(terms: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """The mean of each logged term over an update's minibatches, read from the device once."""
    if not terms:
        return {}
    names = list(terms[0])
    means = torch.stack([torch.stack([m[k] for k in names]) for m in terms]).mean(0).tolist()
    return dict(zip(names, means))


@dataclass(frozen=True)
class RecurrentArgs(Args):
    """`rppo`: PPO with LSTMs by default, with sb3-contrib RecurrentPPO's defaults."""

    lstm: int = 64
    ortho_init: bool = False


# run_defaults: one PPO iteration per learner update, and every update's weights go to the actors.
AGENT = Agent(name="ppo", Args=Args, make_policy=make_policy, make_core=PolicySampling, make_items=make_items,
              Learner=Learner, table_config=table_config, run_defaults={"publish_every": 1})
RECURRENT_AGENT = dataclasses.replace(AGENT, name="rppo", Args=RecurrentArgs)
