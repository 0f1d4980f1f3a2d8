"""C51: the distributional DQN of algorithms/dqn.py (`algo.atoms` > 0): each action's return is a
categorical distribution on evenly spaced atoms in [v_min, v_max]; the learner minimizes the
cross-entropy to the n-step target distribution projected back onto the atoms, and actors act on
its mean. Double, dueling, n-step and Ape-X exploration as in dqn.
Reference: Bellemare et al. 2017.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from qrl.algorithms import dqn


@dataclass(frozen=True)
class Args(dqn.Args):
    atoms: int = 51
    v_min: float = -10.0
    v_max: float = 10.0


AGENT = dataclasses.replace(dqn.AGENT, name="c51", Args=Args)
