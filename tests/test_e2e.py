"""Real processes on random loopback ports: broker, actor supervisor, learner."""

import contextlib
import json
import os
import signal
from pathlib import Path

import pytest
import zmq

from qrl.protocol.transport import Client, free_port_block
from conftest import wait_for

pytestmark = pytest.mark.slow


def broker_stats(client):
    return client.request("get_stats", wait_s=15).meta


@contextlib.contextmanager
def broker_client(address):
    """A request client of the broker at address (which may not be up yet), closed afterwards."""
    ctx = zmq.Context()
    client = Client(ctx, address, "test")
    try:
        yield client
    finally:
        client.close()
        ctx.destroy(linger=0)


def loopback_address():
    """A free block of ports and the broker address on its first one."""
    port = free_port_block()
    return port, f"tcp://127.0.0.1:{port}"


def children(pid):
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return sorted(int(x) for x in path.read_text().split()) if path.exists() else []


def learner_args(broker, run_dir, *extra):
    return ("learner", "--algo", "dqn", "--env", "CartPole-v1", "--broker", broker, "--run-dir", str(run_dir),
            "--no-progress", "--total-steps", "100000000", "--set", "run.eval_every_frames=0", *extra)


def test_items_flow_weights_advance_and_a_killed_worker_is_restarted(procs, tmp_path):
    ctx = zmq.Context()
    try:
        _, address = procs.start_broker()
        actors = procs.start("actors", "actor", "--n", "2", "--broker", address)
        learner = procs.start("learner", *learner_args(address, tmp_path / "run", "--set", "run.publish_every=5"))
        client = Client(ctx, address, "test")

        def versions_advanced():
            per_actor = broker_stats(client).get("per_actor", {})
            return len(per_actor) == 2 and all(a["policy_version"] > 0 for a in per_actor.values())

        wait_for(versions_advanced, 90, "both actors to push segments made with published weights")
        before = broker_stats(client)
        assert before["items"] > 0 and before["batches"] > 0 and before["rejected"] == {}

        workers = wait_for(lambda: children(actors.pid) if len(children(actors.pid)) == 2 else None, 10,
                           "two worker processes")
        killed = workers[0]
        incarnations = {k: v["incarnations"] for k, v in before["per_actor"].items()}
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda: len(children(actors.pid)) == 2 and killed not in children(actors.pid), 10,
                 "the supervisor to restart the killed worker")

        def restarted_worker_pushes():
            per_actor = broker_stats(client)["per_actor"]
            return any(per_actor[k]["incarnations"] != incarnations[k] for k in per_actor)

        wait_for(restarted_worker_pushes, 60, "the restarted worker to push segments")
        assert "restarting" in actors.log_path.read_text()

        os.killpg(learner.pid, signal.SIGTERM)  # a clean stop: final evaluation, checkpoint, summary
        assert learner.wait(60) == 0, learner.log_path.read_text()[-2000:]
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert summary["stop_reason"] == "stopped by signal" and summary["updates"] > 0
        assert (tmp_path / "run" / "checkpoint.pt").exists()

        # --resume continues the same run: counters and optimizer from the checkpoint, weight
        # versions keep increasing, and the actors (still running) pick the new weights up.
        resumed = procs.start("learner-resumed", *learner_args(address, tmp_path / "run", "--resume",
                                                                "--set", "run.publish_every=5"))
        wait_for(lambda: broker_stats(client)["weights_version"] > summary["weights_version"] + 2, 60,
                 "the resumed learner to publish newer weights")
        wait_for(lambda: min(a["policy_version"] for a in broker_stats(client)["per_actor"].values())
                 > summary["weights_version"], 60, "actors to act with the resumed learner's weights")
        os.killpg(resumed.pid, signal.SIGTERM)
        assert resumed.wait(60) == 0, resumed.log_path.read_text()[-2000:]
        after = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert after["run_id"] == summary["run_id"] and after["updates"] > summary["updates"]
        assert "resumed run" in resumed.log_path.read_text()
        client.close()
    finally:
        ctx.destroy(linger=0)


def test_actors_and_learner_wait_for_a_late_broker(procs, tmp_path):
    port, address = loopback_address()
    actors = procs.start("actors", "actor", "--n", "1", "--broker", address)
    learner = procs.start("learner", *learner_args(address, tmp_path / "run"))
    wait_for(lambda: "waiting for the broker" in actors.log_path.read_text()
             and "waiting for the broker" in learner.log_path.read_text(), 30, "periodic waiting messages")
    procs.start("broker", "broker", "--port", str(port))
    with broker_client(address) as client:
        wait_for(lambda: broker_stats(client)["batches"] > 0, 60, "batches served after the broker appeared")
        assert actors.poll() is None and learner.poll() is None


def test_learner_and_actors_carry_on_after_the_broker_is_killed_and_restarted(procs, tmp_path):
    port, address = loopback_address()
    broker = procs.start("broker", "broker", "--port", str(port))
    procs.start("actors", "actor", "--n", "1", "--broker", address)
    learner = procs.start("learner", *learner_args(address, tmp_path / "run"))
    with broker_client(address) as client:
        wait_for(lambda: broker_stats(client)["batches"] > 0, 60, "batches from the first broker")
        os.killpg(broker.pid, signal.SIGKILL)
        broker.wait(10)
        procs.start("broker-2", "broker", "--port", str(port))
        wait_for(lambda: broker_stats(client)["batches"] > 0, 60, "batches from the restarted broker")
        assert "registering again" in learner.log_path.read_text()
        assert learner.poll() is None
