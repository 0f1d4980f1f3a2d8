"""Monte Carlo tree search with PUCT, vectorised over a batch of games (numpy).

One search grows B trees at once, one simulation at a time: each simulation walks every tree
down from its root by PUCT (AlphaZero, Silver et al. 2018),

    a = argmax  Q(s, a) + c_puct * P(s, a) * sqrt(N(s)) / (1 + N(s, a))     (legal a only)

to an edge not expanded yet, expands all B leaves in one call (one network evaluation for the
whole batch: the actors' leaf evaluations are batched, and on a central inference server many
actors' games share it), and backs the leaf's value up the path. The trees live in flat arrays
[B, nodes, actions] (Q, N, P, rewards, children), so a simulation costs a few numpy operations per
level of depth whatever B is; nothing walks a Python object per node.

What a search plays in is a Model: the game's own rules (AlphaZero) or a learned model (MuZero).

    model.expand(states, actions) -> Expansion: the children's states, the reward of each move,
        whether it ended the game, the children's legal moves, prior logits and values

Values are from the side of the player to move. In a two-player zero-sum game an edge's return is
reward - discount * value(child) (the child's mover is the opponent); in a single-player task
reward + discount * value(child). With `normalize_q` (MuZero) Q is rescaled to [0, 1] by the
smallest and largest Q in each tree, for rewards of any scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class SearchConfig:
    simulations: int = 50
    c_puct: float = 1.25
    dirichlet_alpha: float = 0.3
    noise_fraction: float = 0.25
    """Share of the root's priors replaced by Dirichlet noise (training only)."""
    discount: float = 1.0
    two_player: bool = True
    normalize_q: bool = False

    @classmethod
    def of(cls, args, training: bool, **fixed) -> SearchConfig:
        """An algorithm's search settings (its Args' simulations, c_puct, dirichlet_alpha and
        noise_fraction; no root noise unless training) with what the algorithm fixes."""
        return cls(simulations=args.simulations, c_puct=args.c_puct, dirichlet_alpha=args.dirichlet_alpha,
                   noise_fraction=args.noise_fraction if training else 0.0, **fixed)


MIN_Q_SPAN = 0.01
"""The smallest span normalize_q divides by (EfficientZero's value_delta_max): Q values closer than
this are not stretched to [0, 1], so float noise between batch sizes cannot decide a move."""


@dataclass
class Expansion:
    states: np.ndarray  # [n, *state]
    rewards: np.ndarray  # [n] to the player who made the move
    done: np.ndarray  # [n] bool: the move ended the game (the child is never expanded)
    legal: np.ndarray  # [n, A] bool
    logits: np.ndarray  # [n, A] the children's prior logits
    values: np.ndarray  # [n] the children's values to their player to move


class Model(Protocol):
    def expand(self, states: np.ndarray, actions: np.ndarray) -> Expansion: ...


@dataclass
class SearchResult:
    visits: np.ndarray  # [B, A] the root's visit counts
    value: np.ndarray  # [B] the root's mean backed-up value


