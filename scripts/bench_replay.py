"""Replay: insert throughput (transitions/s) and sample throughput (batches of 256/s) of the
broker's tables against stable-baselines3's ReplayBuffer, in the same run, at 100k and 1M
capacity, with CartPole-shaped DQN transitions.

qrl inserts whole segments (256 transitions, as an actor with 8 envs x 32 steps sends);
SB3's buffer is filled the way SB3 fills it, one vector-env step per add() (8 envs), and
also with 256-env adds as an upper bound. SB3's sample() returns torch tensors; qrl's
row "sample+encode" includes building the wire frames the broker sends, the work the
broker really does per batch.

    python scripts/bench_replay.py [--quick]
"""

from __future__ import annotations

import statistics

import gymnasium as gym
import numpy as np

from _common import calls_per_s, parser, print_table, save_results
from qrl.protocol import wire
from qrl.brokers.tables import ReplayTable, TableConfig

OBS = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
ACT = gym.spaces.Discrete(2)
SEGMENT = 256


def segment(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"obs": rng.standard_normal((SEGMENT, 4), dtype=np.float32),
            "action": rng.integers(0, 2, SEGMENT).astype(np.int64),
            "return": rng.standard_normal(SEGMENT, dtype=np.float32),
            "discount": np.full(SEGMENT, 0.97, np.float32),
            "next_obs": rng.standard_normal((SEGMENT, 4), dtype=np.float32)}


def qrl_insert(capacity: int, seconds: float) -> float:
    table = ReplayTable(TableConfig(capacity=capacity, min_size=0))
    seg = segment(np.random.default_rng(0))
    return calls_per_s(lambda: table.insert(seg), seconds) * SEGMENT


def filled_table(capacity: int, sampler: str = "uniform") -> ReplayTable:
    table = ReplayTable(TableConfig(capacity=capacity, min_size=0, sampler=sampler))
    rng = np.random.default_rng(0)
    for _ in range(capacity // SEGMENT + 1):
        table.insert(segment(rng))
    return table


def sb3_buffer(capacity: int, n_envs: int):
    from stable_baselines3.common.buffers import ReplayBuffer

    return ReplayBuffer(capacity, OBS, ACT, device="cpu", n_envs=n_envs, optimize_memory_usage=False)


def sb3_add_args(n_envs: int):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((n_envs, 4), dtype=np.float32), rng.standard_normal((n_envs, 4), dtype=np.float32),
            rng.integers(0, 2, (n_envs, 1)), rng.standard_normal(n_envs, dtype=np.float32),
            np.zeros(n_envs, dtype=np.float32), [{} for _ in range(n_envs)])


def sb3_insert(capacity: int, n_envs: int, seconds: float) -> float:
    buf = sb3_buffer(capacity, n_envs)
    args = sb3_add_args(n_envs)
    return calls_per_s(lambda: buf.add(*args), seconds) * n_envs


def sb3_filled(capacity: int):
    buf = sb3_buffer(capacity, 256)
    args = sb3_add_args(256)
    for _ in range(capacity // 256 + 1):
        buf.add(*args)
    return buf


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    capacities = [100_000, 1_000_000]
    if a.quick:
        a.rounds, a.seconds, capacities = 1, 0.3, [100_000]
    rows, runs = [], {}
    for cap in capacities:
        table, buf = filled_table(cap), sb3_filled(cap)
        per = filled_table(cap, "prioritized")
        rng = np.random.default_rng(1)

        def per_step():  # what one Ape-X update costs the broker: sample 256, then update their priorities
            _, ids, _ = per.sample(256, beta=0.5)
            per.update_priorities(ids, rng.random(256) + 1e-3)

        sample_encode = lambda: wire.encode("batch", {}, {**(s := table.sample(256))[0], "_id": s[1]})
        cases = {
            "insert transitions/s": {
                "qrl uniform (256/segment)": lambda: qrl_insert(cap, a.seconds),
                "sb3 ReplayBuffer (8 envs/add)": lambda: sb3_insert(cap, 8, a.seconds),
                "sb3 ReplayBuffer (256 envs/add)": lambda: sb3_insert(cap, 256, a.seconds),
            },
            "sample batches of 256/s": {
                "qrl uniform": lambda: calls_per_s(lambda: table.sample(256), a.seconds),
                "qrl uniform sample+encode": lambda: calls_per_s(sample_encode, a.seconds),
                "qrl prioritized (sum tree)": lambda: calls_per_s(lambda: per.sample(256, beta=0.5), a.seconds),
                "qrl prioritized sample+priority update": lambda: calls_per_s(per_step, a.seconds),
                "sb3 ReplayBuffer": lambda: calls_per_s(lambda: buf.sample(256), a.seconds),
            },
        }
        for what, impls in cases.items():
            results = {name: [] for name in impls}
            for _ in range(a.rounds):  # interleaved rounds
                for name, fn in impls.items():
                    results[name].append(fn())
            ref = statistics.median(next(v for k, v in results.items() if k.startswith("sb3")))
            for name, vals in results.items():
                med = statistics.median(vals)
                rows.append([f"{cap:,}", what, name, f"{med:,.0f}", f"{med / ref:.2f}"])
            runs[f"{cap}/{what}"] = results
    table = print_table(["capacity", "figure", "implementation", "median", "vs sb3 (8 envs/add)"], rows)
    save_results("replay", {"quick": a.quick, "rounds": a.rounds, **table, "runs": runs})


if __name__ == "__main__":
    main()
