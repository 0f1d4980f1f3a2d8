"""Tsallis actor-critic: soft actor-critic with the Tsallis entropy of entropic index q in place of
the Shannon entropy, for continuous (squashed Gaussian) and discrete (categorical) actions.

The Tsallis entropy is S_q(pi) = E_pi[-ln_q pi(a|s)] with the q-logarithm
ln_q(x) = (x^(q-1) - 1) / (q - 1), which for a discrete policy is (1 - sum_a pi(a)^q) / (q - 1).
At q = 1, ln_q is log and TAC is SAC exactly; q = 2 is the sparse Tsallis entropy, whose optimal
policies give some actions probability zero; q > 1 explores less than SAC, q < 1 more. Everything
else is SAC's (qrl/algorithms/sac.py): twin critics, Polyak targets, the temperature tuned so the
policy's (Tsallis) entropy tracks a target, -|A| for continuous actions and a fraction of the
uniform policy's S_q for discrete ones.
References: Lee et al. 2020 (Generalized Tsallis entropy RL; TAC), Tsallis 1988; the library qrl
grows from (RLs) ships TAC with the same temperature rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from qrl.algorithm import Agent
from qrl.algorithms import sac

MAX_EXPONENT = 30.0
"""(q - 1) log pi is cut here before exp: a nearly deterministic continuous policy has densities
far above 1, and for q > 1 their power would overflow float32."""


@dataclass(frozen=True)
class Args(sac.Args):
    entropic_index: float = 1.5
    """q of the Tsallis entropy: 1 is SAC's Shannon entropy, 2 the sparse Tsallis entropy. The
    paper's best continuous-control results use q between 1.2 and 2."""


def log_q(logp: torch.Tensor, q: float) -> torch.Tensor:
    """ln_q of the probabilities whose logs are `logp`: (p^(q-1) - 1) / (q - 1), log p at q = 1."""
    if q == 1.0:
        return logp
    return torch.expm1(((q - 1.0) * logp).clamp(max=MAX_EXPONENT)) / (q - 1.0)


def tsallis_entropy_of_uniform(n: int, q: float) -> float:
    """S_q of the uniform distribution over n outcomes: (1 - n^(1-q)) / (q - 1), log n at q = 1."""
    return float(np.log(n)) if q == 1.0 else (1.0 - n ** (1.0 - q)) / (q - 1.0)


class Learner(sac.Learner):
    def log_pi(self, logp: torch.Tensor) -> torch.Tensor:
        return log_q(logp, self.args.entropic_index)

    def uniform_entropy(self, n: int) -> float:
        return tsallis_entropy_of_uniform(n, self.args.entropic_index)


AGENT = Agent(name="tac", Args=Args, make_policy=sac.make_policy, make_core=sac.PolicySampling,
              make_items=sac.make_items, Learner=Learner, table_config=sac.table_config, history=sac.AGENT.history)
