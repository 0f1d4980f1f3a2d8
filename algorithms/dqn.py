"""DQN, distributed Ape-X style: actors explore with their own epsilon and
compute n-step targets; the learner samples the broker's replay table.

Switchable in Args: double DQN, dueling head, n-step returns, hard or Polyak
target updates, Huber or squared loss, gradient clipping.
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

from qrl import layers, ops
from qrl.algorithm import ActorCore, Agent, Batch, History, LearnerBase, Rollout, Update, replay_table
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
    atoms: int = 0
    """Distributional (C51): atoms of the categorical return distribution on [v_min, v_max]
    (0: learn expected values only)."""
    v_min: float = -10.0
    v_max: float = 10.0
    quantiles: int = 0
    """Distributional (QR-DQN): quantiles of the return distribution at fractions (2i + 1) / 2N,
    learned with the quantile Huber loss (0: off; not together with atoms)."""
    kappa: float = 1.0
    """QR-DQN and IQN: the quantile Huber loss's threshold."""
    iqn_n: int = 0
    """Distributional (IQN): quantile fractions sampled per item for the online net (0: off; not
    together with atoms or quantiles)."""
    iqn_n_target: int = 32
    """IQN: fractions sampled per item for the target."""
    iqn_k: int = 32
    """IQN: fractions Q is averaged over when acting (evenly spaced midpoints, so acting is deterministic)."""
    iqn_embedding: int = 64
    """IQN: cosines in the fraction embedding."""
    iqn_cvar: float = 1.0
    """IQN: act on fractions in (0, iqn_cvar]: 1 is risk-neutral, below 1 risk-averse (CVaR)."""
    fqf: bool = False
    """FQF (with iqn_n): a fraction proposal layer picks iqn_n fractions per state instead of drawing
    or spacing them, trained to minimize the 1-Wasserstein error of the quantile staircase; Q is the
    staircase's mean, for acting and for the target."""
    fraction_lr: float = 2.5e-9
    """FQF: learning rate of the fraction proposal layer (RMSprop, as in the paper)."""
    noisy: bool = False
    """Noisy nets: factorized Gaussian noise layers explore instead of epsilon-greedy (actors draw new
    noise per segment, the learner per update; evaluation uses the mean weights)."""
    noisy_std: float = 0.5
    """Noisy nets: sigma_0 of the noise scale's initialisation."""
    munchausen: bool = False
    """Munchausen RL: add alpha * clip(tau * log pi(a|s), log_policy_clip, 0) to the reward and bootstrap
    from the soft value sum_a' pi(a'|s') (Q(s', a') - tau log pi(a'|s')), pi = softmax(Q_target / tau);
    with Q values, QR-DQN or IQN (not C51); replaces double DQN."""
    munchausen_alpha: float = 0.9
    entropy_tau: float = 0.03
    """Munchausen: temperature of the softmax policy."""
    log_policy_clip: float = -1.0
    """Munchausen: lower clip of the scaled log-policy bonus."""


def table_config(args: Args) -> TableConfig:
    return replay_table(args, args.samples_per_insert)


PRIORITY_FLOOR = 1e-3


# -- network ----------------------------------------------------------------------------------

