"""ZMTP heartbeats: a peer that stops answering without closing its connection is dropped."""

import os
import signal
import subprocess
import sys

import zmq
from zmq.utils.monitor import recv_monitor_message

from qrl import transport

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
