"""An acting process's side of credit-based flow control (docs/protocol.md, "Flow control"): before
it collects a segment, it asks the broker for a credit for that segment's seq and waits for it.

An actor process asks one segment ahead and waits (CreditAhead); the central inference server asks for all its
streams at once without blocking (CreditLine) and acts for a stream only once its next segment is
granted, holding that env actor's step reply meanwhile.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import zmq

from qrl.protocol import transport, wire

log = logging.getLogger("qrl.actor")

REPORT_AFTER_S, REPORT_EVERY_S = transport.REPORT_EVERY_S, 60.0
"""A wait for credit is reported after REPORT_AFTER_S, then every REPORT_EVERY_S (it is how a
learner-bound run looks, and 32 actors must not flood the log with it)."""
RETRY_S = 0.5
"""Pause before asking again after an error reply (no run yet, too many waiting)."""


class WrongRun(RuntimeError):
    """The broker serves another run than the one asked about."""


def credit_meta(run_id: str, actor_id: int, incarnation: str, seq: int) -> dict[str, Any]:
    return {"run_id": run_id, "actor_id": actor_id, "incarnation": incarnation, "seq": seq}


class CreditAhead:
    """An actor's credits, asked one segment ahead: as soon as segment seq is granted, the request
    for seq + 1 goes out, and its answer comes while the actor collects seq, so no round trip sits
    between two segments. An actor is thus at most two segments ahead of its grants' table room:
    the one it collects and the next one granted. Requests go on the client's DEALER with the
    client's lazy-pirate timeout (a fresh socket after client.timeout_s without an answer)."""

    def __init__(self, client: transport.Client, run_id: str, actor_id: int, incarnation: str, role: str):
        self.client, self.run_id, self.actor_id, self.incarnation, self.role = (
            client, run_id, actor_id, incarnation, role)
        self.until = -1
        self.asked: tuple[int, int, float] | None = None  # (req, seq, when) of the request on its way
        self.next_req = 1

    def wait(self, seq: int, should_stop: Callable[[], bool]) -> None:
        """Block until segment seq is granted, then ask for seq + 1. Raises WrongRun when the broker
        serves another run, transport.BrokerUnavailable when stopped while waiting."""
        start, next_report = time.monotonic(), time.monotonic() + REPORT_AFTER_S
        while self.until < seq:
            if self.asked is None or self.asked[1] < seq:
                self._ask(seq)
            self._receive(timeout_s=0.2)
            if should_stop():
                raise transport.BrokerUnavailable(f"{self.role}: stopped while waiting for credit")
            now = time.monotonic()
            if self.asked is not None and now - self.asked[2] > self.client.timeout_s + 1.0:
                self.client.reconnect()  # no answer, not even the broker's after its 1 s hold: ask afresh
                self._ask(self.asked[1])
            if now >= next_report:
                next_report = now + REPORT_EVERY_S
                log.info("%s: waiting %.0f s for credit to collect segment %d: the learner is still training "
                         "on what came before (a learner-bound run: fewer actors would collect as much)",
                         self.role, now - start, seq)
        if self.asked is None:
            self._ask(seq + 1)

    def _ask(self, seq: int) -> None:
        req, self.next_req = self.next_req, self.next_req + 1
        self.asked = (req, seq, time.monotonic())
        transport.send(self.client.sock, "credit", {"req": req, **credit_meta(self.run_id, self.actor_id,
                                                                                self.incarnation, seq)})

    def _receive(self, timeout_s: float) -> None:
        frames = transport.recv_frames(self.client.sock, int(timeout_s * 1000))
        if frames is None:
            return
        reply = wire.decode(frames, self.client.limits)
        if self.asked is None or reply.meta.get("req") != self.asked[0]:
            return  # the answer to a request asked again since
        self.asked = None
        if reply.type == "credit":
            self.until = max(self.until, reply.meta.get("until", -1))
        elif reply.meta.get("reason") == "wrong_run":
            raise WrongRun(reply.meta.get("detail", "the broker serves another run"))
        else:
            log.warning("%s: credit refused: %s %s", self.role, reply.meta.get("reason"), reply.meta.get("detail"))
            time.sleep(RETRY_S)
        # until < asked_seq: held past the broker's hold time (or refused): wait asks again


class CreditLine:
    """Credit requests for many streams on one DEALER, none blocking: ask() sends (at most one
    request per stream at a time), granted() reads the replies. A request unanswered for
    TIMEOUT_S (a lost connection, a restarted broker) is sent again."""

    TIMEOUT_S = 2.5

    def __init__(self, ctx: zmq.Context, address: str, run_id: str):
        self.run_id = run_id
        self.sock = transport.socket(ctx, zmq.DEALER)
        self.sock.connect(address)
        self.asked: dict[Any, tuple[int, int, str, int, float]] = {}  # stream -> (req, actor, incarnation, seq, at)
        self.next_req = 1

    def ask(self, stream: Any, actor_id: int, incarnation: str, seq: int) -> None:
        """Ask for stream's segment seq, unless a request for it is on its way."""
        asked = self.asked.get(stream)
        if asked is not None and asked[3] == seq:
            return
        self._send(stream, actor_id, incarnation, seq)

    def _send(self, stream: Any, actor_id: int, incarnation: str, seq: int) -> None:
        req, self.next_req = self.next_req, self.next_req + 1
        self.asked[stream] = (req, actor_id, incarnation, seq, time.monotonic())
        transport.send(self.sock, "credit", {"req": req, **credit_meta(self.run_id, actor_id, incarnation, seq)},
                       flags=zmq.NOBLOCK)

    def forget(self, stream: Any) -> None:
        self.asked.pop(stream, None)

    def granted(self) -> list[tuple[Any, int]]:
        """(stream, until) for each answer that came; a stream answered below its seq is asked again."""
        by_req = {a[0]: s for s, a in self.asked.items()}
        out = []
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                reply = wire.decode(frames)
            except zmq.Again:
                break
            except wire.WireError as exc:
                log.warning("inference: ignored a malformed credit reply (%s)", exc)
                continue
            stream = by_req.pop(reply.meta.get("req"), None)
            if stream is None:
                continue  # an answer to a request sent again since
            _, actor_id, incarnation, seq, _ = self.asked.pop(stream)
            if reply.type == "error":
                if reply.meta.get("reason") == "wrong_run":
                    raise WrongRun(reply.meta.get("detail", "the broker serves another run"))
                log.warning("inference: credit refused: %s %s", reply.meta.get("reason"), reply.meta.get("detail"))
                self.asked[stream] = (-1, actor_id, incarnation, seq, time.monotonic())  # again after TIMEOUT_S
                continue
            until = reply.meta.get("until", -1) if reply.type == "credit" else -1
            out.append((stream, until))
            if until < seq:  # held past the broker's hold time, or refused for now: ask again
                self._send(stream, actor_id, incarnation, seq)
        return out

    def resend_lost(self) -> None:
        """Requests unanswered for TIMEOUT_S go again (the socket's heartbeats re-establish a lost
        connection; a restarted broker never saw them)."""
        now = time.monotonic()
        for stream, (_, actor_id, incarnation, seq, at) in list(self.asked.items()):
            if now - at > self.TIMEOUT_S:
                self._send(stream, actor_id, incarnation, seq)

    def close(self) -> None:
        self.sock.close(linger=0)
