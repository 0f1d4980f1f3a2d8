"""IQN: the distributional DQN of algorithms/dqn.py with `algo.iqn_n` > 0: the network maps an
observation and any quantile fraction tau to that quantile of each action's return (the torso's
features times a cosine embedding of tau, then the last hidden layer and the head). The learner
draws iqn_n fractions per item for the prediction and iqn_n_target for the n-step target and
minimizes the quantile Huber loss; actors act on the mean over iqn_k evenly spaced fractions
(risk-neutral; iqn_cvar < 1 acts on the lower tail). With `algo.munchausen` it is M-IQN.
Double, dueling, n-step and Ape-X exploration as in dqn.
References: Dabney et al. 2018 (implicit quantile networks); Vieillard et al. 2020 (M-IQN).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from qrl.algorithms import dqn


@dataclass(frozen=True)
class Args(dqn.Args):
    iqn_n: int = 32
    iqn_n_target: int = 32
    iqn_k: int = 32


AGENT = dataclasses.replace(dqn.AGENT, name="iqn", Args=Args)
