"""QR-DQN: the distributional DQN of algorithms/dqn.py with `algo.quantiles` > 0: the network gives
N quantiles of each action's return at the fractions (2i + 1) / 2N, trained toward the n-step
target quantiles with the quantile Huber loss; actors act on their mean. Double, dueling, n-step
and Ape-X exploration as in dqn. Reference: Dabney et al. 2018 (distributional RL with quantile
regression).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from qrl.algorithms import dqn


@dataclass(frozen=True)
class Args(dqn.Args):
    quantiles: int = 50
    kappa: float = 1.0


AGENT = dataclasses.replace(dqn.AGENT, name="qrdqn", Args=Args)
