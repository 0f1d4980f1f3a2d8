"""Liveness end to end: a broker paused (SIGSTOP) for 5, 15 and 60 s, connections cut, and a
network partition, all mid-run. No process is restarted; each time batches and segments flow
again, and the run still goes on to its target."""

import os
import signal
import time
from pathlib import Path

import pytest
import zmq

from qrl.metrics import read
from qrl.protocol.transport import Client
from conftest import wait_for
from netcut import Proxy
from test_e2e import broker_stats, children, free_port_block

pytestmark = pytest.mark.slow

ACTORS = 2
GRID_PRESET = Path(__file__).resolve().parents[1] / "configs" / "ql-Grid-v0.yaml"


def _progress(client) -> tuple[int, int]:
    s = broker_stats(client)
    return s["batches"], s["segments"]


def _flows_again(client, before: tuple[int, int], what: str, timeout_s: float = 60) -> float:
    """Seconds until both batches (learner) and segments (actors) have moved past ``before``."""
    t0 = time.monotonic()
    wait_for(lambda: all(now > then for now, then in zip(_progress(client), before)), timeout_s, what,
             interval_s=0.05)
    return time.monotonic() - t0


def _reaches(run_dir, target: float, after_frames: int, timeout_s: float):
    return wait_for(lambda: [m for m in read(run_dir) if m["kind"] == "eval" and m["frames"] > after_frames
                             and m["mean_return"] >= target], timeout_s, f"an evaluation >= {target}",
                    interval_s=1.0)


def _under_way(client, actors):
    """Wait until batches flow and every actor pushes; return the worker pids and incarnations."""
    wait_for(lambda: broker_stats(client)["batches"] > 0 and len(broker_stats(client)["per_actor"]) == ACTORS,
             90, "training under way")
    return children(actors.pid), {k: a["incarnations"] for k, a in broker_stats(client)["per_actor"].items()}


def _same_processes(learner, actors, workers, incarnations, client) -> None:
    assert learner.poll() is None and actors.poll() is None
    assert children(actors.pid) == workers, "an actor worker was restarted"
    assert {k: a["incarnations"] for k, a in broker_stats(client)["per_actor"].items()} == incarnations


def _start(procs, address, run_dir, *learner_flags):
    actors = procs.start("actors", "actor", "--n", str(ACTORS), "--broker", address)
    learner = procs.start("learner", "learner", "--broker", address, "--run-dir", str(run_dir), "--no-progress",
                          # never stops by itself: the test decides when it has seen the target
                          "--target-return", "1000",
                          *learner_flags)
    return actors, learner


@pytest.mark.timeout(600)  # 80 s of pauses, then learning to the target
def test_the_run_recovers_from_broker_pauses_of_5_15_and_60_seconds(procs, tmp_path):
    broker, address = procs.start_broker()
    run_dir = tmp_path / "run"
    actors, learner = _start(procs, address, run_dir, "--algo", "dqn", "--env", "CartPole-v1",
                             "--total-steps", "400000")
    ctx = zmq.Context()
    try:
        client = Client(ctx, address, "test")
        workers, incarnations = _under_way(client, actors)
        recovered = {}
        for pause_s in (5, 15, 60):
            before = _progress(client)
            os.killpg(broker.pid, signal.SIGSTOP)
            time.sleep(pause_s)
            os.killpg(broker.pid, signal.SIGCONT)
            flowing = _flows_again(client, before, f"batches and segments after a {pause_s} s pause")
            recovered[pause_s] = round(flowing, 2)
            _same_processes(learner, actors, workers, incarnations, client)
        print(f"\nrecovered after pauses (s to new batches and segments): {recovered}")
        frames = max(m["frames"] for m in read(run_dir) if "frames" in m)
        _reaches(run_dir, 475, frames, 240)
        stats = broker_stats(client)
        assert stats["duplicates"] == 0 and stats["rejected"] == {}
        client.close()
    finally:
        ctx.destroy(linger=0)


@pytest.mark.timeout(450)
def test_the_run_recovers_from_cut_connections_and_a_partition(procs, tmp_path):
    port = free_port_block()
    procs.start("broker", "broker", "--port", str(port))
    proxy = Proxy([port + i for i in range(4)])
    address = f"tcp://127.0.0.2:{port}"  # everyone reaches the broker through the proxy
    run_dir = tmp_path / "run"
    actors, learner = _start(procs, address, run_dir, "--config", str(GRID_PRESET),
                             "--total-steps", "1000000", "--set", "run.eval_every_frames=2000")
    ctx = zmq.Context()
    try:
        client = Client(ctx, address, "test")
        workers, incarnations = _under_way(client, actors)
        recovered = {}
        for event in ("cut", "cut again", "partition 15 s", "cut"):
            before = _progress(client)
            if event.startswith("partition"):
                proxy.partition(15)
                time.sleep(15)
            else:
                # Flow can resume (batches of held requests, segments already in the broker's buffers)
                # before every client has reconnected after a partition: cut once all of them are back.
                wait_for(lambda: proxy.connections() >= 2 + ACTORS, 30, "every client connected through the proxy",
                         interval_s=0.05)
                assert proxy.cut() >= 2 + ACTORS  # learner sample/stats/publish sockets and the actors' ones
            recovered[event] = round(_flows_again(client, before, f"batches and segments after '{event}'"), 2)
            _same_processes(learner, actors, workers, incarnations, client)
        print(f"\nrecovered (s to new batches and segments): {recovered}")
        frames = max(m["frames"] for m in read(run_dir) if "frames" in m)
        _reaches(run_dir, 0.92, frames, 120)  # the best return, 0.93, as a float sum
        client.close()
    finally:
        ctx.destroy(linger=0)
        proxy.close()
