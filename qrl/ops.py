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
    """target <- (1 - tau) * target + tau * online, in place (torch parameters); tau = 1 copies."""
    import torch

    with torch.no_grad():
        for t, o in zip(target, online):
            t.lerp_(o, tau)
