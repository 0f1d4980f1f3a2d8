"""Collection speed: environment frames/s arriving at the broker from `qrl actor --n N`,
against plain single-process gymnasium SyncVectorEnv loops running the same policy
inference (the same `dqn.act` on the same network), min(N, cores) of them, stepping at
the same time as the actors so that both sides share the machine alike. Also: CPU
seconds per 1000 frames and total PSS of the actor processes, and the time from
launching `qrl actor --n N` until all N push segments.

The broker gets a run registered by this script with the rate limiter off, so the
actors run as fast as they can; the replay table just wraps. qrl and reference
figure is the median of --rounds.

    python scripts/bench_collection.py             # ~8 minutes
    python scripts/bench_collection.py --quick     # seconds
"""

from __future__ import annotations

import multiprocessing as mp
import os
import secrets
import statistics
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import zmq

from _common import actor_sweep_parser, print_table, save_results
from qrl import algorithm, envs
from qrl.algorithms import dqn
from qrl.cluster import start_actors, start_broker, stop
from qrl.protocol.transport import Client


def raw_loop(env_id: str, num_envs: int, seconds: float, queue) -> None:
    """The reference: step a SyncVectorEnv with the dqn actor core's inference, nothing else."""
    torch.set_num_threads(1)
    args = dqn.Args()
    env = envs.make_vector_env(env_id, num_envs)
    net = dqn.make_policy(env.single_observation_space, env.single_action_space, args)
    core = dqn.EpsilonGreedy(args, 1, 2, num_envs, seed=0)
    state, episode_start = core.initial_state(num_envs), np.ones(num_envs, bool)
    obs, _ = env.reset(seed=0)
    frames, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        actions, state, _ = core.act(net, obs, state, episode_start)
        obs, *_ = env.step(actions)
        frames += num_envs
    queue.put(frames / elapsed)


def register(client: Client, env_id: str, num_envs: int) -> None:
    args = replace(dqn.Args(), samples_per_insert=0.0, buffer_size=50_000)
    obs_space, act_space = envs.spaces(env_id)
    net = dqn.make_policy(obs_space, act_space, args)
    spec = {"run_id": f"bench-{time.time_ns()}", "algo": "dqn", "env": env_id, "env_kwargs": {},
            "args": asdict(args), "run": {"num_envs": num_envs, "segment_length": 32, "seed": 0}}
    weights = {k: v.numpy() for k, v in net.state_dict().items()}
    schema = algorithm.item_schema(dqn.AGENT, net, obs_space, act_space, args, num_envs, 32)
    reply = client.request("register", {"spec": spec, "table": dqn.table_config(args).as_meta(),
                                        "schema": schema.as_meta(), "weights_version": 0,
                                        "token": secrets.token_hex(16)}, weights, wait_s=30)
    assert reply.type == "ok", reply.meta


def proc_tree(pid: int) -> list[int]:
    kids = Path(f"/proc/{pid}/task/{pid}/children")
    return [pid] + ([int(k) for k in kids.read_text().split()] if kids.exists() else [])


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
        except (OSError, IndexError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def pss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def measure(env_id: str, n: int, num_envs: int, seconds: float, ref_loops: int, run_dir: Path) -> dict:
    """qrl actors and `ref_loops` raw loops stepping at the same time, so both share the machine alike."""
    ctx = zmq.Context()
    broker, address = start_broker(run_dir)
    procs = [broker]
    fork = mp.get_context("fork")
    try:
        client = Client(ctx, address, "bench")
        register(client, env_id, num_envs)
        stats = lambda: client.request("get_stats", wait_s=30).meta
        t0 = time.perf_counter()
        actors = start_actors(run_dir, address, n)
        procs.insert(0, actors)
        while stats()["actors"] < n:
            assert actors.poll() is None, "actors exited"
            time.sleep(0.02)
        startup = time.perf_counter() - t0
        time.sleep(1.0)  # warm-up
        queue = fork.Queue()
        refs = [fork.Process(target=raw_loop, args=(env_id, num_envs, seconds, queue)) for _ in range(ref_loops)]
        for r in refs:
            r.start()
        pids = proc_tree(actors.pid)
        a, cpu_a, ta = stats()["frames"], cpu_seconds(pids), time.perf_counter()
        time.sleep(seconds)
        b, cpu_b, tb = stats()["frames"], cpu_seconds(pids), time.perf_counter()
        pss = pss_mb(pids)
        ref_rate = sum(queue.get(timeout=60) for _ in refs)
        for r in refs:
            r.join(10)
        client.close()
        return {"qrl": (b - a) / (tb - ta), "raw": ref_rate, "startup_s": startup,
                "cpu_s_per_1000": 1000 * (cpu_b - cpu_a) / max(b - a, 1), "pss_mb": pss}
    finally:
        stop(procs)
        ctx.destroy(linger=0)


def main() -> None:
    a = actor_sweep_parser(__doc__, "1,2,4,8,16,32", 6.0, "envs per actor and per reference loop").parse_args()
    if a.quick:
        a.envs, a.n, a.seconds, a.rounds = "CartPole-v1", "1,2", 2.0, 1
    cores = len(os.sched_getaffinity(0))
    rows, runs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for env_id in a.envs.split(","):
            base = None
            for n in [int(x) for x in a.n.split(",")]:
                ref_loops = min(n, cores)
                results = [measure(env_id, n, a.num_envs, a.seconds, ref_loops, Path(tmp)) for _ in range(a.rounds)]
                med = {k: statistics.median(r[k] for r in results) for k in results[0]}
                base = med["qrl"] if n == 2 else base
                rows.append([env_id, n, f"{med['qrl']:,.0f}", f"{med['raw']:,.0f} ({ref_loops})",
                             f"{med['qrl'] / med['raw']:.2f}", "" if base is None else f"{med['qrl'] / base:.2f}",
                             f"{med['cpu_s_per_1000']:.3f}", f"{med['pss_mb']:,.0f}", f"{med['startup_s']:.2f}"])
                runs[f"{env_id}/{n}"] = results
                print("  ".join(map(str, rows[-1])), flush=True)
    print()
    table = print_table(["env", "actors", "qrl frames/s", "raw loops frames/s", "qrl/raw", "vs --n 2",
                 "CPU s/1000 frames", "PSS MB", "start s"], rows)
    save_results("collection", {"quick": a.quick, "rounds": a.rounds, "num_envs": a.num_envs,
                                "seconds": a.seconds, **table, "runs": runs})


if __name__ == "__main__":
    main()
