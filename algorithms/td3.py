"""TD3: DDPG (algorithms/ddpg.py) with its three fixes for overestimation and brittleness on:
twin critics and the smaller of their targets, target policy smoothing (clipped noise on
mu'(s')), and a policy (and target) update every second critic update.
Reference: Fujimoto et al. 2018.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from qrl.algorithms import ddpg


@dataclass(frozen=True)
class Args(ddpg.Args):
    twin_critics: bool = True
    policy_delay: int = 2
    target_noise: float = 0.2
    target_noise_clip: float = 0.5


AGENT = dataclasses.replace(ddpg.AGENT, name="td3", Args=Args)
