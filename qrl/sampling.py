"""The learner's sampling client: several sample requests in flight on a DEALER socket, the
batches they bring back, lost requests sent again, and new priorities returned to the broker.

The learner process (qrl/learner.py) owns one; it opens a new one each time it registers the run
(a restarted broker holds none of the old socket's requests)."""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from typing import Any, Callable

import numpy as np
import zmq

from qrl.protocol import transport, wire

log = logging.getLogger("qrl.learner")

STATUS_EVERY_S = 1.0
"""How often the client asks the broker which of its requests it holds (`sample_status`, on the
sampling socket itself). The answer comes on the same connection, after the answers to every
request sent before it, so such a request that is neither answered nor held was lost with a
dropped connection (broker paused past the heartbeat timeout, connection cut): it is sent again.
The answer also carries the broker's frame count and weights version for the learner."""


class SampleClient:
    """Keeps `in_flight` requests for batches of `batch_size` items outstanding: each answer (a
    batch or a refusal) is replaced by a new request, with the fields options() gives at that
    moment (prioritized replay's annealed beta)."""

    def __init__(self, ctx: zmq.Context, broker: str, batch_size: int, in_flight: int,
                 options: Callable[[], dict[str, Any]], token: str):
        self.batch_size, self.options = batch_size, options
        self.token = token  # the run's: only its holder may sample (docs/protocol.md, "Run ownership")
        # A fixed routing id: when a heartbeat timeout (broker paused) or a cut makes libzmq
        # reconnect this socket, the broker (ROUTER_HANDOVER) sends the batches for the requests
        # it holds to the new connection instead of dropping them.
        self.socket = transport.socket(ctx, zmq.DEALER)
        self.socket.setsockopt(zmq.ROUTING_ID, f"sampler-{uuid.uuid4().hex}".encode())
        self.socket.connect(broker)
        self.requests = itertools.count(1)
        self.outstanding: set[int] = set()  # sample requests not yet answered
        self.status_asked: set[int] = set()  # sample_status requests not yet answered
        self.last_status = time.monotonic()
        for _ in range(in_flight):
            self.request()

    def close(self) -> None:
        self.socket.close(linger=0)

    def request(self) -> None:
        req = next(self.requests)
        transport.send(self.socket, "sample", {"batch_size": self.batch_size, "req": req, "token": self.token,
                                                **self.options()})
        self.outstanding.add(req)

    def receive(self, timeout_ms: int) -> wire.Message | None:
        """The next batch, refusal ("error") or sample_status (for resend_lost), or None within
        the timeout. A request is replaced when answered, unless it was already sent again (its
        replacement keeps the window full)."""
        self.ask_status_when_due()
        raw = transport.recv_frames(self.socket, timeout_ms)
        if raw is None:
            return None
        reply = wire.decode(raw)
        if reply.type == "ok":  # an update_priorities acknowledgement, not an answer
            return None
        if reply.type != "sample_status" and reply.meta.get("req") in self.outstanding:
            self.outstanding.remove(reply.meta["req"])
            self.request()
        return reply

    def send_priorities(self, ids: np.ndarray, priorities: np.ndarray) -> None:
        """Prioritized replay: the new priorities of the items with these ids."""
        transport.send(self.socket, "update_priorities", {"token": self.token},
                       {"ids": np.ascontiguousarray(ids), "priorities": np.asarray(priorities, dtype=np.float64)})

    def ask_status_when_due(self) -> None:
        now = time.monotonic()
        if now - self.last_status >= STATUS_EVERY_S:
            req = next(self.requests)
            transport.send(self.socket, "sample_status", {"req": req, "token": self.token})
            self.status_asked.add(req)  # every request numbered below it was sent before it
            self.last_status = now

    def resend_lost(self, status: dict[str, Any]) -> int:
        """Send again the requests sent before this sample_status that the broker neither
        answered (their answers came first) nor holds; how many. An answer that still arrives
        for one is used and not replaced."""
        status_req = status.get("req")
        if status_req not in self.status_asked:
            return 0  # not ours, or an old status answered late
        self.status_asked = {r for r in self.status_asked if r > status_req}
        held = set(status.get("held") or ())
        lost = [r for r in self.outstanding if r < status_req and r not in held]
        if not lost:
            return 0
        log.warning("learner: %d sample request(s) lost on the way to the broker (connection dropped); sent again",
                    len(lost))
        for r in lost:
            self.outstanding.remove(r)
            self.request()
        return len(lost)
