"""FQF: IQN (algorithms/dqn.py with `algo.iqn_n`) whose quantile fractions are not drawn but
proposed per state (`algo.fqf`): a fraction proposal layer on the torso's features gives iqn_n
fractions 0 < tau_1 < ... < 1 (a softmax, summed up), the quantile network is evaluated at their
midpoints, and Q is the mean of that staircase. The quantile network learns by the quantile Huber
loss toward the target's quantiles at the same fractions; the proposal layer (its own RMSprop, at
`algo.fraction_lr`) by the 1-Wasserstein error's gradient with respect to the fractions. Double,
dueling, n-step and Ape-X exploration as in dqn; actors run the network in torch.
Reference: Yang et al. 2019 (fully parameterized quantile function).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from qrl.algorithms import dqn


@dataclass(frozen=True)
class Args(dqn.Args):
    iqn_n: int = 32
    fqf: bool = True


AGENT = dataclasses.replace(dqn.AGENT, name="fqf", Args=Args)
