"""Atari frames/s in one actor process: qrl's two vector backends side by side, alternated in
each round (issue 28): gymnasium's SyncVectorEnv of AtariPreprocessing + FrameStackObservation
wrappers (actor.vector_env=gymnasium) against ale-py's C++ AtariVectorEnv with the same
preprocessing (actor.vector_env=ale, on 1 and on 2 threads). Random actions, no policy: the cost
of stepping and preprocessing alone. Env frames = agent steps x frame skip 4.

    python scripts/bench_atari_envs.py [--game ALE/Pong-v5] [--num-envs 8] [--quick]
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from _common import parser, print_table, rate, save_results
from qrl import envs

FRAME_SKIP = 4


def steps_per_s(env, seconds: float, rng: np.random.Generator) -> float:
    env.reset(seed=0)
    n = env.num_envs
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        env.step(rng.integers(0, env.single_action_space.n, n))
        steps += n
    return steps / (time.perf_counter() - t0)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--game", default="ALE/Pong-v5")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    if a.quick:
        a.seconds, a.rounds, a.num_envs = 1.0, 1, 4
    backends = {"gymnasium SyncVectorEnv": ("gymnasium", 1), "ale C++, 1 thread": ("ale", 1),
                "ale C++, 2 threads": ("ale", 2)}
    made = {name: envs.make_vector_env(a.game, a.num_envs, backend=b, threads=t) for name, (b, t) in backends.items()}
    rng = np.random.default_rng(0)
    rates: dict[str, list[float]] = {name: [] for name in backends}
    try:
        for _ in range(a.rounds):
            for name, env in made.items():
                rates[name].append(steps_per_s(env, a.seconds, rng) * FRAME_SKIP)
    finally:
        for env in made.values():
            env.close()
    base = statistics.median(rates["gymnasium SyncVectorEnv"])
    rows = [[name, a.num_envs, rate(statistics.median(r)), f"{statistics.median(r) / base:.2f}"]
            for name, r in rates.items()]
    table = print_table(["backend", "envs", "env frames/s (median)", "vs gymnasium"], rows)
    save_results("atari-envs", {"quick": a.quick, "game": a.game, "rounds": a.rounds, "seconds": a.seconds,
                                "rates": rates, **table})


if __name__ == "__main__":
    main()
