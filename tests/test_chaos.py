"""Chaos: during one DQN CartPole run, SIGKILL an actor worker, then the broker (started again
from its snapshot), then the learner (resumed from its checkpoint). The run must still reach a
deterministic evaluation >= 475, and the broker's accounting must show losses only inside the
killed broker's unsnapshotted window."""

import json
import os
import re
import signal
import time

import pytest
import zmq

from qrl.metrics import read
from qrl.protocol.transport import Client
from conftest import wait_for
from test_e2e import broker_stats, children, free_port_block

pytestmark = pytest.mark.slow

ACTORS = 2
# Segments an actor can have on the way when the broker dies: the one in its PUSH queue
# (SNDHWM 1), the one being written, what fits in the small kernel buffers on both ends, and
# the broker's RCVHWM 2. Measured: 4 each, every run (the rate limiter keeps the queues full).
IN_FLIGHT_PER_ACTOR = 6


def test_the_run_survives_killing_each_process_in_turn(procs, tmp_path):
    port = free_port_block()
    address = f"tcp://127.0.0.1:{port}"
    snap, run_dir = tmp_path / "snap", tmp_path / "run"
    broker_args = ("broker", "--port", str(port), "--snapshot-dir", str(snap), "--snapshot-every", "3")
    learner_args = ("learner", "--algo", "dqn", "--env", "CartPole-v1", "--broker", address,
                    "--run-dir", str(run_dir), "--no-progress", "--total-steps", "400000",
                    "--target-return", "1000",  # never stops by itself: the test decides when it has seen 475
                    "--set", "run.checkpoint_every_s=1", "--set", "run.eval_every_frames=5000")
    broker = procs.start("broker", *broker_args)
    actors = procs.start("actors", "actor", "--n", str(ACTORS), "--broker", address)
    learner = procs.start("learner", *learner_args)
    timings = {}
    ctx = zmq.Context()
    try:
        client = Client(ctx, address, "test")
        wait_for(lambda: broker_stats(client)["frames"] > 3000 and broker_stats(client)["batches"] > 0, 90,
                 "training under way")

        # 1. An actor worker: its supervisor forks a new one at once (first restart: 0.1 s backoff).
        workers = wait_for(lambda: children(actors.pid) if len(children(actors.pid)) == ACTORS else None, 10,
                           "the worker processes")
        os.kill(workers[0], signal.SIGKILL)
        t0 = time.monotonic()
        wait_for(lambda: len(children(actors.pid)) == ACTORS and workers[0] not in children(actors.pid), 10,
                 "a new worker", interval_s=0.01)
        timings["actor_restart_s"] = time.monotonic() - t0
        before = broker_stats(client)["per_actor"]
        wait_for(lambda: any(a["incarnations"] != before[k]["incarnations"] and a["seq"] >= 0
                             for k, a in broker_stats(client)["per_actor"].items()), 30,
                 "the new worker's first segment", interval_s=0.05)
        timings["actor_first_segment_s"] = time.monotonic() - t0
        assert timings["actor_restart_s"] < 2.0

        # 2. The broker, halfway between two snapshots (the last one knows the new worker),
        # so the window it takes with it is small but real.
        taken = broker_stats(client)["snapshots"]
        wait_for(lambda: broker_stats(client)["snapshots"] >= taken + 1, 30, "a periodic snapshot", interval_s=0.05)
        time.sleep(1.5)
        at_kill = broker_stats(client)
        os.killpg(broker.pid, signal.SIGKILL)
        broker.wait(10)
        assert at_kill["gaps"] == 0 and at_kill["duplicates"] == 0 and at_kill["rejected"] == {}, json.dumps(at_kill)
        t0 = time.monotonic()
        procs.start("broker-2", *broker_args)
        restored = wait_for(lambda: broker_stats(client)["restored"], 30, "the restarted broker")
        wait_for(lambda: broker_stats(client)["batches"] > restored["batches"]
                 and broker_stats(client)["segments"] > restored["segments"], 60,
                 "batches and segments through the restarted broker", interval_s=0.05)
        timings["broker_restart_s"] = time.monotonic() - t0
        assert 0 < restored["items"] <= at_kill["replay_size"]

        # 3. The learner, after a checkpoint; resumed, it continues the same run.
        ckpt = run_dir / "checkpoint.pt"
        mark = ckpt.stat().st_mtime
        wait_for(lambda: ckpt.stat().st_mtime > mark, 30, "a fresh checkpoint")
        os.killpg(learner.pid, signal.SIGKILL)
        learner.wait(10)
        version_at_kill = broker_stats(client)["weights_version"]
        t0 = time.monotonic()
        resumed = procs.start("learner-2", *learner_args, "--resume")
        wait_for(lambda: broker_stats(client)["weights_version"] > version_at_kill, 60,
                 "weights from the resumed learner", interval_s=0.05)
        timings["learner_resume_s"] = time.monotonic() - t0
        assert "resumed run" in resumed.log_path.read_text()

        # The run still learns: an evaluation after all three kills reaches 475.
        resumed_at = max([m["frames"] for m in read(run_dir) if "frames" in m], default=0)

        def solved_after_resume():
            return [m for m in read(run_dir) if m["kind"] == "eval" and m["frames"] > resumed_at
                    and m["mean_return"] >= 475]

        evals = wait_for(solved_after_resume, 240, "an evaluation >= 475 after the kills", interval_s=1.0)
        final_before_stop = broker_stats(client)
        os.killpg(resumed.pid, signal.SIGTERM)
        assert resumed.wait(60) == 0, resumed.log_path.read_text()[-2000:]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["run_id"] == final_before_stop["run_id"]

        # Accounting: stop the actors cleanly, then compare what each incarnation says it sent
        # with what the broker counted. The only gaps are the killed broker's window.
        os.killpg(actors.pid, signal.SIGTERM)
        assert actors.wait(30) == 0
        sent = {(int(a), inc): int(n) for a, inc, n in
                re.findall(r"actor (\d+): incarnation (\w+) sent (\d+) segments", actors.log_path.read_text())}
        final = broker_stats(client)
        window = sum(at_kill["per_actor"][k]["seq"] - restored["seq"][k] for k in restored["seq"])
        lost = final["gaps"]
        print(f"\nchaos: {timings}; received {final['segments']} segments, lost {lost} "
              f"(snapshot window held {window}), duplicates {final['duplicates']}, first 475 at "
              f"{evals[0]['frames']} frames")
        assert window <= lost <= window + ACTORS * IN_FLIGHT_PER_ACTOR
        assert final["duplicates"] == 0 and final["rejected"] == {}
        for k, a in final["per_actor"].items():
            # The newest incarnation (stats do not show incarnations; its own worker may ask).
            newest = [inc for (actor, inc) in sent if actor == int(k) and client.request(
                "get_stats", {"actor": int(k), "incarnation": inc}, wait_s=15).meta["flushed_seq"] == a["seq"]]
            assert newest and sent[(int(k), newest[0])] == a["seq"] + 1  # nothing lost since the restart
        client.close()
    finally:
        ctx.destroy(linger=0)