def masked_softmax(logits: np.ndarray, legal: np.ndarray) -> np.ndarray:
    z = np.where(legal, logits, -np.inf)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def dirichlet_noise(legal: np.ndarray, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """A Dirichlet(alpha) sample over each root's legal moves [B, A] (0 on the illegal ones)."""
    noise = rng.gamma(alpha, 1.0, size=legal.shape) * legal
    return noise / np.maximum(noise.sum(axis=1, keepdims=True), 1e-12)


class Trees:
    """B search trees in flat arrays; node 0 of each is its root."""

    def __init__(self, roots: np.ndarray, legal: np.ndarray, priors: np.ndarray, capacity: int):
        B, A = legal.shape
        self.rows = np.arange(B)
        self.states = np.zeros((B, capacity, *roots.shape[1:]), roots.dtype)
        self.states[:, 0] = roots
        self.children = np.full((B, capacity, A), -1, np.int64)
        self.visits = np.zeros((B, capacity, A), np.float64)
        self.value_sum = np.zeros((B, capacity, A), np.float64)
        self.rewards = np.zeros((B, capacity, A), np.float64)
        self.priors = np.zeros((B, capacity, A), np.float64)
        self.legal = np.zeros((B, capacity, A), bool)
        self.terminal = np.zeros((B, capacity), bool)
        self.priors[:, 0], self.legal[:, 0] = priors, legal
        self.size = np.ones(B, np.int64)

    def q_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Each tree's smallest Q and the span up to its largest ([B, 1] each; span 1 where they are
        equal or nothing was visited), for normalize_q. The tree does not change while a
        simulation descends, so this is taken once per simulation."""
        seen = self.visits > 0
        mean = np.where(seen, self.value_sum / np.maximum(self.visits, 1), np.nan).reshape(len(self.rows), -1)
        low = np.nan_to_num(np.nanmin(mean, axis=1, initial=np.inf), posinf=0.0)
        high = np.nan_to_num(np.nanmax(mean, axis=1, initial=-np.inf), neginf=0.0)
        return low[:, None], np.where(high > low, np.maximum(high - low, MIN_Q_SPAN), 1.0)[:, None]

    def q(self, nodes: np.ndarray, bounds: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Q of each move at each tree's node (0 where not visited), rescaled by `bounds` when given."""
        visits, value_sum = self.visits[self.rows, nodes], self.value_sum[self.rows, nodes]
        q = np.where(visits > 0, value_sum / np.maximum(visits, 1), 0.0)
        if bounds is None:
            return q
        low, span = bounds
        return np.where(visits > 0, (q - low) / span, 0.0)

    def select(self, nodes: np.ndarray, config: SearchConfig,
               bounds: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """PUCT's action at each tree's node (ties to the lowest index); `bounds`: q_bounds() under normalize_q."""
        if config.normalize_q and bounds is None:
            bounds = self.q_bounds()
        visits = self.visits[self.rows, nodes]
        total = np.sqrt(np.maximum(visits.sum(axis=1, keepdims=True), 1.0))
        score = self.q(nodes, bounds) + config.c_puct * self.priors[self.rows, nodes] * total / (1.0 + visits)
        return np.where(self.legal[self.rows, nodes], score, -np.inf).argmax(axis=1)


def search(model: Model, roots: np.ndarray, legal: np.ndarray, logits: np.ndarray, config: SearchConfig,
           noise: np.ndarray | None = None) -> SearchResult:
    """Search B games from `roots` (with their legal moves and prior logits). With `noise`
    (dirichlet_noise: acting in training) the roots' priors are (1 - noise_fraction) * P +
    noise_fraction * noise; without it (evaluation) they are the network's."""
    priors = masked_softmax(logits, legal)
    if noise is not None:
        priors = (1 - config.noise_fraction) * priors + config.noise_fraction * noise
    trees = Trees(roots, legal, priors, config.simulations + 1)
    for _ in range(config.simulations):
        simulate(trees, model, config)
    visits = trees.visits[:, 0]
    return SearchResult(visits, trees.value_sum[:, 0].sum(axis=1) / np.maximum(visits.sum(axis=1), 1))


def simulate(trees: Trees, model: Model, config: SearchConfig) -> None:
    """One simulation in every tree: descend, expand the leaves in one call, back up."""
    path = descend(trees, config)
    values = np.zeros(len(trees.rows))  # 0 below an edge into a finished game
    nodes, actions = _leaf_edges(path, len(trees.rows))
    new = trees.children[trees.rows, nodes, actions] < 0
    if new.any():
        rows = trees.rows[new]
        out = model.expand(trees.states[rows, nodes[new]], actions[new])
        child = trees.size[rows]
        trees.size[rows] += 1
        trees.states[rows, child] = out.states
        trees.children[rows, nodes[new], actions[new]] = child
        trees.rewards[rows, nodes[new], actions[new]] = out.rewards
        trees.terminal[rows, child] = out.done
        trees.legal[rows, child] = out.legal & ~out.done[:, None]
        trees.priors[rows, child] = masked_softmax(out.logits, out.legal | out.done[:, None])
        values[new] = np.where(out.done, 0.0, out.values)
    backup(trees, path, values, config)


def descend(trees: Trees, config: SearchConfig) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each tree's path from its root to a leaf edge (one not expanded, or into a finished game):
    per level, (node, action, still descending) for every tree."""
    nodes = np.zeros(len(trees.rows), np.int64)
    active = np.ones(len(trees.rows), bool)
    bounds = trees.q_bounds() if config.normalize_q else None
    path = []
    while active.any():
        actions = trees.select(nodes, config, bounds)
        path.append((nodes, actions, active.copy()))
        child = trees.children[trees.rows, nodes, actions]
        active &= (child >= 0) & ~trees.terminal[trees.rows, np.maximum(child, 0)]
        nodes = np.where(active, child, nodes)
    return path


def _leaf_edges(path: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """The last edge of each tree's path."""
    nodes, actions = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for level_nodes, level_actions, active in path:
        nodes = np.where(active, level_nodes, nodes)
        actions = np.where(active, level_actions, actions)
    return nodes, actions


def backup(trees: Trees, path: list, values: np.ndarray, config: SearchConfig) -> None:
    """Each edge on the path gets its return: the edge's reward plus the discounted value below it
    (negated in a two-player game, where the value below is the opponent's)."""
    sign = -1.0 if config.two_player else 1.0
    returns = values.copy()
    for nodes, actions, active in reversed(path):
        rows, n, a = trees.rows[active], nodes[active], actions[active]
        returns[active] = trees.rewards[rows, n, a] + config.discount * sign * returns[active]
        trees.value_sum[rows, n, a] += returns[active]
        trees.visits[rows, n, a] += 1


def choose_moves(visits: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """Moves from root visit counts [B, A]: the most visited at temperature 0, else sampled in
    proportion to N^(1/T)."""
    if temperature <= 0:
        return visits.argmax(axis=1)
    weights = visits ** (1.0 / temperature)
    probs = weights / np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
    return np.minimum((probs.cumsum(axis=1) <= rng.random((len(probs), 1))).sum(axis=1), visits.shape[1] - 1)


class RulesModel:
    """A game's own rules as the search's model (AlphaZero): `evaluate` (positions -> prior logits
    [n, A], values [n]) gives the priors and values of the positions a move leads to."""

    def __init__(self, game, evaluate):
        self.game, self.evaluate = game, evaluate

    def expand(self, states: np.ndarray, actions: np.ndarray) -> Expansion:
        nxt, rewards, done = self.game.play(states, actions)
        logits, values = self.evaluate(nxt)
        return Expansion(nxt, rewards, done, self.game.legal(nxt), logits, values)
