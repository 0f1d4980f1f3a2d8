"""Shared fixtures: a broker on random loopback ports in a background thread,
and helpers that start real `qrl` processes and always reap them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from qrl.brokers.server import Broker, BrokerConfig
from qrl.protocol import messages, wire
from qrl.protocol.transport import Client


def pytest_configure(config):
    # A pytest stopped by SIGTERM (a timeout, a kill, a cancelled CI job) unwinds as after Ctrl-C, so
    # its fixtures' teardowns run and reap the qrl processes they started in sessions of their own
    # (left behind, an orphaned actor kept stepping its environments at full speed for an hour).
    signal.signal(signal.SIGTERM, signal.default_int_handler)


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def broker():
    """A real Broker bound to random ports on 127.0.0.1, served by a thread."""
    b = Broker(BrokerConfig(port=0), ctx=zmq.Context())
    thread = threading.Thread(target=b.serve, daemon=True)
    thread.start()
    yield b
    b.stop()
    thread.join(5)
    b.close()
    b.ctx.destroy(linger=0)


@pytest.fixture
def client(ctx, broker):
    """A request client of the broker fixture."""
    c = Client(ctx, broker.address(), "test", timeout_s=2.0)
    yield c
    c.close()


CREDIT_FIELDS = ("run_id", "actor_id", "incarnation", "seq")


class CreditedPush:
    """A PUSH socket that asks the broker for a credit before each segment it sends, as every
    actor must (docs/protocol.md, "Flow control"); anything else (a malformed message, a segment
    whose credit request is refused) goes out as it is, for the broker to judge."""

    def __init__(self, sock: zmq.Socket, address: str):
        self.sock = sock
        self.client = Client(sock.context, address, "test-credit", timeout_s=2.0)

    def send_multipart(self, frames, *args, **kwargs):
        try:
            msg = wire.decode(frames)
            if msg.type == "segment":
                messages.validate("credit", {k: msg.meta.get(k) for k in CREDIT_FIELDS})
                ask_credit(self.client, msg.meta)
        except (wire.WireError, messages.MessageError):
            pass  # the broker rejects it for what it is
        return self.sock.send_multipart(frames, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.sock, name)

    def close(self, *args, **kwargs):
        self.client.close()
        self.sock.close(*args, **kwargs)


def ask_credit(client: Client, meta: dict, timeout_s: float = 10.0) -> bool:
    """Ask for a credit for the segment with this metadata until it is granted (True) or refused (False)."""
    ask = {k: meta[k] for k in CREDIT_FIELDS}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = client.request("credit", ask, wait_s=timeout_s)
        if reply.type != "credit":
            return False
        if reply.meta["until"] >= meta["seq"]:
            return True
    pytest.fail(f"no credit for segment {ask} within {timeout_s} s")


@pytest.fixture
def push(ctx, broker):
    """A PUSH socket connected to the broker fixture's ingest, asking for credits."""
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(f"tcp://127.0.0.1:{broker.ports['ingest']}")
    credited = CreditedPush(s, broker.address())
    yield credited
    credited.close()


class Procs:
    """Starts `python -m qrl ...` processes; every one is killed and reaped at teardown."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.Popen:
        """`python -m qrl ARGS`, after PREFIX (e.g. `ip netns exec NS`, which execs in place)."""
        with (self.tmp / f"{name}.log").open("w") as log:  # the child keeps its own descriptor
            p = subprocess.Popen([*prefix, sys.executable, "-m", "qrl", *args], stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True, cwd=self.tmp)
        p.log_path = self.tmp / f"{name}.log"
        self.procs.append(p)
        return p

    def start_broker(self, *extra: str) -> tuple[subprocess.Popen, str]:
        name = f"broker-{len(self.procs)}"
        address_file = self.tmp / f"{name}.json"
        p = self.start(name, "broker", "--port", "0", "--address-file", str(address_file), *extra)
        deadline = time.monotonic() + 30
        while not address_file.exists():
            assert p.poll() is None, p.log_path.read_text()
            assert time.monotonic() < deadline, "broker did not start"
            time.sleep(0.05)
        return p, json.loads(address_file.read_text())["address"]

    def cleanup(self) -> None:
        """Stop everything: the brokers last, so that stopping actors can still confirm their last
        segments (against a broker stopped with them each waited out its confirmation timeout)."""
        brokers = [p for p in self.procs if p.log_path.name.startswith("broker")]
        self._stop([p for p in self.procs if p not in brokers])
        self._stop(brokers)

    @staticmethod
    def _stop(procs: list[subprocess.Popen]) -> None:
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)


@pytest.fixture
def procs(tmp_path):
    p = Procs(tmp_path)
    yield p
    p.cleanup()


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.1):
    """Poll until predicate() is truthy; fail the test (never hang) after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
