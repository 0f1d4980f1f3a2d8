"""The same PUCT search as qrl/search/mcts.py written the plain way: one game at a time, a Python
object per node, one model call per leaf. It is the reference that the vectorised search is
checked against (tests/test_search.py: the same visit counts) and measured against
(scripts/bench_mcts.py)."""

from __future__ import annotations

import math

import numpy as np

from qrl.search.mcts import MIN_Q_SPAN, Model, SearchConfig, masked_softmax


class Node:
    def __init__(self, state: np.ndarray, legal: np.ndarray, priors: np.ndarray, terminal: bool = False):
        self.state, self.legal, self.priors, self.terminal = state, legal, priors, terminal
        self.children: dict[int, Node] = {}
        A = len(legal)
        self.visits, self.value_sum, self.rewards = [0.0] * A, [0.0] * A, [0.0] * A

    def q(self, a: int) -> float:
        return self.value_sum[a] / self.visits[a] if self.visits[a] else 0.0


def reference_search(model: Model, root: np.ndarray, legal: np.ndarray, logits: np.ndarray,
                     config: SearchConfig) -> tuple[list[float], float]:
    """(the root's visit counts, its mean value) for one game, without root noise."""
    tree = Node(root, legal, masked_softmax(logits[None], legal[None])[0])
    nodes = [tree]
    for _ in range(config.simulations):
        path, value = _descend_and_expand(tree, model, nodes, config)
        sign = -1.0 if config.two_player else 1.0
        for node, a in reversed(path):
            value = node.rewards[a] + config.discount * sign * value
            node.value_sum[a] += value
            node.visits[a] += 1
    return tree.visits, sum(tree.value_sum) / max(sum(tree.visits), 1)


def _descend_and_expand(tree: Node, model: Model, nodes: list[Node], config: SearchConfig):
    node, path = tree, []
    while True:
        a = _puct(node, nodes, config)
        path.append((node, a))
        child = node.children.get(a)
        if child is None:
            out = model.expand(node.state[None], np.array([a]))
            done = bool(out.done[0])
            child = Node(out.states[0], out.legal[0] & ~done, masked_softmax(out.logits, out.legal | done)[0], done)
            node.children[a], node.rewards[a] = child, float(out.rewards[0])
            nodes.append(child)
            return path, 0.0 if done else float(out.values[0])
        if child.terminal:
            return path, 0.0
        node = child


def _puct(node: Node, nodes: list[Node], config: SearchConfig) -> int:
    low, high = _q_bounds(nodes) if config.normalize_q else (0.0, 1.0)
    total = math.sqrt(max(sum(node.visits), 1.0))
    best, best_score = -1, -math.inf
    for a in range(len(node.legal)):
        if not node.legal[a]:
            continue
        q = (node.q(a) - low) / (high - low) if node.visits[a] else 0.0
        score = q + config.c_puct * node.priors[a] * total / (1.0 + node.visits[a])
        if score > best_score:
            best, best_score = a, score
    return best


def _q_bounds(nodes: list[Node]) -> tuple[float, float]:
    qs = [n.q(a) for n in nodes for a in range(len(n.legal)) if n.visits[a]]
    if not qs:
        return 0.0, 1.0
    low, high = min(qs), max(qs)
    return (low, low + max(high - low, MIN_Q_SPAN)) if high > low else (low, low + 1.0)
