"""Learner updates/s: one algorithm's Learner.update on synthetic batches of its presets' shapes,
as qrl runs it (torch's fused Adam kernel, parameter lists kept between updates, one multi-tensor
Polyak lerp) against the same learner with torch's defaults on the CPU (Adam's one-op-per-tensor
loop, module.parameters() walked on every update, one lerp per tensor), alternated in each round.

The batches are random data of the right shapes and dtypes (the update's cost does not depend on
the values); the networks and hyperparameters are the presets'. `--device cuda` measures on a GPU
(the DQN Nature CNN at batch 256 is the case that needs one).

    python scripts/bench_learner.py [--quick] [--device cpu|cuda]
    python scripts/bench_learner.py --guard    # the cost of the guard against non-finite steps

`--guard` compares the learner as the learner process runs it (every optimizer step checked by
qrl/guard.py) with the same learner unguarded, alternated in each round.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from _common import parser, print_table, rate, save_results
from qrl import algorithm, config, guard, ops
from qrl.eager import skip_compiler_import
from qrl.algorithm import to_batch

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CARTPOLE_OBS = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
ATARI_OBS = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
LUNAR_OBS = gym.spaces.Box(-np.inf, np.inf, (8,), np.float32)
PENDULUM_OBS = gym.spaces.Box(-8.0, 8.0, (3,), np.float32)
PENDULUM_ACT = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
MINATAR_OBS = gym.spaces.Box(0, 1, (10, 10, 4), bool)  # MinAtar/Breakout: 10x10 grid, 4 channels

# name: (what it is, algorithm, preset or None, algo overrides, observation space, action space)
CASES = {
    "dqn-mlp": ("dqn CartPole preset, batch 64", "dqn", "dqn-CartPole-v1", {}, CARTPOLE_OBS,
                gym.spaces.Discrete(2)),
    "c51-mlp": ("c51 CartPole preset, batch 64", "c51", "c51-CartPole-v1", {}, CARTPOLE_OBS,
                gym.spaces.Discrete(2)),
    "ppo-mlp": ("ppo CartPole preset, 8 x 32 steps x 20 epochs", "ppo", "ppo-CartPole-v1", {}, CARTPOLE_OBS,
                gym.spaces.Discrete(2)),
    "ppo-lunarlander": ("ppo LunarLander preset, 16 x 1024 steps x 4 epochs of 256 minibatches", "ppo",
                        "ppo-LunarLander-v3", {}, LUNAR_OBS, gym.spaces.Discrete(4)),
    "sac-mlp": ("sac Pendulum preset", "sac", "sac-Pendulum-v1", {}, PENDULUM_OBS, PENDULUM_ACT),
    "dqn-cnn": ("dqn Nature CNN (Atari 4x84x84), batch 256", "dqn", None, {"batch_size": 256, "dueling": False},
                ATARI_OBS, gym.spaces.Discrete(6)),
    "dqn-minatar": ("dqn MinAtar torso (10x10x4), batch 128", "dqn", None,
                    {"batch_size": 128, "torso": "minatar", "hidden": 128}, MINATAR_OBS, gym.spaces.Discrete(6)),
    # The GPU check's cases (scripts/gpu_check.sh): both image torsos at the batch sizes of Atari DQN
    # (32) and of Ape-X / R2D2-scale learners (256).
    "dqn-cnn-32": ("dqn Nature CNN (Atari 4x84x84), batch 32", "dqn", None, {"batch_size": 32, "dueling": False},
                   ATARI_OBS, gym.spaces.Discrete(6)),
    "dqn-resnet-32": ("dqn IMPALA ResNet (Atari 4x84x84), batch 32", "dqn", None,
                      {"batch_size": 32, "dueling": False, "torso": "impala", "hidden": 256}, ATARI_OBS,
                      gym.spaces.Discrete(6)),
    "dqn-resnet-256": ("dqn IMPALA ResNet (Atari 4x84x84), batch 256", "dqn", None,
                       {"batch_size": 256, "dueling": False, "torso": "impala", "hidden": 256}, ATARI_OBS,
                       gym.spaces.Discrete(6)),
}

DEFAULT_CASES = ("dqn-mlp", "c51-mlp", "ppo-mlp", "ppo-lunarlander", "sac-mlp", "dqn-cnn")


def replay_batch(rng, obs_space, action_space, n: int) -> dict[str, np.ndarray]:
    def obs():
        if obs_space.dtype == np.uint8:
            return rng.integers(0, 256, (n, *obs_space.shape), dtype=np.uint8)
        if obs_space.dtype == bool:
            return rng.integers(0, 2, (n, *obs_space.shape)).astype(bool)
        return rng.standard_normal((n, *obs_space.shape), dtype=np.float32)

    if isinstance(action_space, gym.spaces.Discrete):
        action = rng.integers(0, action_space.n, n).astype(np.int64)
    else:
        action = rng.uniform(-1, 1, (n, *action_space.shape)).astype(np.float32)
    return {"obs": obs(), "action": action, "return": rng.standard_normal(n, dtype=np.float32),
            "discount": np.full(n, 0.97, np.float32), "next_obs": obs()}


def unroll_batch(rng, obs_space, action_space, unrolls: int, steps: int) -> dict[str, np.ndarray]:
    obs = rng.standard_normal((unrolls, steps, *obs_space.shape), dtype=np.float32)
    n = action_space.n
    return {"obs": obs, "action": rng.integers(0, n, (unrolls, steps)).astype(np.int64),
            "logp": np.full((unrolls, steps), -np.log(n), np.float32),
            "reward": np.ones((unrolls, steps), np.float32), "terminated": np.zeros((unrolls, steps), bool),
            "truncated": np.zeros((unrolls, steps), bool), "next_obs": obs}


def with_torch_defaults(learner) -> None:
    """The learner as it ran before: per-tensor Adam, parameters walked each update, per-tensor lerp."""
    for name in vars(learner).copy():
        opt = getattr(learner, name)
        if isinstance(opt, torch.optim.Adam):
            groups = [{k: v for k, v in g.items() if k not in ("fused", "foreach")} for g in opt.param_groups]
            setattr(learner, name, torch.optim.Adam(groups, foreach=False))
    learner.parameters_of = lambda module: module.parameters()


def per_tensor_polyak(target, online, tau):
    with torch.no_grad():
        for t, o in zip(target, online):
            t.lerp_(o, tau)


def make_case(case: str, variant: str, device: torch.device, seed: int):
    _, algo, preset, overrides, obs_space, action_space = CASES[case]
    agent = algorithm.load(algo)
    file = config.load_file(CONFIGS / f"{preset}.yaml") if preset else None
    values = dict(file.algo) if file else {}
    args = config.build(agent.Args, {**values, **overrides}, "algo")
    torch.manual_seed(seed)
    learner = agent.Learner(obs_space, action_space, args, device)
    if variant == "torch defaults":
        with_torch_defaults(learner)
    if variant == "guarded":
        guard.UpdateGuard(learner)
    rng = np.random.default_rng(seed)
    if algo == "ppo":
        steps = file.run.get("segment_length", 32)  # an unroll is one env's segment
        batch = unroll_batch(rng, obs_space, action_space, args.batch_size, steps)
    else:
        batch = replay_batch(rng, obs_space, action_space, args.batch_size)
    return learner, batch


def updates_per_s(learner, batch, seconds: float, variant: str) -> float:
    polyak = ops.polyak_update
    if variant == "torch defaults":
        ops.polyak_update = per_tensor_polyak
    try:
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            learner.update(to_batch(batch))
            n += 1
        if learner.device.type == "cuda":
            torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
        return n / elapsed
    finally:
        ops.polyak_update = polyak


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cases", default=",".join(DEFAULT_CASES), help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--guard", action="store_true", help="guarded against unguarded learner (qrl/guard.py)")
    a = p.parse_args()
    skip_compiler_import()  # as the learner process does
    torch.set_num_threads(1)  # the learner's default (run.learner_threads)
    device = torch.device(a.device)
    cases = [c for c in a.cases.split(",") if c]
    if a.quick:
        a.rounds, a.seconds = 1, 0.2
        cases = [c for c in cases if c != "dqn-cnn"]
    p_guard = a.guard
    variants = ["guarded", "unguarded"] if p_guard else ["qrl", "torch defaults"]
    rows, runs = [], {}
    for case in cases:
        made = {v: make_case(case, v, device, seed=0) for v in variants}
        for v, (learner, batch) in made.items():  # warm-up: allocator, optimizer state
            updates_per_s(learner, batch, min(a.seconds, 0.3), v)
        results = {v: [] for v in variants}
        for _ in range(a.rounds):
            for v, (learner, batch) in made.items():
                results[v].append(updates_per_s(learner, batch, a.seconds, v))
        ours, ref = (statistics.median(results[v]) for v in variants)
        rows.append([CASES[case][0], a.device, rate(ours), rate(ref), f"{ours / ref:.2f}"])
        runs[case] = results
    table = print_table(["learner", "device", f"{variants[0]} upd/s", f"{variants[1]} upd/s", "ratio"], rows)
    name = "learner" if a.device == "cpu" else f"learner-{a.device}"
    save_results(f"{name}-guard" if p_guard else name, {"quick": a.quick, "rounds": a.rounds, **table, "runs": runs})


if __name__ == "__main__":
    main()
