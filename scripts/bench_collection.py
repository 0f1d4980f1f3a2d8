"""Collection speed: environment frames/s arriving at the broker from `qrl actor --n N`,
against plain single-process gymnasium SyncVectorEnv loops running the same policy
inference (the same `dqn.act` on the same network), measured in the same run.

The broker gets a run registered by this script with the rate limiter off, so the
actors run as fast as they can; the replay table just wraps. qrl and reference
rounds are interleaved and each figure is the median of the rounds.

    python scripts/bench_collection.py --n 2 --rounds 3 --seconds 8
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import zmq

from qrl import envs
from qrl.algorithms import dqn
from qrl.cluster import start_actors, start_broker, stop
from qrl.transport import Client


def raw_loop(env_id: str, num_envs: int, seconds: float, queue) -> None:
    """The reference: step a SyncVectorEnv with dqn.act inference, nothing else."""
    torch.set_num_threads(1)
    args = dqn.Args()
    env = envs.make_vector_env(env_id, num_envs)
    net = dqn.make_policy(env.single_observation_space, env.single_action_space, args)
    state = dqn.init_actor(1, 2, num_envs, args, seed=0)
    obs, _ = env.reset(seed=0)
    frames, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        actions, _ = dqn.act(net, obs, state, args)
        obs, *_ = env.step(actions)
        frames += num_envs
    queue.put(frames / elapsed)


def measure_raw(env_id: str, loops: int, num_envs: int, seconds: float) -> float:
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=raw_loop, args=(env_id, num_envs, seconds, queue)) for _ in range(loops)]
    for p in procs:
        p.start()
    rates = [queue.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join(10)
    return sum(rates)


def register(client: Client, env_id: str, num_envs: int) -> None:
    args = replace(dqn.Args(), samples_per_insert=0.0, buffer_size=50_000)
    obs_space, act_space = envs.spaces(env_id)
    net = dqn.make_policy(obs_space, act_space, args)
    spec = {"run_id": f"bench-{time.time_ns()}", "algo": "dqn", "env": env_id, "env_kwargs": {},
            "args": asdict(args), "run": {"num_envs": num_envs, "segment_length": 32, "seed": 0}}
    weights = {k: v.numpy() for k, v in net.state_dict().items()}
    reply = client.request("register", {"spec": spec, "table": dqn.table_config(args).as_meta(),
                                        "weights_version": 0}, weights, wait_s=30)
    assert reply.type == "ok", reply.meta


def measure_qrl(env_id: str, n: int, num_envs: int, seconds: float, run_dir: Path) -> tuple[float, float]:
    """Frames/s at the broker over `seconds` after warm-up, and the actors' start-up time."""
    ctx = zmq.Context()
    broker, address = start_broker(run_dir)
    procs = [broker]
    try:
        client = Client(ctx, address, "bench")
        register(client, env_id, num_envs)
        t0 = time.perf_counter()
        procs.insert(0, start_actors(run_dir, address, n))
        frames = lambda: client.request("get_stats", wait_s=30).meta
        while len(frames()["per_actor"]) < n:
            time.sleep(0.05)
        startup = time.perf_counter() - t0
        time.sleep(1.0)  # warm-up
        a, ta = frames()["frames"], time.perf_counter()
        time.sleep(seconds)
        b, tb = frames()["frames"], time.perf_counter()
        client.close()
        return (b - a) / (tb - ta), startup
    finally:
        stop(procs)
        ctx.destroy(linger=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="CartPole-v1")
    p.add_argument("--n", type=int, default=2, help="actor processes")
    p.add_argument("--num-envs", type=int, default=8, help="envs per actor and per reference loop")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    a = p.parse_args()
    cores = len(__import__("os").sched_getaffinity(0))
    ref_loops = min(a.n, cores)
    rows = {"qrl": [], "raw_1": [], f"raw_{ref_loops}": [], "startup_s": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            rate, startup = measure_qrl(a.env, a.n, a.num_envs, a.seconds, Path(tmp))
            rows["qrl"].append(rate)
            rows["startup_s"].append(startup)
            rows["raw_1"].append(measure_raw(a.env, 1, a.num_envs, a.seconds))
            if ref_loops != 1:
                rows[f"raw_{ref_loops}"].append(measure_raw(a.env, ref_loops, a.num_envs, a.seconds))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rows.items() if v), flush=True)
    med = {k: statistics.median(v) for k, v in rows.items() if v}
    print(f"\n{a.env}, qrl actor --n {a.n} x {a.num_envs} envs, {a.rounds} rounds of {a.seconds:.0f} s, "
          f"{cores} cores (medians)")
    print(f"  qrl frames/s at the broker          {med['qrl']:>10,.0f}")
    print(f"  raw SyncVectorEnv loop, 1 process   {med['raw_1']:>10,.0f}   ratio qrl/raw {med['qrl'] / med['raw_1']:.2f}")
    if ref_loops != 1:
        print(f"  raw loops, {ref_loops} processes at once     {med[f'raw_{ref_loops}']:>10,.0f}   "
              f"ratio qrl/raw {med['qrl'] / med[f'raw_{ref_loops}']:.2f}")
    print(f"  actors started and pushing after    {med['startup_s']:>10.2f} s")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"env": a.env, "n": a.n, "num_envs": a.num_envs, "rounds": rows,
                                     "medians": med, "python": sys.version.split()[0],
                                     "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}, indent=2))


if __name__ == "__main__":
    main()
