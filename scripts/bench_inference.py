"""Central inference against local inference: environment frames/s arriving at the broker from
`qrl actor --n N --inference ADDR` (env-only actors, one `qrl inference` server) and from
`qrl actor --n N` (each actor runs the policy itself), the two modes alternated within each round;
the per-step round trip of an extra env-only actor while N others run (p50/p99); PSS of the
actors and of the server; the time from launching N env-only actors until all N push.

The broker gets a dqn run registered by this script (bench_collection's) with the rate limiter
off, so both modes run as fast as they can; every figure is the median of --rounds.

    python scripts/bench_inference.py             # ~6 minutes
    python scripts/bench_inference.py --quick     # under a minute
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

from _common import actor_sweep_parser, print_table, save_results
from bench_collection import cpu_seconds, proc_tree, pss_mb, register
from qrl import envs
from qrl.cluster import start_actors, start_broker, stop
from qrl.protocol.transport import Client


def start_inference(run_dir: Path, broker: str, sets: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    address_file = run_dir / "inference.json"
    address_file.unlink(missing_ok=True)
    with (run_dir / "inference.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "qrl", "inference", "--broker", broker, "--bind",
                                 "tcp://127.0.0.1:0", "--write-address", str(address_file),
                                 *(f"--set=inference.{x}" for x in sets)],
                                stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not address_file.exists():
        assert proc.poll() is None and time.monotonic() < deadline, (run_dir / "inference.log").read_text()
        time.sleep(0.02)
    return proc, json.loads(address_file.read_text())["address"]


def round_trips(ctx: zmq.Context, address: str, env_id: str, num_envs: int, steps: int) -> list[float]:
    """Seconds per env_step request of one more env-only actor, stepping a real vector env."""
    client = Client(ctx, address, "probe", timeout_s=10)
    ident = {"actor_id": 10_000, "incarnation": "probe"}
    config = client.request("env_hello", ident, wait_s=30).meta
    ident["token"] = config["token"]  # the stream's secret: every step carries it
    env = envs.make_vector_env(env_id, config["num_envs"])
    obs, _ = env.reset(seed=0)
    times, results = [], {}
    for step in range(steps):
        t0 = time.perf_counter()
        reply = client.request("env_step", {**ident, "step": step}, {"obs": obs, **results}, wait_s=30)
        times.append(time.perf_counter() - t0)
        assert reply.type == "env_actions", reply.meta
        obs, reward, terminated, truncated, info = env.step(reply.arrays["actions"])
        results = {"reward": reward.astype(np.float32), "terminated": terminated, "truncated": truncated}
        done = np.flatnonzero(terminated | truncated)
        if len(done):
            results.update(final_index=done, final_obs=np.stack([info["final_obs"][i] for i in done]))
    client.request("env_bye", ident, wait_s=10)
    env.close()
    client.close()
    return times


def measure(env_id: str, n: int, num_envs: int, seconds: float, central: bool, run_dir: Path,
            sets: tuple[str, ...] = ()) -> dict:
    ctx = zmq.Context()
    broker, address = start_broker(run_dir)
    procs = [broker]
    try:
        client = Client(ctx, address, "bench")
        register(client, env_id, num_envs)
        stats = lambda: client.request("get_stats", wait_s=30).meta
        server_pids: list[int] = []
        if central:
            server, inference = start_inference(run_dir, address, sets)
            procs.insert(0, server)
            server_pids = [server.pid]
            while stats().get("weights_version", -1) < 0:
                time.sleep(0.02)
        t0 = time.perf_counter()
        actors = start_actors(run_dir, address, n, extra=("--inference", inference) if central else ())
        procs.insert(0, actors)
        while stats()["actors"] < n:
            assert actors.poll() is None, (run_dir / "actors.log").read_text()[-2000:]
            time.sleep(0.02)
        startup = time.perf_counter() - t0
        time.sleep(1.0)  # warm-up
        pids = proc_tree(actors.pid)
        a, cpu_a, ta = stats()["frames"], cpu_seconds(pids + server_pids), time.perf_counter()
        time.sleep(seconds)
        b, cpu_b, tb = stats()["frames"], cpu_seconds(pids + server_pids), time.perf_counter()
        out = {"frames_s": (b - a) / (tb - ta), "startup_s": startup, "actors_pss_mb": pss_mb(pids),
               "server_pss_mb": pss_mb(server_pids), "cpu_s_per_1000": 1000 * (cpu_b - cpu_a) / max(b - a, 1)}
        if central:
            rtt = round_trips(ctx, inference, env_id, num_envs, 300)
            out.update(rtt_p50_ms=1000 * float(np.percentile(rtt, 50)), rtt_p99_ms=1000 * float(np.percentile(rtt, 99)))
        client.close()
        return out
    finally:
        stop(procs)
        ctx.destroy(linger=0)


def main() -> None:
    p = actor_sweep_parser(__doc__, "2,8,32", 5.0, "envs per actor")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="an inference server setting, e.g. --set deadline_ms=1 (see InferenceConfig)")
    a = p.parse_args()
    if a.quick:
        a.envs, a.n, a.seconds, a.rounds = "CartPole-v1", "2", 2.0, 1
    rows, runs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for env_id in a.envs.split(","):
            for n in [int(x) for x in a.n.split(",")]:
                local, central = [], []
                for _ in range(a.rounds):  # alternated, so both modes see the machine alike
                    local.append(measure(env_id, n, a.num_envs, a.seconds, False, Path(tmp)))
                    central.append(measure(env_id, n, a.num_envs, a.seconds, True, Path(tmp), tuple(a.sets)))
                med = lambda results, k: statistics.median(r[k] for r in results)
                rows.append([env_id, n, f"{med(central, 'frames_s'):,.0f}", f"{med(local, 'frames_s'):,.0f}",
                             f"{med(central, 'frames_s') / med(local, 'frames_s'):.2f}",
                             f"{med(central, 'rtt_p50_ms'):.2f} / {med(central, 'rtt_p99_ms'):.2f}",
                             f"{med(central, 'actors_pss_mb'):,.0f}", f"{med(central, 'server_pss_mb'):,.0f}",
                             f"{med(local, 'actors_pss_mb'):,.0f}", f"{med(central, 'startup_s'):.2f}",
                             f"{med(local, 'startup_s'):.2f}"])
                runs[f"{env_id}/{n}"] = {"central": central, "local": local}
                print("  ".join(map(str, rows[-1])), flush=True)
    print()
    table = print_table(["env", "actors", "central frames/s", "local frames/s", "central/local",
                         "round trip p50/p99 ms", "env actors PSS MB", "server PSS MB", "local actors PSS MB",
                         "central start s", "local start s"], rows)
    save_results("inference", {"quick": a.quick, "server_settings": a.sets, "rounds": a.rounds,
                               "num_envs": a.num_envs, "seconds": a.seconds,
                               **table, "runs": runs})


if __name__ == "__main__":
    main()
