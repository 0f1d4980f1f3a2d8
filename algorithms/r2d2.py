"""R2D2: recurrent experience replay in distributed reinforcement learning.

A dueling Q-network with a recurrent core: an LSTM, or an attention core (`algo.core`,
qrl/cores.py). Actors explore with Ape-X epsilons (algorithms/dqn.py) and keep the core's state
from step to step (reset where an episode starts). One item per environment and
segment is a fixed-length sequence: a burn-in prefix, then `sequence_length` steps to train on
(ending where the segment ends, so consecutive sequences overlap by sequence_length minus the
segment length), then n_step - 1 steps for the last targets, with the core's state the actor had at
the sequence's first step. The learner starts both networks from that stored state, runs the
burn-in without gradients to rebuild the state, and trains on n-step double-Q targets under the
invertible value rescaling h. Sequences are replayed with priority
eta * max |TD| + (1 - eta) * mean |TD| (new ones get the largest priority so far) and importance
weights; the target network is copied every target_update_every updates.
References: Kapturowski et al. 2019 (R2D2); Pohlen et al. 2018 (value rescaling h);
Horgan et al. 2018 (Ape-X epsilons, prioritized replay).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from qrl import cores, networks, ops
from qrl.algorithm import Agent, Batch, History, LearnerBase, Rollout, Update, replay_table
from qrl.algorithms import apex, dqn


@dataclass(frozen=True)
class Args:
    hidden: int = 64
    """Width of the linear layer before the core (on images: the torso's last layer)."""
    torso: str = "auto"
    """Image observations: the convolutional torso before the core (qrl/networks.py): nature, impala,
    minatar, or auto (nature for 36 pixels and more, else minatar)."""
    lstm: int = 128
    """Width of the recurrent core: the LSTM's hidden size, or the attention core's model width."""
    core: str = "lstm"
    """The recurrent core (qrl/cores.py): lstm, or attention (a transformer over the last
    attention_memory steps)."""
    attention_memory: int = 16
    """Attention core: how many past steps of the episode each step attends to."""
    attention_heads: int = 4
    attention_layers: int = 1
    dueling: bool = True
    spectral_norm: bool = False
    """Spectral normalisation of the value function's last hidden layer (qrl/networks.py)."""
    double: bool = True
    burn_in: int = 40
    """Steps before each training sequence that only rebuild the core's state (no gradient)."""
    sequence_length: int = 80
    """Steps of each sequence that are trained on. Sequences end where segments end, so with
    run.segment_length 40 consecutive ones overlap by 40; segment_length may not exceed this."""
    n_step: int = 5
    gamma: float = 0.997
    lr: float = 1e-4
    adam_eps: float = 1e-3
    batch_size: int = 64
    """Sequences per batch."""
    buffer_size: int = 10_000
    """Sequences the replay table holds."""
    learning_starts: int = 64
    """Sequences in the table before the first batch is served."""
    samples_per_insert: float = 4.0
    """Sequences sampled per sequence inserted, held by the broker's rate limiter (0: unlimited)."""
    target_update_every: int = 2_500
    """Copy the online network to the target network every this many updates."""
    value_rescale: bool = True
    """Train on h(n-step return + discount * h^-1(Q target)) instead of the plain target."""
    rescale_eps: float = 1e-3
    max_grad_norm: float = 40.0
    priority_eta: float = 0.9
    """A sequence's priority: eta * max |TD| + (1 - eta) * mean |TD| over its trained steps."""
    priority_exponent: float = 0.9
    importance_exponent: float = 0.6
    """beta at the start; annealed linearly to 1 over importance_anneal_updates learner updates."""
    importance_anneal_updates: int = 20_000
    eps_base: float = 0.4
    eps_alpha: float = 7.0
    """Actor i of N explores with eps_base ** (1 + eps_alpha * i / (N - 1))."""
    eps_anneal_frames: int = 10_000


def table_config(args: Args):
    return replay_table(args, args.samples_per_insert, sampler="prioritized",
                        priority_exponent=args.priority_exponent)


# -- network ----------------------------------------------------------------------------------

class RecurrentQNetwork(nn.Module):
    """A torso (one linear layer, or a convolutional torso on images), a recurrent core, a (dueling) head."""

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, args: Args):
        super().__init__()
        self.image = networks.is_image(obs_shape)
        if self.image:
            self.torso = networks.image_torso(obs_shape, args.hidden, args.torso)
        else:
            self.torso = nn.Sequential(nn.Linear(int(np.prod(obs_shape)), args.hidden), nn.ReLU())
        self.core_kind = args.core  # the core is named `lstm` (as before cores) or `attention`
        setattr(self, args.core, cores.make_core(args, args.hidden))
        self.advantage = nn.Linear(args.lstm, num_actions)
        self.value = nn.Linear(args.lstm, 1) if args.dueling else None
        if args.spectral_norm:  # the layer before the core: the core is not counted as a layer
            networks.spectral_norm_penultimate(self.torso, self.advantage)

    @property
    def core(self) -> nn.Module:
        return getattr(self, self.core_kind)

    def head(self, h: torch.Tensor) -> torch.Tensor:  # [..., width] -> [..., num_actions]
        adv = self.advantage(h)
        if self.value is None:
            return adv
        return self.value(h) + adv - adv.mean(dim=-1, keepdim=True)

    def unroll(self, obs: torch.Tensor, state: dict[str, torch.Tensor], episode_start: torch.Tensor
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """[T, N, *obs_shape] from the state {name: [N, ...]} -> the core's outputs and its state after
        each step ([T, N, ...])."""
        x = self.encode(obs.flatten(0, 1)).reshape(obs.shape[0], obs.shape[1], -1)
        return self.core.unroll(x, state, episode_start)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """Observations [M, *obs_shape] -> the core's inputs [M, hidden]."""
        return self.torso(obs) if self.image else self.torso(obs.reshape(len(obs), -1).float())

    def step_from(self, obs: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """Q values of [M, *obs_shape] observations, each from its own state [M, ...] (no reset)."""
        return self.head(self.core.step_from(self.encode(obs), state))


def make_policy(obs_space: gym.Space, action_space: gym.Space, args: Args) -> RecurrentQNetwork:
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ValueError(f"r2d2 needs a discrete action space, got {action_space}")
    return RecurrentQNetwork(networks.obs_shape(obs_space), int(action_space.n), args)


# -- actor side -------------------------------------------------------------------------------

def history(args: Args) -> History:
    # The burn-in and a whole sequence before the segment: the item starts T steps into them
    # (T, the segment length, is the rollout's), so its trained steps end with the segment.
    return History(before=args.burn_in + args.sequence_length, after=args.n_step - 1)


class RecurrentEpsilonGreedy(dqn.EpsilonExploration):
    """DQN's Ape-X epsilon-greedy exploration over the recurrent Q values; the state is the core's."""

    def initial_state(self, num_envs: int) -> dict[str, np.ndarray]:
        return cores.initial_state(self.args, num_envs)

    def forward(self, net: RecurrentQNetwork, obs, state, episode_start):
        with torch.inference_mode():
            put = functools.partial(networks.on_device, net)
            outs, states = net.unroll(put(obs)[None], {k: put(v) for k, v in state.items()}, put(episode_start)[None])
            return networks.to_numpy(net.head(outs[0])), {k: networks.to_numpy(v[0]) for k, v in states.items()}


def make_items(rollout: Rollout, args: Args) -> dict[str, np.ndarray]:
    """One sequence per environment: burn-in + sequence_length + n_step - 1 steps ending n_step - 1
    steps after the segment, its n-step returns, and the core's state at its first step.

    The rollout holds burn_in + sequence_length steps before the segment's T own steps; the item
    starts T steps into them, so its trained steps are the sequence_length steps that end with the
    segment."""
    T = rollout.num_steps
    if T > args.sequence_length:
        raise ValueError(f"r2d2 trains on sequences of algo.sequence_length={args.sequence_length} steps that end "
                         f"where segments end: run.segment_length={T} would leave steps untrained")
    skip = rollout.before - args.burn_in - args.sequence_length + T  # == T
    B, m, n = args.burn_in, args.sequence_length, args.n_step
    window = slice(skip, skip + B + m + n - 1)
    trained = slice(skip + B, skip + B + m + n - 1)
    returns, discounts, last = ops.nstep_targets(rollout.rewards[trained], rollout.terminated[trained],
                                                 rollout.truncated[trained], args.gamma, n, m)
    per_env = lambda x: np.ascontiguousarray(np.swapaxes(x, 0, 1))  # time-major [L, B] -> [B, L]
    return {
        "obs": per_env(rollout.obs[window]),
        "action": per_env(rollout.actions[window]).astype(np.int64),
        "episode_start": per_env(rollout.episode_start[window]),
        "next_obs": per_env(rollout.next_obs[trained]),  # bootstrap observations of the trained steps
        "return": per_env(returns).astype(np.float32),
        "discount": per_env(discounts).astype(np.float32),
        "bootstrap": per_env(last).astype(np.int64),  # index into next_obs of each target's bootstrap
        "valid": per_env(rollout.valid[skip + B:skip + B + m]),
        **{k: np.ascontiguousarray(v[skip]) for k, v in rollout.states.items()},
    }


# -- learner side -----------------------------------------------------------------------------

class Learner(LearnerBase):
    checkpointed = ("net", "target", "optimizer")

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, args: Args, device: torch.device):
        super().__init__(args, device)
        self.net = make_policy(obs_space, action_space, args).to(device)
        self.target = make_policy(obs_space, action_space, args).to(device)
        self.target.load_state_dict(self.net.state_dict())
        self.optimizer = ops.adam(self.net.parameters(), lr=args.lr, eps=args.adam_eps)

    def update(self, batch: Batch) -> Update:
        a = self.args
        B, m = a.burn_in, a.sequence_length
        time_major = lambda x: x.transpose(0, 1)
        obs, start = time_major(batch["obs"]), time_major(batch["episode_start"])
        stored = {k: batch[k] for k in cores.initial_state(a, 0)}  # the core's state at each sequence's start
        with torch.no_grad():  # burn-in: rebuild the state the online net has at the first trained step
            state = stored
            if B:
                _, states = self.net.unroll(obs[:B], stored, start[:B])
                state = {k: v[-1] for k, v in states.items()}
            _, target_states = self.target.unroll(obs, stored, start)
        outs, states = self.net.unroll(obs[B:], state, start[B:])  # [m + n - 1, N, ...]
        actions = time_major(batch["action"])[B:B + m]
        q = self.net.head(outs[:m]).gather(2, actions.unsqueeze(2)).squeeze(2)  # [m, N]

        with torch.no_grad():  # n-step double-Q targets, bootstrapped from each step's true next observation
            next_obs = time_major(batch["next_obs"])  # [m + n - 1, N, ...]
            S, N = next_obs.shape[:2]
            flat = lambda x: x.reshape((S * N,) + x.shape[2:])
            q_next_online = self.net.step_from(flat(next_obs), {k: flat(v.detach()) for k, v in states.items()}
                                               ).reshape(S, N, -1)
            q_next_target = self.target.step_from(flat(next_obs), {k: flat(v[B:]) for k, v in target_states.items()}
                                                  ).reshape(S, N, -1)
            boot = time_major(batch["bootstrap"])  # [m, N] index into the S steps
            envs = torch.arange(N, device=self.device).expand(m, N)
            online_at, target_at = q_next_online[boot, envs], q_next_target[boot, envs]  # [m, N, A]
            best = online_at.argmax(dim=2, keepdim=True) if a.double else target_at.argmax(dim=2, keepdim=True)
            q_next = target_at.gather(2, best).squeeze(2)
            returns, discounts = time_major(batch["return"]), time_major(batch["discount"])
            if a.value_rescale:
                y = ops.value_rescale(returns + discounts * ops.inverse_value_rescale(q_next, a.rescale_eps),
                                      a.rescale_eps)
            else:
                y = returns + discounts * q_next

        valid = time_major(batch["valid"]).float()
        td = y - q
        per_sequence = 0.5 * (td ** 2 * valid).sum(0) / valid.sum(0).clamp(min=1)  # [N]
        loss = batch.weighted_mean(per_sequence)  # importance weights correct prioritized sampling
        self.minimize(loss, a.max_grad_norm)
        if self.updates % a.target_update_every == 0:
            self.target.load_state_dict(self.net.state_dict())
        td_abs = td.detach().abs().T  # [N, m]
        metrics = {"loss": loss.item(), "q_mean": q.mean().item()}
        if batch.weights is None:
            return Update(metrics)
        priorities = ops.sequence_priority(td_abs, valid.T, a.priority_eta)
        return Update(metrics, priorities.cpu().numpy() + dqn.PRIORITY_FLOOR)


AGENT = Agent(name="r2d2", Args=Args, make_policy=make_policy, make_core=RecurrentEpsilonGreedy, make_items=make_items,
              Learner=Learner, table_config=table_config, history=history, run_defaults={"segment_length": 40},
              sample_options=apex.sample_options)
