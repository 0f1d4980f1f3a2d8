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

LOST_AFTER_S = 2.0
"""A sample request older than this that the broker does not hold, on two stats checks in a row,
was lost with a dropped connection (broker paused past the heartbeat timeout, connection cut):
it is sent again. Requests sent before a disconnection that the socket's monitor reported are
looked for at once (see SampleClient.resend_lost)."""


class SampleClient:
    """Keeps `in_flight` requests for batches of `batch_size` items outstanding: each answer (a
    batch or a refusal) is replaced by a new request, with the fields options() gives at that
    moment (prioritized replay's annealed beta)."""

    def __init__(self, ctx: zmq.Context, broker: str, batch_size: int, in_flight: int,
                 options: Callable[[], dict[str, Any]]):
        self.batch_size, self.options = batch_size, options
        # A fixed routing id: when a heartbeat timeout (broker paused) or a cut makes libzmq
        # reconnect this socket, the broker (ROUTER_HANDOVER) sends the batches for the requests
        # it holds to the new connection instead of dropping them.
        self.socket = transport.socket(ctx, zmq.DEALER)
        self.id = f"sampler-{uuid.uuid4().hex}"
        self.socket.setsockopt(zmq.ROUTING_ID, self.id.encode())
        # Disconnections, so requests sent on a connection that died are looked for at the next
        # stats check instead of after LOST_AFTER_S.
        self.events = self.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.socket.connect(broker)
        self.requests = itertools.count(1)
        self.outstanding: dict[int, float] = {}  # request id -> when it was sent
        self.suspect_lost: set[int] = set()
        self.disconnected_at = -1.0
        self.resent = 0
        for _ in range(in_flight):
            self.request()

    def close(self) -> None:
        self.socket.disable_monitor()
        self.events.close(linger=0)
        self.socket.close(linger=0)

    def request(self) -> None:
        req = next(self.requests)
        transport.send(self.socket, "sample", {"batch_size": self.batch_size, "req": req, **self.options()})
        self.outstanding[req] = time.monotonic()

    def receive(self, timeout_ms: int) -> wire.Message | None:
        """The next batch or refusal ("error"), or None within the timeout. A request is replaced
        when answered, unless it was already sent again (its replacement keeps the window full)."""
        raw = transport.recv_frames(self.socket, timeout_ms)
        if raw is None:
            return None
        reply = wire.decode(raw)
        if reply.type == "ok":  # an update_priorities acknowledgement, not an answer
            return None
        if self.outstanding.pop(reply.meta.get("req"), None) is not None:
            self.request()
        return reply

    def send_priorities(self, ids: np.ndarray, priorities: np.ndarray) -> None:
        """Prioritized replay: the new priorities of the items with these ids."""
        transport.send(self.socket, "update_priorities", {},
                       {"ids": np.ascontiguousarray(ids), "priorities": np.asarray(priorities, dtype=np.float64)})

    def resend_lost(self, held_by_broker: list[int]) -> None:
        """Send again the requests the broker has not got. One sent before the socket last lost
        its connection is lost if the broker does not hold it; any other only when it is older
        than LOST_AFTER_S and missing on two checks in a row, so a batch still on its way is not
        taken for a lost request (one that arrives late anyway is used and not replaced)."""
        now = time.monotonic()
        while self.events.poll(0):
            self.events.recv_multipart()  # a monitor event: [event id + value, endpoint]
            self.disconnected_at = now
        if self.socket.poll(0, zmq.POLLIN):  # replies wait to be read: nothing is stalled
            self.suspect_lost.clear()
            return
        held = set(held_by_broker)
        missing = {r for r, t in self.outstanding.items()
                   if r not in held and (t < self.disconnected_at or now - t > LOST_AFTER_S)}
        on_dead_connection = {r for r in missing if self.outstanding[r] < self.disconnected_at}
        lost = (missing & self.suspect_lost) | on_dead_connection
        self.suspect_lost = missing - lost
        if not lost:
            return
        log.warning("learner: %d sample request(s) lost on the way to the broker (connection dropped); sent again",
                    len(lost))
        for r in lost:
            del self.outstanding[r]
            self.request()
        self.resent += len(lost)