def nature_cnn(in_channels: int, hidden: int, linear=nn.Linear) -> nn.Sequential:
    """The Atari torso of Mnih et al. 2015 for [C, 84, 84] stacked frames."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 8, stride=4), nn.ReLU(),
        nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
        nn.Flatten(), linear(64 * 7 * 7, hidden), nn.ReLU(),
    )


def check_args(args: Args) -> None:
    """One line for combinations that have no meaning."""
    heads = [name for name, on in (("atoms", args.atoms), ("quantiles", args.quantiles), ("iqn_n", args.iqn_n)) if on]
    if len(heads) > 1:
        raise ValueError(f"algo.{' and algo.'.join(heads)} are different distributional heads: set one")
    if args.atoms and not args.v_min < args.v_max:
        raise ValueError(f"algo.v_min must be below algo.v_max, got {args.v_min} and {args.v_max}")
    if args.munchausen and args.atoms:
        raise ValueError("algo.munchausen works with Q values, quantiles or iqn_n, not with atoms (C51)")
    if args.munchausen and args.double:
        raise ValueError("algo.munchausen bootstraps from a softmax policy, not double DQN's argmax: "
                         "set algo.double=false")
    if args.iqn_n and not 0 < args.iqn_cvar <= 1:
        raise ValueError(f"algo.iqn_cvar must be in (0, 1], got {args.iqn_cvar}")
    if args.fqf and not args.iqn_n:
        raise ValueError("algo.fqf proposes the fractions of IQN's quantile network: "
                         "set algo.iqn_n (fractions per state)")
    if args.fqf and (args.munchausen or args.iqn_cvar < 1):
        raise ValueError("algo.fqf takes the mean over its own fractions: "
                         "not with algo.munchausen or algo.iqn_cvar < 1")


class QNetwork(nn.Module):
    """Q values from a torso and a (dueling) head. The head's outputs per action, by option:
    one Q value; atoms > 0: the logits of a categorical return distribution on a fixed support
    (C51); quantiles > 0: the return's quantiles at fixed fractions (QR-DQN); iqn_n > 0: the
    return's quantile at any fraction tau, the torso's features multiplied by a cosine embedding of
    tau before the last hidden layer (IQN). Q is the distribution's mean. noisy: the torso's last
    layer and the head are noisy layers (the MLP's first layer, like the CNN's convolutions, stays
    deterministic, as in Rainbow, where the fully connected layers are the noisy ones)."""

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, args: Args):
        super().__init__()
        check_args(args)
        linear = functools.partial(layers.NoisyLinear, std_init=args.noisy_std) if args.noisy else nn.Linear
        hidden = args.hidden
        self.image = len(obs_shape) == 3  # [C, H, W] frames (Atari): a CNN on pixels scaled to [0, 1]
        if self.image:
            self.torso = nature_cnn(obs_shape[0], hidden, linear)
        else:
            self.torso = nn.Sequential(nn.Linear(int(np.prod(obs_shape)), hidden), nn.ReLU(), linear(hidden, hidden),
                                       nn.ReLU())
        self.implicit = bool(args.iqn_n)
        self.fractions = None
        if self.implicit:  # the last hidden layer comes after the fraction embedding
            *first, last, relu = self.torso
            self.torso, self.mix = nn.Sequential(*first), nn.Sequential(last, relu)
            self.embedding = layers.CosineEmbedding(args.iqn_embedding, last.in_features)
            self.register_buffer("acting_taus", args.iqn_cvar * ops.midpoint_fractions(args.iqn_k), persistent=False)
        if args.fqf:  # (check_args: only with iqn_n)
            # The fraction proposal layer, on the torso's features (detached: it does not shape them).
            # Small initial weights, as in the authors' code: proposals start near-uniform instead of
            # following random logits that grow with the features (peaked proposals overestimate Q).
            self.fractions = nn.Linear(last.in_features, args.iqn_n)
            nn.init.xavier_uniform_(self.fractions.weight, gain=0.01)
            nn.init.zeros_(self.fractions.bias)
        # self.atoms: outputs per action beyond one (C51 atoms or QR-DQN quantiles)
        self.dueling, self.num_actions = args.dueling, num_actions
        self.atoms, self.quantile = args.atoms or args.quantiles, bool(args.quantiles)
        outputs = max(self.atoms, 1)
        self.advantage = linear(hidden, num_actions * outputs)
        self.value = linear(hidden, outputs) if args.dueling else None
        if args.atoms:
            self.register_buffer("support", torch.linspace(args.v_min, args.v_max, args.atoms))

    def head(self, h, xp=torch):
        """The dueling combination of the head's outputs (torch tensors or, xp=np, numpy arrays):
        [B, num_actions] Q values, or [B, num_actions, atoms] logits."""
        shape = (len(h), self.num_actions) + ((self.atoms,) if self.atoms else ())
        adv = self.advantage(h).reshape(shape)
        if self.value is None:
            return adv
        value = self.value(h).reshape((len(h), 1) + shape[2:])
        mean = adv.mean(axis=1, keepdims=True) if xp is np else adv.mean(dim=1, keepdim=True)
        return value + adv - mean

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        return self.torso(obs.float() / 255.0) if self.image else self.torso(obs.flatten(1).float())

    def distribution(self, obs: torch.Tensor, taus: torch.Tensor | None = None) -> torch.Tensor:
        """[B, *obs_shape] -> [B, num_actions, N]: C51's logits, QR-DQN's quantiles, or IQN's
        quantiles at the fractions taus [B, N]."""
        h = self.features(obs)
        if not self.implicit:
            return self.head(h)
        return self.quantiles_at(h, taus)

    def quantiles_at(self, h: torch.Tensor, taus: torch.Tensor) -> torch.Tensor:
        """IQN: the quantiles [B, num_actions, N] at fractions taus [B, N] from the torso's features h."""
        B, N = taus.shape
        mixed = self.mix((h.unsqueeze(1) * self.embedding(taus)).flatten(0, 1))  # [B * N, hidden]
        return self.head(mixed).reshape(B, N, self.num_actions).transpose(1, 2)

    def propose(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FQF: the fractions 0 = tau_0 < ... < tau_N = 1 [B, N + 1] proposed for features h, and the
        midpoints tau_hat [B, N] the quantiles are taken at."""
        taus = F.pad(torch.softmax(self.fractions(h.detach()), dim=1).cumsum(dim=1), (1, 0))
        taus = torch.cat([taus[:, :-1], torch.ones_like(taus[:, -1:])], dim=1)  # exactly 1, not 1 - rounding
        return taus, (taus[:, :-1] + taus[:, 1:]) / 2

    def staircase_mean(self, h: torch.Tensor) -> torch.Tensor:
        """FQF: Q [B, num_actions], the mean of the quantile staircase on the proposed fractions."""
        taus, tau_hats = self.propose(h)
        return (self.quantiles_at(h, tau_hats) * (taus[:, 1:] - taus[:, :-1]).unsqueeze(1)).sum(2)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:  # [B, *obs_shape] -> [B, num_actions]
        if self.fractions is not None:
            return self.staircase_mean(self.features(obs))
        if self.implicit:
            return self.distribution(obs, self.acting_taus.expand(len(obs), -1)).mean(2)
        out = self.head(self.features(obs))
        if self.quantile:
            return out.mean(2)
        return (torch.softmax(out, dim=2) * self.support).sum(2) if self.atoms else out

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """forward() on a numpy batch: in numpy for an MLP (see qrl/numpy_mlp.py), else in torch."""
        parts = numpy_twin(self, lambda: None if self.image or self.fractions is not None else [
            compile_mlp(m) for m in (self.torso, self.advantage, self.value) if m is not None])
        if parts is None or None in parts:  # CNNs, noisy layers and FQF keep torch
            with torch.inference_mode():
                return self(torch.as_tensor(obs)).numpy()
        torso, advantage, *value = parts
        h = torso(obs)
        if self.implicit:
            h = self._numpy_mix(h)  # [B * K, hidden]
        if not self.atoms:  # the hot path of every dqn/apex actor step: no reshapes
            adv = advantage(h)
            q = adv if not value else value[0](h) + adv - adv.mean(axis=1, keepdims=True)
            return q.reshape(len(obs), -1, self.num_actions).mean(axis=1) if self.implicit else q
        out = _NumpyHead(self, advantage, value[0] if value else None).head(h, xp=np)
        if self.quantile:
            return out.mean(axis=2)
        p = np.exp(out - out.max(axis=2, keepdims=True))
        return (p * self.support.numpy()).sum(2) / p.sum(2)

    def _numpy_mix(self, h: np.ndarray) -> np.ndarray:
        """IQN in numpy: the torso's features times the embedding of the acting fractions, through
        the last hidden layer; [B, width] -> [B * K, hidden]."""
        embed, mix, cosines = numpy_twin(self.embedding, lambda: (
            compile_mlp(self.embedding.linear), compile_mlp(self.mix),
            np.cos(self.acting_taus.numpy()[:, None] * self.embedding.frequencies.numpy()[None])))  # fixed
        phi = np.maximum(embed(cosines), 0)  # [K, width]: recomputed each call, the weights change
        return mix((h[:, None, :] * phi[None]).reshape(-1, h.shape[1]))


class _NumpyHead:
    """QNetwork.head on compiled numpy layers."""

    def __init__(self, net: QNetwork, advantage, value):
        self.num_actions, self.atoms, self.advantage, self.value = net.num_actions, net.atoms, advantage, value

    head = QNetwork.head


def make_policy(obs_space: gym.Space, action_space: gym.Space, args: Args) -> QNetwork:
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ValueError(f"dqn needs a discrete action space, got {action_space}")
    return QNetwork(tuple(obs_space.shape), int(action_space.n), args)


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
    checkpointed = ("net", "target", "optimizer")

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, args: Args, device: torch.device):
        super().__init__(args, device)
        self.net = make_policy(obs_space, action_space, args).to(device)
        self.target = make_policy(obs_space, action_space, args).to(device)
        self.target.load_state_dict(self.net.state_dict())
        if args.fqf:  # the fraction proposal layer learns by its own loss, at its own rate
            fraction_params = set(self.net.fractions.parameters())
            self.optimizer = ops.adam([p for p in self.net.parameters() if p not in fraction_params], lr=args.lr)
            self.fraction_optimizer = torch.optim.RMSprop(self.net.fractions.parameters(), lr=args.fraction_lr,
                                                          alpha=0.95, eps=1e-5)
            self.checkpointed = (*self.checkpointed, "fraction_optimizer")
        else:
            self.optimizer = ops.adam(self.net.parameters(), lr=args.lr)

    def update(self, batch: Batch) -> Update:
        a = self.args
        if a.noisy:  # new noise for every update
            layers.sample_noise(self.net)
            layers.sample_noise(self.target)
        if a.fqf:
            per_item, q, td = self._fqf_loss(batch)
        elif a.quantiles or a.iqn_n:
            per_item, q, td = self._quantile_loss(batch)
        elif a.atoms:
            per_item, q, td = self._distributional_loss(batch)
        else:
            per_item, q, td = self._expected_value_loss(batch)
        loss = batch.weighted_mean(per_item)  # importance weights correct prioritized sampling
        if a.anneal_updates:
            for group in self.optimizer.param_groups:
                group["lr"] = ops.linear_schedule(a.lr, a.lr_final, a.anneal_updates, self.updates)
        self.minimize(loss, a.max_grad_norm)
        if a.target_tau < 1.0:
            ops.polyak_update(self.parameters_of(self.target), self.parameters_of(self.net), a.target_tau)
        elif self.updates % a.target_update_every == 0:
            self.target.load_state_dict(self.net.state_dict())
        metrics = {"loss": loss.item(), "q_mean": q.mean().item()}
        if batch.weights is None:
            return Update(metrics)
        # prioritized replay: new priorities for the sampled items (+ a floor so none starves)
        return Update(metrics, td.detach().abs().cpu().numpy() + PRIORITY_FLOOR)

    def _expected_value_loss(self, t: Batch):
        """Per-item Huber (or squared) TD loss toward return + discount * Q_target(next, a*) (or
        Munchausen's target); the TD errors."""
        a = self.args
        n = len(t["obs"])
        if a.double:  # one forward pass of the online net over obs and next_obs together
            q_all = self.net(torch.cat([t["obs"], t["next_obs"]]))
            q_online, best_next = q_all[:n], q_all[n:].detach().argmax(dim=1, keepdim=True)
        else:
            q_online = self.net(t["obs"])
        q = q_online.gather(1, t["action"].unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            if a.munchausen:
                q_target = self.target(torch.cat([t["obs"], t["next_obs"]]))
                td_target = self._munchausen_target(t, q_target[:n], q_target[n:], q_target[n:])
            else:
                q_next_target = self.target(t["next_obs"])
                if a.double:
                    q_next = q_next_target.gather(1, best_next).squeeze(1)
                else:
                    q_next = q_next_target.max(dim=1).values
                td_target = t["return"] + t["discount"] * q_next  # discount already holds gamma^k and termination
        if a.huber:
            per_item = F.huber_loss(q, td_target, reduction="none", delta=a.huber_delta)
        else:
            per_item = F.mse_loss(q, td_target, reduction="none")
        return per_item, q, td_target - q

    def _munchausen_target(self, t, q_now, q_next, next_values):
        """Munchausen's target from the target net's Q values at obs and at next_obs [B, A], for
        next_values [B, A] (Q) or [B, A, N] (quantiles): return + alpha * clip(tau log pi(a|obs), l0, 0)
        + discount * sum_a' pi(a'|next) (next_values(a') - tau log pi(a'|next)), pi = softmax(Q / tau).
        Vieillard et al. 2020, equation 2 (M-DQN) and its quantile form (M-IQN). With n-step items the
        bonus is the first step's: the later steps' observations are not in the item."""
        a = self.args
        tau = a.entropy_tau
        tau_log_pi = tau * F.log_softmax(q_now / tau, dim=1).gather(1, t["action"].unsqueeze(1)).squeeze(1)
        bonus = a.munchausen_alpha * tau_log_pi.clamp(a.log_policy_clip, 0.0)
        log_pi_next = F.log_softmax(q_next / tau, dim=1)
        if next_values.dim() == 3:
            log_pi_next = log_pi_next.unsqueeze(2)
        soft_value = (log_pi_next.exp() * (next_values - tau * log_pi_next)).sum(1)  # [B] or [B, N]
        first = t["return"] + bonus
        if soft_value.dim() == 2:
            return first.unsqueeze(1) + t["discount"].unsqueeze(1) * soft_value
        return first + t["discount"] * soft_value

    def _distributional_loss(self, t: Batch):
        """C51: cross-entropy between the projected target distribution and the predicted one; the
        cross-entropy also serves as the priority (as Rainbow's KL)."""
        a = self.args
        n = len(t["obs"])
        support = self.net.support
        logits = self.net.distribution(torch.cat([t["obs"], t["next_obs"]]) if a.double else t["obs"])
        taken = logits[torch.arange(n, device=self.device), t["action"]]  # [B, atoms]
        log_p = F.log_softmax(taken, dim=1)
        with torch.no_grad():
            target_probs = torch.softmax(self.target.distribution(t["next_obs"]), dim=2)  # [B, A, atoms]
            chooser = torch.softmax(logits[n:], dim=2) if a.double else target_probs
            best_next = (chooser * support).sum(2).argmax(dim=1)
            projected = ops.categorical_projection(t["return"], t["discount"],
                                                   target_probs[torch.arange(n, device=self.device), best_next],
                                                   support)
        per_item = -(projected * log_p).sum(1)
        q = (log_p.exp() * support).sum(1)
        return per_item, q, per_item

    def _taus(self, rows: int, count: int) -> torch.Tensor | None:
        """IQN: fractions drawn uniformly, [rows, count]; None for QR-DQN's fixed ones."""
        return torch.rand(rows, count, device=self.device) if self.args.iqn_n else None

    def _quantile_loss(self, t: Batch):
        """QR-DQN and IQN: the quantile Huber loss between the taken action's quantiles and the target
        quantiles return + discount * theta_target(next, a*) (or Munchausen's target); the loss also
        serves as the priority. IQN draws its fractions anew for every item, online and target."""
        a = self.args
        n = len(t["obs"])
        rows = torch.arange(n, device=self.device)
        inputs = torch.cat([t["obs"], t["next_obs"]]) if a.double else t["obs"]
        taus = self._taus(len(inputs), a.iqn_n)
        out = self.net.distribution(inputs, taus)  # [n or 2n, A, N]
        taken = out[rows, t["action"]]  # [B, N]
        with torch.no_grad():
            if a.munchausen:
                both = self.target.distribution(torch.cat([t["obs"], t["next_obs"]]), self._taus(2 * n, a.iqn_n_target))
                target = self._munchausen_target(t, both[:n].mean(2), both[n:].mean(2), both[n:])
            else:
                next_target = self.target.distribution(t["next_obs"], self._taus(n, a.iqn_n_target))  # [B, A, N']
                best_next = (out[n:] if a.double else next_target).mean(2).argmax(dim=1)
                target = t["return"].unsqueeze(1) + t["discount"].unsqueeze(1) * next_target[rows, best_next]
        per_item = ops.quantile_huber_loss(taken, target, a.kappa, None if taus is None else taus[:n])
        return per_item, taken.mean(1), per_item

    def _fqf_loss(self, t: Batch):
        """FQF: the quantile Huber loss at the fractions proposed for each item's state (the target's
        quantiles at the same fractions, for the next action of the staircase means), and one step
        of the fraction proposal layer down the 1-Wasserstein error's gradient with respect to its
        fractions (ops.fraction_gradient; Yang et al. 2019)."""
        a = self.args
        n = len(t["obs"])
        rows = torch.arange(n, device=self.device)
        h = self.net.features(torch.cat([t["obs"], t["next_obs"]]) if a.double else t["obs"])
        taus, tau_hats = self.net.propose(h[:n])
        taken = self.net.quantiles_at(h[:n], tau_hats.detach())[rows, t["action"]]  # [B, N]
        with torch.no_grad():
            target_h = self.target.features(t["next_obs"])
            best_next = (self.net.staircase_mean(h[n:]) if a.double else self.target.staircase_mean(target_h)).argmax(1)
            next_target = self.target.quantiles_at(target_h, tau_hats)[rows, best_next]  # [B, N]
            target = t["return"].unsqueeze(1) + t["discount"].unsqueeze(1) * next_target
            at_taus = self.net.quantiles_at(h[:n], taus[:, 1:-1])[rows, t["action"]]  # F(tau_1..tau_(N-1))
            w1_gradient = ops.fraction_gradient(at_taus, taken.detach())
        fraction_loss = t.weighted_mean((w1_gradient * taus[:, 1:-1]).sum(1))
        self.fraction_optimizer.zero_grad(set_to_none=True)
        fraction_loss.backward()
        self.fraction_optimizer.step()
        per_item = ops.quantile_huber_loss(taken, target, a.kappa, tau_hats.detach())
        return per_item, taken.mean(1), per_item


AGENT = Agent(name="dqn", Args=Args, make_policy=make_policy, make_core=EpsilonGreedy, make_items=make_items,
              Learner=Learner, table_config=table_config, history=history)
