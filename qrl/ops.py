"""Shared RL math as pure functions, each tested against hand-computed values."""

from __future__ import annotations

from typing import Iterable

import numpy as np


def nstep_targets(
    rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray, gamma: float, n: int, num_starts: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n-step returns for the first ``num_starts`` steps of a [L, B] window.

    For a start t the window covers steps t..t+k-1, where k = n or fewer when an
    episode ends (terminated or truncated) inside it. Returns, each [S, B]:
      returns    sum_{i<k} gamma^i r[t+i]
      discounts  gamma^k, or 0 when the window ended by termination (no bootstrap)
      last       t+k-1, the step whose next observation bootstraps the target
    Needs L >= num_starts + n - 1 so that every window fits.
    """
    L = rewards.shape[0]
    S = num_starts
    if L < S + n - 1:
        raise ValueError(f"window of {L} steps cannot give {S} starts with n={n}")
    shape = (S,) + rewards.shape[1:]
    returns = np.zeros(shape, dtype=np.float64)
    alive = np.ones(shape, dtype=bool)
    steps = np.zeros(shape, dtype=np.int64)
    ended_by_termination = np.zeros(shape, dtype=bool)
    for k in range(n):
        r, term, trunc = rewards[k:k + S], terminated[k:k + S], truncated[k:k + S]
        returns += np.where(alive, gamma**k * r, 0.0)
        steps = np.where(alive, k + 1, steps)
        ended_by_termination = np.where(alive, term, ended_by_termination)
        alive &= ~(term | trunc)
    discounts = np.where(ended_by_termination, 0.0, gamma**steps)
    starts = np.arange(S).reshape((S,) + (1,) * (rewards.ndim - 1))
    return returns, discounts, starts + steps - 1


def linear_schedule(start: float, end: float, duration: int, t: int) -> float:
    """start -> end linearly over ``duration`` steps, then end."""
    if duration <= 0:
        return end
    return start + (end - start) * min(1.0, t / duration)


def apex_epsilon(index: int, count: int, base: float = 0.4, alpha: float = 7.0) -> float:
    """Ape-X per-actor exploration: eps_i = base^(1 + alpha * i / (count - 1))."""
    if count <= 1:
        return base
    return base ** (1 + alpha * index / (count - 1))


def polyak_update(target: Iterable, online: Iterable, tau: float) -> None:
    """target <- (1 - tau) * target + tau * online, in place (torch parameters); tau = 1 copies.
    One multi-tensor lerp (as torch.optim.swa_utils' EMA), not one call per tensor: small networks
    update hundreds of times a second and each call costs more than its arithmetic."""
    import torch

    target, online = list(target), list(online)
    if len(target) != len(online):
        raise ValueError(f"polyak_update: {len(target)} target tensors for {len(online)} online ones")
    with torch.no_grad():
        torch._foreach_lerp_(target, online, tau)


def clip_grad_norm(params: list, max_norm: float):
    """torch.nn.utils.clip_grad_norm_ (L2 norm) in three multi-tensor ops when every gradient is
    on one device with one dtype (else torch's own): scale the gradients by
    min(1, max_norm / (norm + 1e-6)) in place; returns the norm before clipping. torch's version
    also regroups the tensors by device and dtype on every call: 118 us against 68 us here for the
    PPO MLP's gradients, on a PPO minibatch step of about 1.2 ms."""
    import torch

    grads = [p.grad for p in params if p.grad is not None]
    if not grads or len({(g.device, g.dtype) for g in grads}) > 1:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return total


def adam(params: Iterable, **kwargs):
    """torch.optim.Adam with its fused kernel where every parameter allows it (a floating dtype on a
    device torch has the kernel for, CPU included): one kernel per step instead of a handful of
    small ops per parameter tensor, which is most of a small network's optimizer time
    (scripts/bench_learner.py). The same algorithm and state; anywhere else, torch's default."""
    import torch
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    params = list(params)
    # A caller who chose foreach, fused or differentiable gets exactly that.
    if "fused" not in kwargs and "foreach" not in kwargs and not kwargs.get("differentiable"):
        tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
        devices = _get_fused_kernels_supported_devices()
        if tensors and all(p.is_floating_point() and p.device.type in devices for p in tensors):
            kwargs["fused"] = True
    return torch.optim.Adam(params, **kwargs)


def running_discounted_sums(rewards, gamma: float):
    """Rows of rewards [N, T] -> each step's discounted sum of its row's rewards so far (numpy arrays or
    torch tensors): the returns whose scale reward scaling and RND's intrinsic rewards divide by."""
    sums = rewards * 0.0
    running = rewards[:, 0] * 0.0
    for t in range(rewards.shape[1]):
        running = running * gamma + rewards[:, t]
        sums[:, t] = running
    return sums


def gae(rewards, values, next_values, terminated, ends, gamma: float, lam: float):
    """Generalized advantage estimation over a [T, B] unroll (torch or numpy arrays).

    next_values[t] is V of the true next observation of step t (its final observation when
    the episode ended there), so a time-limit truncation still bootstraps; ``terminated``
    stops bootstrapping, ``ends`` (terminated or truncated) stops the advantage from
    flowing back across an episode boundary. Returns (advantages, returns = advantages + values).
    Schulman et al. 2016."""
    not_term = 1.0 - terminated * 1.0
    not_end = 1.0 - ends * 1.0
    deltas = rewards + gamma * not_term * next_values - values
    adv = deltas * 0.0
    acc = deltas[0] * 0.0
    for t in range(len(rewards) - 1, -1, -1):
        acc = deltas[t] + gamma * lam * not_end[t] * acc
        adv[t] = acc
    return adv, adv + values


def vtrace(log_rhos, rewards, values, next_values, terminated, ends, gamma: float,
           rho_bar: float = 1.0, c_bar: float = 1.0, pg_rho_bar: float = 1.0):
    """V-trace targets and policy-gradient advantages over a [T, B] unroll (torch tensors).

    log_rhos = log pi(a|x) - log mu(a|x) (target over behaviour policy). With the same
    episode-boundary conventions as gae(): next_values bootstraps truncated steps,
    ``terminated`` zeroes the discount, ``ends`` cuts the trace. Returns (vs, pg_advantages):
      vs_t = V(x_t) + delta_t + gamma c_t (vs_{t+1} - V(x_{t+1}))   (trace cut at episode ends)
      delta_t = rho_t (r_t + gamma V(x'_t) - V(x_t)),  rho_t = min(rho_bar, e^log_rho), c_t = min(c_bar, e^log_rho)
      pg_adv_t = min(pg_rho_bar, e^log_rho) (r_t + gamma vs'_t - V(x_t)),  vs'_t = vs_{t+1}, or V(x'_t) at an end
    Espeholt et al. 2018, section 4."""
    import torch

    rhos = torch.exp(log_rhos)
    clipped_rhos = torch.clamp(rhos, max=rho_bar)
    cs = torch.clamp(rhos, max=c_bar)
    discounts = gamma * (1.0 - terminated.float())
    not_end = 1.0 - ends.float()
    deltas = clipped_rhos * (rewards + discounts * next_values - values)
    vs_minus_v = torch.zeros_like(values)
    acc = torch.zeros_like(values[0])
    for t in range(len(rewards) - 1, -1, -1):
        acc = deltas[t] + discounts[t] * cs[t] * not_end[t] * acc
        vs_minus_v[t] = acc
    vs = values + vs_minus_v
    # The value after step t: vs of the next step in the same episode, else V of the true next observation.
    vs_next = next_values.clone()
    vs_next[:-1] = torch.where(not_end[:-1] > 0, vs[1:], next_values[:-1])
    pg_adv = torch.clamp(rhos, max=pg_rho_bar) * (rewards + discounts * vs_next - values)
    return vs.detach(), pg_adv.detach()


def retrace(q_taken, next_values, rewards, log_rhos, terminated, ends, gamma: float, lam: float = 1.0):
    """Retrace(lambda) targets for Q(x_t, a_t) over a [T, B] unroll (torch tensors):

      Q^ret_t = r_t + gamma [E_pi Q(x'_t, .) + c_{t+1} (Q^ret_{t+1} - Q(x_{t+1}, a_{t+1}))]
      c_t = lambda min(1, pi(a_t|x_t) / mu(a_t|x_t)),  log_rhos = log pi - log mu of the actions taken

    q_taken[t] = Q(x_t, a_t); next_values[t] = E_pi Q(x'_t, .) at the true next observation. With
    gae()'s episode conventions: ``terminated`` zeroes the discount, ``ends`` cuts the trace (x'_t
    then bootstraps alone), so a truncated step still bootstraps. The correction is safe for any
    behaviour policy mu and, on-policy with lambda = 1, gives the n-step return bootstrapped at the
    unroll's end. Munos et al. 2016, eq. (3) and (4)."""
    import torch

    cs = lam * torch.clamp(torch.exp(log_rhos), max=1.0)
    discounts = gamma * (1.0 - terminated.float())
    not_end = 1.0 - ends.float()
    targets = torch.zeros_like(q_taken)
    correction = torch.zeros_like(q_taken[0])  # c_{t+1} (Q^ret_{t+1} - Q_{t+1}), zero past the unroll's end
    for t in range(len(rewards) - 1, -1, -1):
        targets[t] = rewards[t] + discounts[t] * (next_values[t] + not_end[t] * correction)
        correction = cs[t] * (targets[t] - q_taken[t])
    return targets.detach()


def clipped_surrogate(ratio, advantages, clip: float):
    """PPO's policy loss: -mean(min(r A, clip(r, 1 - clip, 1 + clip) A)) (torch tensors)."""
    import torch

    return -torch.min(ratio * advantages, torch.clamp(ratio, 1 - clip, 1 + clip) * advantages).mean()


def value_loss(values, old_values, returns, clip: float = 0.0):
    """Squared error to the returns; with clip > 0, PPO's clipped version: the worse of the
    unclipped error and the error of the old value moved by at most clip."""
    import torch

    if clip <= 0:
        return ((values - returns) ** 2).mean()
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return torch.max((values - returns) ** 2, (clipped - returns) ** 2).mean()


def value_rescale(x, eps: float = 1e-3):
    """h(x) = sign(x) (sqrt(|x| + 1) - 1) + eps x: squashes large returns so one network fits
    values of any scale (torch tensors or numpy arrays). Pohlen et al. 2018."""
    lib = _lib(x)
    return lib.sign(x) * (lib.sqrt(lib.abs(x) + 1) - 1) + eps * x


def inverse_value_rescale(x, eps: float = 1e-3):
    """h^-1(x) = sign(x) (((sqrt(1 + 4 eps (|x| + 1 + eps)) - 1) / (2 eps))^2 - 1), exact inverse of
    value_rescale. Pohlen et al. 2018, proposition A.2."""
    lib = _lib(x)
    return lib.sign(x) * (((lib.sqrt(1 + 4 * eps * (lib.abs(x) + 1 + eps)) - 1) / (2 * eps)) ** 2 - 1)


def sequence_priority(td_abs, mask, eta: float = 0.9):
    """R2D2's priority of each sequence from its per-step |TD errors| [N, T] over the steps where
    mask is true: eta * max + (1 - eta) * mean. Kapturowski et al. 2019, section 2.3."""
    lib = _lib(td_abs)
    masked = td_abs * mask
    count = mask.sum(1)
    count = count.clamp(min=1) if lib is not np else np.maximum(count, 1)
    top = masked.max(1).values if lib is not np else masked.max(1)
    return eta * top + (1 - eta) * masked.sum(1) / count


def lstm_unroll(cell, x, h, c, episode_start):
    """Run an LSTM cell over [T, N, D] inputs from the state (h, c) [N, H], zeroing the state before
    each step where an episode starts (episode_start [T, N] bool). Returns the hidden and the cell
    states after each step, [T, N, H] each (torch tensors)."""
    import torch

    hs, cs = [], []
    for t in range(len(x)):
        keep = (~episode_start[t]).to(h.dtype).unsqueeze(1)
        h, c = cell(x[t], (h * keep, c * keep))
        hs.append(h)
        cs.append(c)
    return torch.stack(hs), torch.stack(cs)


def _lib(x):
    """numpy for arrays, torch for tensors."""
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return np
    import torch

    return torch


def categorical_projection(returns, discounts, probs, support):
    """C51's target: the distribution of returns + discounts * Z, Z ~ probs on `support` (evenly
    spaced atoms), projected back onto the support: each shifted atom's mass is split between its
    two neighbours in proportion to closeness; atoms beyond the ends go to the end atoms
    (torch tensors: returns, discounts [B], probs [B, atoms], support [atoms]). Bellemare et al. 2017,
    algorithm 1."""
    import torch

    atoms = len(support)
    v_min, v_max = support[0], support[-1]
    delta = (v_max - v_min) / (atoms - 1)
    shifted = (returns.unsqueeze(1) + discounts.unsqueeze(1) * support).clamp(v_min, v_max)
    b = (shifted - v_min) / delta  # fractional atom index, [B, atoms]
    lower, upper = b.floor().long().clamp(0, atoms - 1), b.ceil().long().clamp(0, atoms - 1)
    # all the mass to `lower` when b lands exactly on an atom (lower == upper)
    to_lower = probs * (upper.to(probs.dtype) - b + (lower == upper).to(probs.dtype))
    to_upper = probs * (b - lower.to(probs.dtype))
    target = torch.zeros_like(probs)
    target.scatter_add_(1, lower, to_lower)
    target.scatter_add_(1, upper, to_upper)
    return target


def midpoint_fractions(n: int, device=None, dtype=None):
    """The fractions (2i + 1) / 2N, i = 0 .. N - 1: QR-DQN's quantiles, and IQN's acting fractions
    (a torch tensor)."""
    import torch

    return (torch.arange(n, device=device, dtype=dtype or torch.float32) + 0.5) / n


def quantile_huber_loss(quantiles, targets, kappa: float = 1.0, taus=None):
    """The quantile regression loss per item: predicted quantiles [B, N] at the fractions taus
    [B, N] (default: QR-DQN's midpoints (2i + 1) / 2N) against target samples [B, M]; for each pair
    the Huber loss of u = target - prediction, weighted by |tau_i - 1{u < 0}| / kappa, averaged over
    the targets and summed over the quantiles (torch tensors). Dabney et al. 2018a, equation 10;
    2018b (IQN), equation 3."""
    import torch

    n = quantiles.shape[1]
    if taus is None:
        taus = midpoint_fractions(n, quantiles.device, quantiles.dtype).expand(len(quantiles), n)
    u = targets.unsqueeze(1) - quantiles.unsqueeze(2)  # [B, N, M]
    huber = torch.where(u.abs() <= kappa, 0.5 * u**2, kappa * (u.abs() - 0.5 * kappa))
    weight = (taus.unsqueeze(2) - (u.detach() < 0).to(u.dtype)).abs()
    return (weight * huber / kappa).mean(2).sum(1)


def fraction_gradient(at_taus, at_hats):
    """FQF: the gradient of the 1-Wasserstein error of a quantile staircase with respect to its inner
    fractions tau_1..tau_(N-1), from the quantiles there [B, N-1] and at the midpoints [B, N]:
    dW1/dtau_i = 2 F(tau_i) - F(tau_hat_(i-1)) - F(tau_hat_i) where F rises around tau_i (Yang et al.
    2019, proposition 1); each term's sign flips where F falls there, as in the authors' code, so a
    quantile function that is not monotonic yet still gets a descent direction (torch tensors)."""
    import torch

    below = at_taus - at_hats[:, :-1]
    above = at_taus - at_hats[:, 1:]
    rising = at_taus > torch.cat([at_hats[:, :1], at_taus[:, :-1]], dim=1)
    falling = at_taus < torch.cat([at_taus[:, 1:], at_hats[:, -1:]], dim=1)
    return torch.where(rising, below, -below) + torch.where(falling, above, -above)
