"""Munchausen DQN: algorithms/dqn.py with `algo.munchausen`: the reward is augmented with the
scaled, clipped log-probability of the taken action under the softmax policy of the target Q
values, alpha * clip(tau log pi(a|s), l0, 0), and the target bootstraps from that policy's soft
value instead of a max. Dueling, n-step (the bonus is the first step's) and Ape-X exploration as in
dqn; no double DQN (the softmax replaces the argmax).
Reference: Vieillard et al. 2020 (Munchausen reinforcement learning).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from qrl.algorithms import dqn


@dataclass(frozen=True)
class Args(dqn.Args):
    munchausen: bool = True
    double: bool = False


AGENT = dataclasses.replace(dqn.AGENT, name="mdqn", Args=Args)
