"""ZMTP heartbeats: a peer that stops answering without closing its connection is dropped."""

import os
import signal
import subprocess
import sys

import zmq
from zmq.utils.monitor import recv_monitor_message

from qrl.protocol import transport

PEER = """
import sys, time, zmq
s = zmq.Context().socket(zmq.DEALER)
s.connect(sys.argv[1])
s.send(b"hello")
print("connected", flush=True)
time.sleep(60)
"""


def test_a_frozen_peer_is_disconnected(monkeypatch):
    monkeypatch.setattr(transport, "HEARTBEAT_IVL_MS", 100)
    monkeypatch.setattr(transport, "HEARTBEAT_TIMEOUT_MS", 500)
    ctx = zmq.Context()
    router = transport.socket(ctx, zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    monitor = router.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_ACCEPTED)
    peer = subprocess.Popen([sys.executable, "-c", PEER, f"tcp://127.0.0.1:{port}"], stdout=subprocess.PIPE, text=True)
    try:
        assert peer.stdout.readline().strip() == "connected"
        assert router.poll(5000), "the peer's message never arrived"
        router.recv_multipart()
        os.kill(peer.pid, signal.SIGSTOP)  # alive, connection open, but silent
        events = []
        while monitor.poll(5000):
            events.append(recv_monitor_message(monitor)["event"])
            if zmq.EVENT_DISCONNECTED in events:
                break
        assert zmq.EVENT_DISCONNECTED in events, f"frozen peer not dropped; events {events}"
    finally:
        os.kill(peer.pid, signal.SIGKILL)
        peer.wait(5)
        router.disable_monitor()
        monitor.close(linger=0)
        router.close(linger=0)
        ctx.term()


PUSHER = """
import sys, uuid, numpy as np, zmq
from qrl.protocol import transport, wire
from qrl.acting.actor import ActorConfig, ingest_socket
transport.HEARTBEAT_IVL_MS, transport.HEARTBEAT_TIMEOUT_MS = 50, 200  # were they on, they would fire here
cfg = ActorConfig()
s = ingest_socket(zmq.Context(), cfg.send_hwm, cfg.send_buffer)  # exactly an actor's PUSH
s.connect(sys.argv[1])
incarnation, seq = uuid.uuid4().hex[:8], 0
# A credit for the first segment only: the rest pile up in the held-back ingest all the same
# (refused as no_credit once read), which is what this test needs.
asker = transport.Client(zmq.Context.instance(), sys.argv[2], "pusher")
assert asker.request("credit", {"run_id": "r1", "actor_id": 0, "incarnation": incarnation, "seq": 0},
                     wait_s=10).meta["until"] >= 0
print("pushing", flush=True)
while True:
    meta = {"run_id": "r1", "actor_id": 0, "incarnation": incarnation, "seq": seq, "policy_version": 0, "frames": 64}
    s.send_multipart(wire.encode("segment", meta, {"obs": np.zeros((64, 4), np.float32),
                                                  "action": np.zeros(64, np.int64)}))
    seq += 1
"""


def test_a_held_back_broker_survives_actors_killed_mid_push(procs):
    """Regression: with heartbeats on the broker's ingest socket, libzmq 4.3.5 aborted the broker
    (`Assertion failed: !_io_error`) when the rate limiter held the ingest back and an actor
    died (this test fails that way with them on). Pushers are built exactly like actors' PUSH
    sockets, held back, then SIGKILLed; no segment may arrive twice."""
    import time

    import numpy as np

    from qrl.protocol.transport import Client
    from test_broker import register_meta

    broker, address = procs.start_broker()
    ctx = zmq.Context()
    try:
        client = Client(ctx, address, "test")
        table = {"capacity": 100, "sampler": "uniform", "min_size": 0, "samples_per_insert": 1000.0, "tolerance": 1.0}
        assert client.request("register", register_meta(table=table),
                              {"w": np.zeros(1, np.float32)}, wait_s=15).type == "ok"
        ingest = f"tcp://127.0.0.1:{client.request('get_spec', wait_s=15).meta['ports']['ingest']}"
        for _ in range(5):
            pusher = subprocess.Popen([sys.executable, "-c", PUSHER, ingest, address], stdout=subprocess.PIPE,
                                      text=True)
            assert pusher.stdout.readline().strip() == "pushing"
            time.sleep(0.8)  # held back for longer than 4 heartbeat timeouts
            pusher.send_signal(signal.SIGKILL)
            pusher.wait(5)
            pusher.stdout.close()
            time.sleep(0.3)
            assert broker.poll() is None, broker.log_path.read_text()[-500:]
        stats = client.request("get_stats", wait_s=15).meta
        assert stats["duplicates"] == 0 and stats["segments"] >= 1
        client.close()
    finally:
        ctx.destroy(linger=0)
