"""Segment trees over item priorities, vectorized with numpy: no per-item Python loop when
updating or sampling, whatever the batch size.

The tree is an array of 2 * L nodes for L leaves (L a power of two >= capacity): node 1 is the
root, node i has children 2i and 2i + 1, leaf j is node L + j. A batch of updates writes its
leaves, then recomputes the parents of all touched nodes one level at a time (log2 L numpy
operations; a parent shared by several updates is recomputed more than once, to the same
value). A batch of prefix-sum queries descends all levels at once the same way.
"""

from __future__ import annotations

import numpy as np


class SegmentTree:
    def __init__(self, capacity: int, op: np.ufunc, neutral: float):
        self.leaves = 1 << max(0, int(capacity - 1).bit_length())
        self.op = op
        self.nodes = np.full(2 * self.leaves, neutral, dtype=np.float64)

    def update(self, index: np.ndarray, value: np.ndarray) -> None:
        """Set leaves ``index`` to ``value`` (the last write wins for repeated indices)."""
        node = np.asarray(index, dtype=np.int64) + self.leaves
        self.nodes[node] = value
        while node[0] > 1:
            # Repeated parents are recomputed alike (same children, same result): cheaper than np.unique.
            node >>= 1
            self.nodes[node] = self.op(self.nodes[2 * node], self.nodes[2 * node + 1])

    @property
    def root(self) -> float:
        return float(self.nodes[1])

    def __getitem__(self, index) -> np.ndarray:
        return self.nodes[np.asarray(index, dtype=np.int64) + self.leaves]


class SumTree(SegmentTree):
    def __init__(self, capacity: int):
        super().__init__(capacity, np.add, 0.0)

    def find_prefix(self, mass: np.ndarray) -> np.ndarray:
        """For each value u in [0, total): the leaf j with sum(leaves[:j]) <= u < sum(leaves[:j + 1])."""
        node = np.ones(len(mass), dtype=np.int64)
        u = np.asarray(mass, dtype=np.float64).copy()
        while node[0] < self.leaves:
            left = self.nodes[2 * node]
            right = u >= left
            u -= left * right
            node = 2 * node + right
        return node - self.leaves


class MinTree(SegmentTree):
    def __init__(self, capacity: int):
        super().__init__(capacity, np.minimum, np.inf)
