"""Rainbow: dqn's options together, as in Hessel et al. 2018: a categorical return distribution
(c51.py), noisy nets instead of epsilon-greedy, dueling, double, n-step returns, and prioritized
replay in the broker with importance weights (apex.py's table; new items get the largest priority
seen so far, and the learner's cross-entropy becomes each sampled item's priority).
Reference: Hessel et al. 2018.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from qrl.algorithms import apex, c51


@dataclass(frozen=True)
class Args(c51.Args, apex.Args):
    noisy: bool = True
    dueling: bool = True
    double: bool = True
    n_step: int = 3
    priority_exponent: float = 0.5
    importance_exponent: float = 0.4
    actor_priorities: bool = False
    """Rainbow's priorities are cross-entropies, which actors cannot compute without the target net."""


AGENT = dataclasses.replace(c51.AGENT, name="rainbow", Args=Args, table_config=apex.table_config,
                            sample_options=apex.sample_options)
